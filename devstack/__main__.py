"""``python -m devstack`` is ``ferry up``."""

import sys

from devstack.stack import run

sys.exit(run())
