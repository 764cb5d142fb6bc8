"""Build hook: the wheel carries the board profiles as package data of `agent`.

The profiles live in the repository's top-level `board/<name>/board.toml` (the overlay builder, the
recipes and the docs use that folder); the wheel must add exactly one top-level package, `agent`, so
this copies them into `agent/board_profiles/<name>/board.toml` of the build. agent/boards.py looks
there first, then in the checkout's `board/` (editable installs and the source tree). Everything else
about the project is in pyproject.toml.

Must never: put anything but `board/*/board.toml` under agent/board_profiles, or write into the
source tree (only into the build directory).
"""

from __future__ import annotations

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def board_profiles(board_root: str) -> list:
    """(board name, profile path) for every board folder holding a board.toml, sorted."""
    names = sorted(os.listdir(board_root)) if os.path.isdir(board_root) else []
    return [(n, os.path.join(board_root, n, "board.toml")) for n in names
            if os.path.isfile(os.path.join(board_root, n, "board.toml"))]


class BuildWithBoardProfiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's board/ directly
        profiles = board_profiles(os.path.join(HERE, "board"))
        if not profiles:
            raise SystemExit("setup.py: no board/<name>/board.toml found in %s; the wheel needs them" % HERE)
        for name, path in profiles:
            target = os.path.join(self.build_lib, "agent", "board_profiles", name)
            os.makedirs(target, exist_ok=True)
            shutil.copyfile(path, os.path.join(target, "board.toml"))

    def get_outputs(self, include_bytecode: bool = True) -> list:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs += [os.path.join(self.build_lib, "agent", "board_profiles", name, "board.toml")
                        for name, _ in board_profiles(os.path.join(HERE, "board"))]
        return outputs


setup(cmdclass={"build_py": BuildWithBoardProfiles})
