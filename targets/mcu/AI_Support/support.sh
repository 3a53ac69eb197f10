#!/usr/bin/env bash
# Step 1: check that the model suits the board's runtime (TensorFlow Lite Micro runs .tflite
# flatbuffers) and that the job names a board profile (VLAB_MCU_PROFILE, or its budgets).
source "$FUNCTIONS_PATH/exit_functions.sh"

extension="${MODEL_FILENAME##*.}"
if [[ "${extension,,}" != "tflite" ]]; then
    error_log_print "engine $RUNTIME cannot run .$extension models (it runs: tflite; convert ONNX models with convert_to=tflite or tflite_int8)"
    exit 1
fi
if [[ -z "${VLAB_MCU_PROFILE:-}" && ( -z "${VLAB_MCU_FLASH_BYTES:-}" || -z "${VLAB_MCU_SRAM_BYTES:-}" ) ]]; then
    error_log_print "target $TARGET has no board profile (VLAB_MCU_PROFILE, or VLAB_MCU_FLASH_BYTES and VLAB_MCU_SRAM_BYTES, in its engine's env)"
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
info_print "Target $TARGET_UID (${VLAB_MCU_PROFILE:-board}): $BENCHMARK_TYPE with $RUNTIME on $MODEL_FILENAME"
