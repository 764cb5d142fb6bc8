"""The statement file watch (agent/fswatch.py): real files, real inotify, real threads.

Each test waits on a threading.Event set by the watch's callback, never on a sleep.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

from agent import fswatch

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux-only")


class Seen:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    def wait(self, timeout: float = 10.0) -> bool:
        ok = self.event.wait(timeout)
        self.event.clear()
        return ok


def _start(path: str, **kw) -> tuple[fswatch.FileWatch, Seen]:
    seen = Seen()
    w = fswatch.FileWatch(path, seen, **kw).start()
    assert seen.wait(), "the watch reports once when it is set up (a change may have been missed before)"
    return w, seen


@linux_only
@pytest.mark.parametrize("how", ["rename_over", "rewrite", "delete", "chmod"])
def test_inotify_sees_every_way_the_file_changes(tmp_path, how):
    path = tmp_path / "statement.jwt"
    path.write_text("one")
    w, seen = _start(str(path))
    try:
        assert w.mode == "inotify"
        if how == "rename_over":
            (tmp_path / "statement.jwt.tmp").write_text("two")
            os.replace(tmp_path / "statement.jwt.tmp", path)
        elif how == "rewrite":
            path.write_text("two")
        elif how == "delete":
            path.unlink()
        else:
            path.chmod(0o600)
        assert seen.wait()
    finally:
        w.stop()


@linux_only
def test_other_files_in_the_directory_do_not_wake_the_watch(tmp_path):
    path = tmp_path / "statement.jwt"
    path.write_text("one")
    w, seen = _start(str(path))
    try:
        for i in range(20):
            (tmp_path / ("other-%d" % i)).write_text("x")
        path.write_text("two")  # a sentinel: once this is seen, the others were processed before it
        assert seen.wait()
        assert seen.count == 2  # set-up + the statement only
    finally:
        w.stop()


@linux_only
def test_a_symlinked_statement_is_watched_at_its_target_too(tmp_path):
    real_dir = tmp_path / "data"
    real_dir.mkdir()
    target = real_dir / "statement.jwt"
    target.write_text("one")
    link = tmp_path / "statement.jwt"
    link.symlink_to(target)
    w, seen = _start(str(link))
    try:
        target.write_text("two")
        assert seen.wait()
    finally:
        w.stop()


def test_without_inotify_the_watch_polls_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fswatch, "_libc", lambda: None)
    path = tmp_path / "statement.jwt"
    path.write_text("one")
    seen = Seen()
    w = fswatch.FileWatch(str(path), seen, fallback_interval=0.05).start()
    try:
        (tmp_path / "n").write_text("two, longer")
        os.replace(tmp_path / "n", path)
        assert seen.wait()
        assert w.mode == "poll"
    finally:
        w.stop()


@linux_only
def test_a_missing_directory_falls_back_then_watches_once_it_appears(tmp_path):
    d = tmp_path / "later"
    path = d / "statement.jwt"
    seen = Seen()
    w = fswatch.FileWatch(str(path), seen, fallback_interval=0.05).start()
    try:
        d.mkdir()
        path.write_text("one")
        assert seen.wait()
    finally:
        w.stop()


@linux_only
def test_stop_ends_the_thread_and_closes_every_descriptor(tmp_path):
    path = tmp_path / "statement.jwt"
    path.write_text("one")
    before = set(os.listdir("/proc/self/fd"))
    w, _seen = _start(str(path))
    w.stop()
    assert w._thread is not None and not w._thread.is_alive()
    assert set(os.listdir("/proc/self/fd")) <= before


@linux_only
def test_set_path_moves_the_watch(tmp_path):
    a, b = tmp_path / "a", tmp_path / "sub"
    b.mkdir()
    (tmp_path / "a.jwt").write_text("a")
    (b / "b.jwt").write_text("b")
    w, seen = _start(str(a) + ".jwt")
    try:
        w.set_path(str(b / "b.jwt"))
        assert seen.wait()  # the set-up report at the new place
        (b / "b.jwt").write_text("b2")
        assert seen.wait()
    finally:
        w.stop()
