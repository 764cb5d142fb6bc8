"""Where the agent keeps each application's store: the storage and runtime directories' rules.

Job: the one implementation of the storage directory's choice ([storage] dir, else the board
profile's storage_dir, else the default) and of an application's directory below the storage or
runtime directory, for stage 1 (agent/startup.py opens the stores before READY=1), stage 2 and
the commands that open a store (check, reset, keys): they import it, not agent/service.py.

Must never: import more than agent/config.py (stage 1 imports this module before READY=1:
tests/test_startup_imports.py), touch the filesystem (these are names; agent/store.py and
agent/safedir.py create and check the directories).
"""

from __future__ import annotations

import os

from agent.config import DEFAULT_APP, STORAGE_DEFAULT_DIR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.config import Config


def storage_dir(cfg: Config, profile: dict | None = None) -> str:
    """The storage directory: [storage] dir when set, else the board profile's storage_dir, else
    config.STORAGE_DEFAULT_DIR."""
    return cfg.storage.dir or (profile or {}).get("storage_dir") or STORAGE_DEFAULT_DIR


def app_dir(base: str, name: str) -> str:
    """An application's directory below a storage or runtime directory `base`: `base` itself for
    "default" (so a store written before issue 16, by a single-application agent, is used in place
    without registering again), `apps/NAME` below it for every other application."""
    return base if name == DEFAULT_APP else os.path.join(base, "apps", name)


# The names callers use for the two kinds of directory: one rule.
app_storage_dir = app_dir
app_runtime_dir = app_dir
