"""tools/mutate.py: the mutation list cannot rot silently, and the runner tells killed from survived.

The list names exact snippets of agent/ code; a refactor that moves or rewrites one would make that
mutation meaningless. This fast check fails the suite instead (fix the snippet in tools/mutate.py).
The full mutation run (minutes) is `python -m tools.mutate`; docs/TESTING.md has its last result.
"""

from __future__ import annotations

import os

from tools import mutate

ISSUE_21 = (  # the survivors issue 21 named, and its hang
    "store-first-save-overwrites-foreign-slot",
    "urequests-origin-ignores-port",
    "urequests-origin-ignores-scheme",
    "log-password-not-masked",
    "server-sighup-does-not-reread-groups",
    "lifecycle-invalid-client-reregisters-every-time",
)


def test_every_mutation_matches_the_code_exactly_once() -> None:
    assert mutate.problems() == []


def test_the_list_covers_the_core_modules_and_issue_21() -> None:
    names = {m.name for m in mutate.MUTATIONS}
    assert len(mutate.MUTATIONS) >= 30
    assert set(ISSUE_21) <= names
    files = {os.path.basename(m.path)[:-3] for m in mutate.MUTATIONS}
    for area in ("lifecycle", "store", "safedir", "server", "log", "urequests", "dcr", "deviceinfo|netinfo"):
        assert files & set(area.split("|")), area  # the device-info address rules live in netinfo.py
    # Each maps to test files only (never the whole suite) and says what a user would suffer.
    assert all(m.tests and all(t.startswith("tests/test_") for t in m.tests) and m.bug for m in mutate.MUTATIONS)


def test_problems_reports_a_snippet_that_moved(tmp_path) -> None:
    (tmp_path / "m.py").write_text("x = 1\nx = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_m.py").write_text("")
    ms = (mutate.Mutation("twice", "m.py", "x = 1", "x = 2", ("tests/test_m.py",), "bug"),
          mutate.Mutation("gone", "m.py", "y = 1", "y = 2", ("tests/test_m.py",), "bug"),
          mutate.Mutation("gone", "m.py", "x = 1\nx", "x = 1\nx", ("tests/test_nope.py",), ""))
    out = "\n".join(mutate.problems(ms, str(tmp_path)))
    assert "twice: the original snippet occurs 2 times" in out
    assert "gone: the original snippet occurs 0 times" in out
    assert "gone: duplicate name" in out and "replacement equals the original" in out
    assert "test file tests/test_nope.py does not exist" in out and "no bug description" in out


def test_runner_tells_killed_from_survived_and_restores_the_file(tmp_path) -> None:
    """A real pytest run in a scratch tree: a mutation a test notices is killed (with that test's
    name), one it does not notice survived, and the file is put back either way."""
    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a + b\n\n\ndef unused():\n    return 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_calc.py").write_text(
        "import calc\n\n\ndef test_add():\n    assert calc.add(2, 3) == 5\n")
    original = (tmp_path / "calc.py").read_text()
    caught = mutate.Mutation("add-subtracts", "calc.py", "a + b", "a - b", ("tests/test_calc.py",), "bug")
    missed = mutate.Mutation("unused-changes", "calc.py", "return 1", "return 2", ("tests/test_calc.py",), "bug")
    r = mutate.run_one(caught, str(tmp_path))
    assert (r.outcome, r.detail) == ("killed", "tests/test_calc.py::test_add")
    assert (tmp_path / "calc.py").read_text() == original
    r = mutate.run_one(missed, str(tmp_path))
    assert (r.outcome, r.detail) == ("survived", "")
    assert (tmp_path / "calc.py").read_text() == original
