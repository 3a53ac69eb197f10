#!/usr/bin/env bash
# exit_functions.sh - error handling for dAIEdge target scripts.
#
# Source it at the top of each script:  source "$FUNCTIONS_PATH/exit_functions.sh"
# After sourcing, the script stops at the first failing command and everything it writes to
# stderr goes to AI_Manager/out/error.log (the log users see). Helpers:
#   info_print MSG        progress for the user: stdout and AI_Manager/out/user.log
#   error_log_print MSG   a curated message for the user, appended to error.log
#   error_log_disable     stop copying stderr to error.log (when stderr may leak internals)
#   error_log_enable      copy stderr to error.log again

VLAB_OUT_DIR="${VLAB_OUT_DIR:-$PWD/AI_Manager/out}"
# Shell built-ins only: every step sources this file, and each external command costs a fork.
[[ -d "$VLAB_OUT_DIR" ]] || mkdir -p "$VLAB_OUT_DIR"
: >>"$VLAB_OUT_DIR/user.log"
: >>"$VLAB_OUT_DIR/error.log"

set -eE
exec 3>&2
exec 2>>"$VLAB_OUT_DIR/error.log"

info_print() {
    echo "$*"
    echo "$*" >>"$VLAB_OUT_DIR/user.log"
}

error_log_print() {
    echo "$*" >>"$VLAB_OUT_DIR/error.log"
}

error_log_disable() {
    exec 2>&3
}

error_log_enable() {
    exec 2>>"$VLAB_OUT_DIR/error.log"
}
