#!/usr/bin/env bash
# Step 4: run the measurement harness and write report.json (and raw_output.bin for TYPE2);
# for on-device training (TYPE3), train (one line per epoch in user.log), then write the
# trained model (model.onnx) and report_odt.json.
source "$FUNCTIONS_PATH/exit_functions.sh"
python="${VLAB_PYTHON:-python3}"
if [[ "$BENCHMARK_TYPE" == TYPE3 ]]; then
    source AI_Build/training_env.sh
    run_trainer train AI_Support/training AI_Build/artifacts AI_Manager/work >>AI_Manager/out/user.log
    "$python" -m vlab_backend.training finish AI_Support/training AI_Manager/work AI_Manager/out >>AI_Manager/out/user.log
    info_print "Training finished"
    exit 0
fi
if [[ -n "${VLAB_HARNESS_SOCKET:-}" && -n "${VLAB_WARM_CLIENT:-}" ]]; then
    # A warm worker of this instance forks the harness with the engines already imported.
    # The client needs only the standard library: -I -S skips site-packages start-up.
    harness=("$python" -I -S "$VLAB_WARM_CLIENT" "$VLAB_HARNESS_SOCKET" vlab_backend.harness)
else
    harness=("$python" -m vlab_backend.harness)
fi
"${harness[@]}" --model="$MODEL_FILENAME" --out=AI_Manager/out >>AI_Manager/out/user.log
info_print "Benchmark finished"
