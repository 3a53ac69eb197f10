#!/usr/bin/env bash
# Step 1: check that the model suits the requested engine and benchmark type.
source "$FUNCTIONS_PATH/exit_functions.sh"

case "$RUNTIME" in
    onnxruntime) formats="onnx" ;;
    openvino) formats="onnx tflite zip" ;;
    tflite) formats="tflite" ;;
    *) error_log_print "engine $RUNTIME is not offered by target $TARGET"; exit 1 ;;
esac
extension="${MODEL_FILENAME##*.}"
if [[ " $formats " != *" ${extension,,} "* ]]; then
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
    *) error_log_print "benchmark type $BENCHMARK_TYPE is not supported by $TARGET"; exit 1 ;;
esac
info_print "Target $TARGET_UID (cores ${VLAB_CPUSET:-all}): $BENCHMARK_TYPE with $RUNTIME on $MODEL_FILENAME"
