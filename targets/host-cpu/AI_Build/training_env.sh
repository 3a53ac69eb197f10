#!/usr/bin/env bash
# The training environment of TYPE3 (on-device training) jobs, sourced by build.sh and
# manager.sh: onnxruntime-training (CPU build) and onnx in a virtual environment of their own,
# never in the lab's install. It is made once per host, under a lock, in the cache directory
# (outside the lab's data dir, which jobs do not see):
#   ${VLAB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vlab}/envs/ort-training-1.19.2
# and reused by every later job (a stamp file records what it holds). `make setup` may make it
# ahead of the first job: bash targets/host-cpu/AI_Build/training_env.sh
TRAINING_ENV_NAME="ort-training-1.19.2"
TRAINING_REQUIREMENTS=("onnxruntime-training-cpu==1.19.2" "onnx==1.17.0")
training_envs="${VLAB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vlab}/envs"
training_env="$training_envs/$TRAINING_ENV_NAME"
training_python="$training_env/bin/python"
training_stamp="$training_env/.vlab-requirements"

training_env_ready() {
    [[ -x "$training_python" && -f "$training_stamp" \
        && "$(<"$training_stamp")" == "${TRAINING_REQUIREMENTS[*]}" ]]
}

# Make the environment unless it is there; one job makes it while the others wait.
ensure_training_env() {
    training_env_ready && return 0
    mkdir -p "$training_envs"
    local lock="$training_envs/$TRAINING_ENV_NAME.lock" log="$training_envs/$TRAINING_ENV_NAME.log"
    exec 8>>"$lock"
    if ! flock -w "${VLAB_TRAINING_ENV_WAIT_S:-1200}" 8; then
        error_log_print "the training environment $training_env is being made by another job, which takes too long"
        return 1
    fi
    if ! training_env_ready; then
        info_print "Making the training environment (once per host): pip install ${TRAINING_REQUIREMENTS[*]} in $training_env"
        local started=$SECONDS
        rm -rf "$training_env"
        if ! { "${VLAB_PYTHON:-python3}" -m venv "$training_env" \
                && "$training_python" -m pip install --disable-pip-version-check \
                    "${TRAINING_REQUIREMENTS[@]}"; } >"$log" 2>&1; then
            error_log_print "could not make the training environment $training_env ($log): $(tail -n 2 "$log" | tr '\n' ' ')"
            rm -rf "$training_env"
            exec 8>&-
            return 1
        fi
        echo "${TRAINING_REQUIREMENTS[*]}" >"$training_stamp"
        info_print "Training environment ready in $((SECONDS - started)) s ($(du -sh "$training_env" 2>/dev/null | cut -f1))"
    fi
    exec 8>&-
}

# The trainer (copied next to the prepared model by the support step) in that environment. A
# process killed by a signal (a crash in the engine's native code) is said in words.
run_trainer() {
    local code=0
    "$training_python" -I AI_Support/training/ort_train.py "$@" || code=$?
    if ((code > 128)); then
        error_log_print "the training engine crashed (signal $((code - 128)), $(kill -l $((code - 128)) 2>/dev/null || echo unknown)) on this model: an operator of it has no working gradient in ${TRAINING_ENV_NAME}"
    fi
    return "$code"
}

# Run directly (`make setup`): make the environment now.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -e
    info_print() { echo "$*"; }
    error_log_print() { echo "$*" >&2; }
    ensure_training_env
    echo "$training_python"
fi
