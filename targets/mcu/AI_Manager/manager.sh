#!/usr/bin/env bash
# Step 4: power the board on, drive it over its link (model, inputs; outputs and the board's
# own timing back), and write report.json (and raw_output.bin for TYPE2). The host measures
# each inference's round trip; the board times invoke() itself.
source "$FUNCTIONS_PATH/exit_functions.sh"
VLAB_TFLM_PYTHON="$(cat AI_Build/board-python)" \
    "${VLAB_PYTHON:-python3}" -m vlab_backend.mcu run --model="$MODEL_FILENAME" \
    --firmware=AI_Project/board.py --out=AI_Manager/out >>AI_Manager/out/user.log
info_print "Benchmark finished"
