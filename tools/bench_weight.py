"""Where the agent's start-up time and idle memory come from, module by module (issue 20).

    python -m tools.bench_weight [--runs 7] [--out docs/bench/weight.txt] [--json FILE]

1. The modules `pass-agent run` imports until READY=1: the agent as installed on a box (the overlay's
   launcher and /usr/lib/pass-agent, tools/bench_coldstart.install_box) is started with a stored token, its validated-
   configuration cache in STATE_DIRECTORY (as the unit's StateDirectory= gives it; the first start
   fills it) and `python3 -I -X importtime`, under an audit hook that records sys.modules when the
   process sends READY=1: the modules of the first stage (agent/startup.py), listed in the order
   importtime saw their imports finish (dependencies first). The hook, not importtime, says which:
   importtime also prints what the helper process (forked at start, agent/helperproc.py) and the
   second stage (after READY=1) import, on the same stderr.
2. Own cost of each: a fresh `python3 -I` (/usr/lib/pass-agent first on sys.path, as on the box) imports
   `os, socket, time` (the benchmark's bare interpreter), then every module of that list in that
   order, and records per module the time of its import and the growth of the process's PSS and
   USS (/proc/self/smaps_rollup). Dependencies are already loaded when a module's turn comes, so
   each figure is the module's own (module body, its shared library), like importtime's "self",
   plus its memory; a package comes before its submodules and owns what its __init__ imports.
   Medians of --runs processes. Totals per group (agent, cryptography, the rest).
3. Alone: a fresh interpreter imports one module (with everything it pulls in) after the bare
   interpreter's imports: what each candidate would cost if nothing else loaded it.

Figures are ms and kB; PSS/USS grow by whole pages, so a figure under 4 kB is noise.
Must never: leave processes or files behind; change anything outside its temp dir and --out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BASE = "import os, socket, time"

# Candidates measured alone: what the daemon path loads or could load instead.
ALONE = (
    "json", "threading", "logging", "argparse", "typing", "dataclasses", "inspect", "tomllib", "ctypes",
    "ctypes.util", "hashlib", "_sha256", "hmac", "ssl", "zipfile",
    "cryptography.hazmat.bindings._rust",
    "cryptography.hazmat.primitives.ciphers.aead",
    "cryptography.hazmat.primitives.kdf.hkdf",
    "agent.sealing", "agent.config", "agent.log", "agent.store", "agent.service", "agent.server", "agent.daemon",
    "agent.cli", "agent.startup", "agent.configcache",
)

PROBE = r'''
import sys, time
%(base)s
def mem():
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Pss", "Private_Clean", "Private_Dirty"):
                out[k] = int(v.split()[0])
    return out["Pss"], out["Private_Clean"] + out["Private_Dirty"]
sys.path[0:0] = %(path)r
names = []
for name in %(names)r:  # a package before its submodules: its __init__ imports them, so it owns their cost
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) not in names:
            names.append(".".join(parts[:i]))
rows = []
for name in names:
    if name in sys.modules:
        continue
    p0, u0 = mem()
    t0 = time.perf_counter()
    try:
        __import__(name)
    except Exception as e:
        rows.append([name, None, None, None, type(e).__name__])
        continue
    t1 = time.perf_counter()
    p1, u1 = mem()
    rows.append([name, (t1 - t0) * 1000, p1 - p0, u1 - u0, None])
import json  # noqa: E402  (after measuring: the daemon imports json itself)
print(json.dumps(rows))
'''


# The launcher run as `python3 -I <root>/usr/bin/pass-agent run --config FILE` runs it (as CPython's
# main runs a script file: compiled, then executed as __main__ with __file__ set), under an audit hook
# that writes sys.modules at the process's first datagram to NOTIFY_SOCKET: READY=1.
AT_READY = r'''
import os, sys
out, notify, done = %(out)r, os.environ["NOTIFY_SOCKET"], []
def hook(event, args):
    if event == "socket.sendto" and not done and args[1] == notify:
        done.append(1)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, "\n".join(sys.modules).encode())
        os.close(fd)
sys.addaudithook(hook)
sys.argv = [%(box)r, "run", "--config", %(config)r]
with open(%(box)r, "rb") as f:
    code = compile(f.read(), %(box)r, "exec")
exec(code, {"__name__": "__main__", "__file__": %(box)r, "__builtins__": __builtins__})
'''


def _probe(names: list, path: list) -> list:
    code = PROBE % {"base": BASE, "path": path, "names": names}
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    if r.returncode != 0:
        raise RuntimeError("probe failed: %s" % r.stderr[-2000:])
    return json.loads(r.stdout)


def daemon_imports(tmp: str) -> tuple[list, str]:
    """(modules `pass-agent run` imported until READY=1 in the order their imports finished, the
    installed modules' directory), from the installed agent started with a stored token and -X importtime."""
    from agent.client import Client
    from tools.bench_coldstart import _spawn_until_ready, agent_against_emulator, install_box

    tmp2, emu, cfg, cfg_path = agent_against_emulator("bench-weight-")
    try:
        box = install_box(tmp)
        state = os.path.join(tmp, "state")  # the unit's StateDirectory=: the configuration cache
        os.mkdir(state, 0o700)
        env_extra = {"STATE_DIRECTORY": state}
        for _ in range(2):  # registers and stores a token; then a start that fills the cache after READY=1
            _, p = _spawn_until_ready([sys.executable, "-I", box, "run", "--config", cfg_path], tmp, env_extra)
            with Client(cfg.socket.path, timeout=20) as c:
                c.token(wait=15)
            p.terminate()
            p.wait()
        emu.stop()
        err, at_ready = os.path.join(tmp, "importtime.txt"), os.path.join(tmp, "at-ready.txt")
        with open(err, "w") as f:
            path = os.path.join(tmp, "notify.sock")
            import socket

            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind(path)
            s.settimeout(30)
            env = dict(os.environ, NOTIFY_SOCKET=path, **env_extra)
            code = AT_READY % {"out": at_ready, "box": box, "config": cfg_path}
            p = subprocess.Popen([sys.executable, "-I", "-X", "importtime", "-c", code],
                                 stderr=f, stdout=subprocess.DEVNULL, env=env)
            while b"READY=1" not in s.recv(4096):
                pass
            s.close()
            p.send_signal(signal.SIGTERM)
            p.wait(20)
        with open(at_ready) as f:
            loaded = set(f.read().split())
        names: list = []
        with open(err) as f:
            for line in f:
                if line.startswith("import time:") and "[us]" not in line:
                    name = line.rsplit("|", 1)[1].strip()
                    if name in loaded and name not in names:
                        names.append(name)
        return names, os.path.join(os.path.dirname(os.path.dirname(box)), "lib", "pass-agent")
    finally:
        emu.stop()
        import shutil

        shutil.rmtree(tmp2, ignore_errors=True)


def _group(name: str) -> str:
    if name == "agent" or name.startswith("agent."):
        return "agent"
    if name.startswith(("cryptography", "_cffi_backend", "_openssl", "_rust")):
        return "cryptography"
    return "standard library"


def measure(runs: int, tmp: str) -> dict:
    names, box = daemon_imports(tmp)
    per: dict = {}
    for _ in range(runs):
        for name, ms, pss, uss, err in _probe(names, [box]):
            per.setdefault(name, []).append((ms, pss, uss, err))
    own = []
    for name in names:
        vals = per.get(name)
        if not vals or vals[0][0] is None:
            continue
        own.append({"module": name, "group": _group(name),
                    "ms": round(statistics.median(v[0] for v in vals), 3),
                    "pss_kb": statistics.median(v[1] for v in vals), "uss_kb": statistics.median(v[2] for v in vals)})
    groups: dict = {}
    for r in own:
        g = groups.setdefault(r["group"], {"modules": 0, "ms": 0.0, "pss_kb": 0, "uss_kb": 0})
        g["modules"] += 1
        g["ms"] = round(g["ms"] + r["ms"], 3)
        g["pss_kb"] += r["pss_kb"]
        g["uss_kb"] += r["uss_kb"]
    alone: dict = {}
    for _ in range(runs):
        for name in ALONE:
            rows = _probe([name], [box])  # its parent packages first, then itself: the sum is its price
            if not rows or rows[-1][1] is None:
                row = [name, None, None, None, rows[-1][4] if rows else "already loaded"]
            else:
                row = [name] + [sum(r[i] for r in rows if r[i] is not None) for i in (1, 2, 3)] + [None]
            alone.setdefault(name, []).append(row)
    alone_rows = []
    for name in ALONE:
        vals = [v for v in alone[name] if v[1] is not None]
        if not vals:
            alone_rows.append({"module": name, "error": alone[name][0][4]})
            continue
        alone_rows.append({"module": name, "ms": round(statistics.median(v[1] for v in vals), 2),
                           "pss_kb": statistics.median(v[2] for v in vals), "uss_kb": statistics.median(v[3] for v in vals)})
    return {"python": sys.version.split()[0], "runs": runs, "modules_at_ready": len(names), "own": own,
            "groups": groups, "alone": alone_rows}


def report(res: dict, top: int = 40) -> str:
    lines = ["Where `pass-agent run` (as installed: the overlay's launcher and modules, python3 -I) spends its start-up and memory",
             "Python %s; medians of %d fresh interpreters; baseline: an interpreter that imported %s (the bare"
             " process of tools/bench_coldstart.py)." % (res["python"], res["runs"], BASE.split(" ", 1)[1]),
             "%d modules are imported until READY=1 (stage 1, agent/startup.py, from a stored token and the"
             " validated-configuration cache; stage 2 and the helper process import the rest)." % res["modules_at_ready"],
             "",
             "Own cost per group (each module imported after its dependencies, in the daemon's order):",
             "%-20s %8s %10s %10s %10s" % ("group", "modules", "ms", "+PSS kB", "+USS kB")]
    for g, v in sorted(res["groups"].items(), key=lambda kv: -kv[1]["ms"]):
        lines.append("%-20s %8d %10.1f %10d %10d" % (g, v["modules"], v["ms"], v["pss_kb"], v["uss_kb"]))
    tot = {k: sum(v[k] for v in res["groups"].values()) for k in ("modules", "ms", "pss_kb", "uss_kb")}
    lines.append("%-20s %8d %10.1f %10d %10d" % ("total", tot["modules"], tot["ms"], tot["pss_kb"], tot["uss_kb"]))
    lines += ["", "The %d heaviest modules by own import time:" % top,
              "%-52s %-16s %8s %9s %9s" % ("module", "group", "ms", "+PSS kB", "+USS kB")]
    for r in sorted(res["own"], key=lambda r: -r["ms"])[:top]:
        lines.append("%-52s %-16s %8.2f %9d %9d" % (r["module"], r["group"], r["ms"], r["pss_kb"], r["uss_kb"]))
    lines += ["", "The modules adding 64 kB of PSS or more:",
              "%-52s %-16s %8s %9s %9s" % ("module", "group", "ms", "+PSS kB", "+USS kB")]
    for r in sorted(res["own"], key=lambda r: -r["pss_kb"]):
        if r["pss_kb"] < 64:
            break
        lines.append("%-52s %-16s %8.2f %9d %9d" % (r["module"], r["group"], r["ms"], r["pss_kb"], r["uss_kb"]))
    lines += ["", "Alone (one fresh interpreter each, with everything the module pulls in):",
              "%-52s %8s %9s %9s" % ("module", "ms", "+PSS kB", "+USS kB")]
    for r in res["alone"]:
        if "error" in r:
            lines.append("%-52s %s" % (r["module"], r["error"]))
        else:
            lines.append("%-52s %8.2f %9d %9d" % (r["module"], r["ms"], r["pss_kb"], r["uss_kb"]))
    return "\n".join(lines)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", metavar="FILE", help="also write the report to FILE (docs/bench/weight.txt)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench-weight-")
    try:
        res = measure(args.runs, tmp)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    text = report(res)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
