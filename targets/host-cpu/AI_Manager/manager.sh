#!/usr/bin/env bash
# Step 4: run the measurement harness and write report.json (and raw_output.bin for TYPE2).
source "$FUNCTIONS_PATH/exit_functions.sh"
"${VLAB_PYTHON:-python3}" -m vlab_backend.harness \
    --model "$MODEL_FILENAME" --out AI_Manager/out >>AI_Manager/out/user.log
info_print "Benchmark finished"
