#!/usr/bin/env bash
# Step 2: the board's runtime. A real board's repository cross-compiles its firmware here
# (TFLite Micro and the model as a C array); the simulated board runs TFLite Micro's own
# interpreter, installed once per machine in a cached environment
# (${VLAB_CACHE_DIR:-$XDG_CACHE_HOME/vlab}/envs/tflite-micro-<version>, created under a file
# lock) whose interpreter the manager step starts as the board.
source "$FUNCTIONS_PATH/exit_functions.sh"
python="${VLAB_PYTHON:-python3}"
board_python="$("$python" -m vlab_backend.toolenv tflite-micro)"
printf '%s\n' "$board_python" > AI_Build/board-python
info_print "Board runtime: $board_python"
