#!/usr/bin/env bash
# Step 4: run the measurement harness and write report.json (and raw_output.bin for TYPE2).
source "$FUNCTIONS_PATH/exit_functions.sh"
python="${VLAB_PYTHON:-python3}"
if [[ -n "${VLAB_HARNESS_SOCKET:-}" && -n "${VLAB_WARM_CLIENT:-}" ]]; then
    # A warm worker of this instance forks the harness with the engines already imported.
    # The client needs only the standard library: -I -S skips site-packages start-up.
    harness=("$python" -I -S "$VLAB_WARM_CLIENT" "$VLAB_HARNESS_SOCKET" vlab_backend.harness)
else
    harness=("$python" -m vlab_backend.harness)
fi
"${harness[@]}" --model="$MODEL_FILENAME" --out=AI_Manager/out >>AI_Manager/out/user.log
info_print "Benchmark finished"
