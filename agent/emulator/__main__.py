"""`python -m agent.emulator`: run the Adobe Pass emulator (see agent/emulator/cli.py)."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
