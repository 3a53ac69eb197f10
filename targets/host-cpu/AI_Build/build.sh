#!/usr/bin/env bash
# Step 2: nothing to compile on a host CPU for inference; the engines are Python packages
# (support.sh has checked that the engine is one this target offers). For on-device training
# (TYPE3): the training environment (made once per host, see training_env.sh), then the
# training graphs of the prepared model (AI_Build/artifacts).
source "$FUNCTIONS_PATH/exit_functions.sh"
if [[ "$BENCHMARK_TYPE" == TYPE3 ]]; then
    source AI_Build/training_env.sh
    ensure_training_env
    run_trainer artifacts AI_Support/training AI_Build/artifacts
    info_print "Training graphs built with $TRAINING_ENV_NAME"
else
    info_print "Nothing to build for $TARGET with $RUNTIME"
fi
