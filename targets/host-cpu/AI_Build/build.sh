#!/usr/bin/env bash
# Step 2: nothing to compile on a host CPU; the engines are Python packages (support.sh has
# checked that the engine is one this target offers).
source "$FUNCTIONS_PATH/exit_functions.sh"
info_print "Nothing to build for $TARGET with $RUNTIME"
