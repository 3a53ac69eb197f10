#!/usr/bin/env bash
# Step 2: nothing to compile on a host CPU; the engines are Python packages.
source "$FUNCTIONS_PATH/exit_functions.sh"
"${VLAB_PYTHON:-python3}" -c "import vlab_backend.engines as e; e.get_spec('$RUNTIME')"
