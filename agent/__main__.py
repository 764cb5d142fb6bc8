"""`python -m agent` is `pass-agent`."""

import sys

from agent.cli import main

sys.exit(main())
