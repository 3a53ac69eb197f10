#!/usr/bin/env bash
# Step 1: check that the model suits the requested engine and benchmark type (for TYPE3,
# on-device training, prepare the model for the training engine).
# The lab gives the engine's model formats with the job (VLAB_ENGINE_FORMATS="onnx tflite",
# from its engine registry), so that any registered engine runs on this target and this step,
# on the path of every job, starts no interpreter. Where the job does not carry them, the
# engine registry of this host's VLab Python (VLAB_PYTHON) is asked instead.
source "$FUNCTIONS_PATH/exit_functions.sh"

formats="${VLAB_ENGINE_FORMATS:-}"
if [[ -z "${formats//[ ,]/}" ]]; then
    if [[ -z "${VLAB_PYTHON:-}" ]]; then
        error_log_print "engine $RUNTIME is not offered by target $TARGET (no VLAB_ENGINE_FORMATS: the lab gives each offered engine's model formats)"
        exit 1
    fi
    if ! formats="$("$VLAB_PYTHON" -m vlab_backend.engines "$RUNTIME" 2>/dev/null)"; then
        error_log_print "engine $RUNTIME is not offered by target $TARGET: ${formats:-$VLAB_PYTHON has no VLab engine registry}"
        exit 1
    fi
fi
formats="${formats//,/ }"
extension="${MODEL_FILENAME##*.}"
if [[ " ${formats,,} " != *" ${extension,,} "* ]]; then
    error_log_print "engine $RUNTIME cannot run .$extension models (it runs: $formats)"
    exit 1
fi
case "$BENCHMARK_TYPE" in
    TYPE1) ;;
    TYPE2)
        if [[ -z "${DATASET_FILENAME:-}" || ! -f "$DATASET_FILENAME" ]]; then
            error_log_print "TYPE2 needs a dataset file"
            exit 1
        fi ;;
    TYPE3)
        # On-device training: onnxruntime-training, in its own environment (AI_Build).
        if [[ "$RUNTIME" != onnxruntime ]]; then
            error_log_print "on-device training (TYPE3) on $TARGET runs with onnxruntime, not $RUNTIME"
            exit 1
        fi
        if [[ -z "${ODT_CONFIG_FILENAME:-}" || ! -f "$ODT_CONFIG_FILENAME" ]]; then
            error_log_print "TYPE3 needs its on-device training config (ODT_CONFIG_FILENAME)"
            exit 1
        fi
        # The model made trainable in the lab's Python, whose onnx reads every model a user
        # can upload: down-converted for the engine, a trailing Softmax cut for cross-entropy.
        plan="$("${VLAB_PYTHON:-python3}" -m vlab_backend.training prepare "$MODEL_FILENAME" "$ODT_CONFIG_FILENAME" AI_Support/training)" ;;
    *) error_log_print "benchmark type $BENCHMARK_TYPE is not supported by $TARGET"; exit 1 ;;
esac
info_print "Target $TARGET_UID (cores ${VLAB_CPUSET:-all}): $BENCHMARK_TYPE with $RUNTIME on $MODEL_FILENAME"
if [[ -n "${plan:-}" ]]; then
    info_print "$plan"
fi
