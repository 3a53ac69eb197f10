#!/usr/bin/env bash
# Step 3: the flash budget. A real board's repository flashes the firmware and the model here
# (st-flash, openocd, pyocd); the simulated board receives the model over its link when the
# manager step powers it on, so this step checks that the model fits the board's flash.
source "$FUNCTIONS_PATH/exit_functions.sh"
"${VLAB_PYTHON:-python3}" -m vlab_backend.mcu deploy --model="$MODEL_FILENAME" >>AI_Manager/out/user.log
