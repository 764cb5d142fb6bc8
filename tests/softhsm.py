"""A SoftHSM2 token directory for the pkcs11 key provider's tests (Debian's softhsm2 package).

SoftHSM reads SOFTHSM2_CONF once, when the module is initialised, and python-pkcs11 initialises a
module once per process: so one token directory per test process, made before the first provider
opens the module, with every token the tests use created up front (`softhsm2-util --init-token
--free --label ... --pin ... --so-pin ...`). Tests stay independent through their own store
directories (each store has its own counter object in the token). Child processes (the daemon)
inherit SOFTHSM2_CONF.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

MODULE_CANDIDATES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                     "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so")
TOKENS = {"pa-main": "1234", "pa-other": "4321"}  # label -> user PIN
SO_PIN = "5678"
_state: dict = {}


def module() -> str | None:
    return next((m for m in MODULE_CANDIDATES if os.path.isfile(m)), None)


def why_not() -> str | None:
    if shutil.which("softhsm2-util") is None or module() is None:
        return "SoftHSM2 is not installed (apt-get install softhsm2; .ci/run does)"
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return "python-pkcs11 is not installed (pip install -e '.[test]')"
    return None


def tokens() -> dict:
    """Create the process's token directory and tokens once; skip when SoftHSM2 is missing."""
    reason = why_not()
    if reason:
        pytest.skip(reason)
    if not _state:
        d = tempfile.mkdtemp(prefix="pass-agent-softhsm-")
        os.makedirs(os.path.join(d, "tokens"))
        conf = os.path.join(d, "softhsm2.conf")
        with open(conf, "w") as f:
            f.write("directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n" % d)
        os.environ["SOFTHSM2_CONF"] = conf
        for label, pin in TOKENS.items():
            subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin,
                            "--so-pin", SO_PIN], check=True, capture_output=True)
        _state.update(dir=d, conf=conf, module=module())
    return _state


def pin_file(directory: str, pin: str, name: str = "token.pin", mode: int = 0o600) -> str:
    path = os.path.join(str(directory), name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(pin + "\n")
    os.chmod(path, mode)
    return path
