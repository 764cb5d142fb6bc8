"""`python -m tools.emulator`: run the Adobe Pass emulator (see tools/emulator/cli.py)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
