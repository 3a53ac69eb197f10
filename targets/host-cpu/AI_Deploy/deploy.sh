#!/usr/bin/env bash
# Step 3: the target is this host, so the model is already deployed; check it is readable.
source "$FUNCTIONS_PATH/exit_functions.sh"
if [[ ! -r "$MODEL_FILENAME" ]]; then
    error_log_print "model $MODEL_FILENAME was not delivered to the target"
    exit 1
fi
