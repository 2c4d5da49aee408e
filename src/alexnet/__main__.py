"""``python -m alexnet``: the ``alexnet`` command, for an environment whose scripts are not on ``PATH``."""

import sys

from alexnet.cli import main

sys.exit(main())
