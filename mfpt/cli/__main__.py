"""`python -m mfpt.cli`: the `mfpt` command (mfpt sweep starts each run this way, in a fresh process)."""

import sys

from mfpt.cli import main

sys.exit(main())
