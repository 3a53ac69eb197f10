import sys

from vlab_backend.pipeline.job import main

sys.exit(main())
