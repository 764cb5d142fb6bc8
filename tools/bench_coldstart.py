"""Cold-start and idle-memory benchmark of `pass-agent run`, against a bare interpreter in the same run.

One baseline for every figure (stated in the output): BARE, a `python3 -I -c` that sends READY=1 to
a NOTIFY_SOCKET and sleeps, run by the same interpreter with the same flags as the agent.
Measures (median of --runs, the processes interleaved so that machine noise hits all alike):
- box: the agent as installed on a box: the overlay of tools/build_overlay.py (the launcher script
  /usr/bin/pass-agent, the modules in /usr/lib/pass-agent with bytecode for this Python, board
  profiles beside them) unpacked into a temp root, run as `python3 -I <root>/usr/bin/pass-agent run` with a stored valid token and Adobe unreachable, spawn -> READY=1;
- editable: the same from this source tree (`python3 -I -m agent run`, the editable install), for
  comparison with earlier runs;
- idle memory: RSS, PSS and USS of each idle agent holding a token vs the idle bare interpreter,
  medians over the runs (PSS shares pages with whatever else runs, so one sample moves by ~1 MB),
  measured once the agent's helper process has exited (PASS_AGENT_HELPER_IDLE=1 s: a live forked
  helper shares the agent's pages and would lower its PSS);
- with SoftHSM2 installed (or --no-pkcs11 to skip): the editable agent with `[storage] key_provider =
  "pkcs11"` (its store re-sealed by a SoftHSM2 token), spawn -> READY=1 next to the device provider in
  the same run, and `token.get` round trips of both (the token never touches the key provider).
- steady state, as installed: the box's agent from an empty store against the emulator registers and
  fetches a token (Adobe's requests and the store's AES-GCM through its helper process, which then
  exits: PASS_AGENT_HELPER_IDLE=1 s instead of 30 s, the same end state sooner), settles, then its
  idle PSS (median of --steady samples) and whether its memory maps hold ssl or cryptography. This is
  every box's real state once it has talked to Adobe; the other idle figures never did.
Targets: issue 10: READY within 150 ms, idle PSS within 10 MB of the bare interpreter (editable);
issue 20 (as installed): READY <= 2.0x the bare interpreter, idle PSS <= bare + 6 MB, also after a fetch.

Usage: python -m tools.bench_coldstart [--runs N] [--steady N] [--json FILE] [--no-pkcs11] [--box FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _mem(pid: int) -> dict:
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "Pss":
                    out["pss_kb"] = int(value.split()[0])
                elif key in ("Private_Clean", "Private_Dirty"):  # USS: what this process alone holds
                    out["uss_kb"] = out.get("uss_kb", 0) + int(value.split()[0])
    except OSError:
        out["pss_kb"] = None
    return out


def _spawn_until_ready(cmd: list, tmp: str, env_extra: dict | None = None) -> tuple[float, subprocess.Popen]:
    path = os.path.join(tmp, "notify-%d.sock" % time.monotonic_ns())
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=path, **(env_extra or {}))
    env.pop("WATCHDOG_USEC", None)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    while True:
        msg = s.recv(4096).decode()
        if "READY=1" in msg:
            break
    dt = time.perf_counter() - t0
    s.close()
    os.unlink(path)
    return dt, p


def agent_against_emulator(prefix: str) -> tuple:
    """A temp dir, a running HTTPS emulator with a statement, and an agent config for it (warning logs)."""
    from agent import config as configmod
    from agent.emulator import Emulator

    tmp = tempfile.mkdtemp(prefix=prefix)
    emu = Emulator(state_dir=os.path.join(tmp, "emu"), tls=True).start()
    statement = os.path.join(tmp, "statement.jwt")
    emu.write_statement(statement)
    cfg = configmod.local(tmp, emu.base_url, statement, emu.ca_file, log={"level": "warning"})
    return tmp, emu, cfg, configmod.write(cfg, os.path.join(tmp, "agent.toml"))


BARE = ("import os, socket, time\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
        "time.sleep(60)\n")


def install_box(tmp: str, board: str = "generic-linux") -> str:
    """The agent as a box has it: the overlay tools/build_overlay.py makes for `board` (its launcher,
    and its modules with bytecode for this Python), unpacked under tmp/box; returns the path of its
    usr/bin/pass-agent."""
    import tarfile

    from tools import build_overlay

    out, root = os.path.join(tmp, "overlay"), os.path.join(tmp, "box")
    tarball = build_overlay.build([board], out, epoch=0, compile_pyc=True, echo=lambda *a: None)[board]
    with tarfile.open(tarball) as tar:
        tar.extractall(root)
    return os.path.join(root, "usr", "bin", "pass-agent")


def _softhsm(tmp: str) -> dict | None:
    """A SoftHSM2 token for the pkcs11 figures (its own token dir), or None when SoftHSM2 is missing."""
    import shutil

    module = next((m for m in ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                               "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so") if os.path.isfile(m)), None)
    if module is None or shutil.which("softhsm2-util") is None:
        return None
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return None
    d = os.path.join(tmp, "softhsm")
    os.makedirs(os.path.join(d, "tokens"))
    conf = os.path.join(d, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write("directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n" % d)
    env = dict(os.environ, SOFTHSM2_CONF=conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin",
                    "5678"], env=env, check=True, capture_output=True)
    pin = os.path.join(d, "pin")
    fd = os.open(pin, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"1234\n")
    os.close(fd)
    return {"module": module, "conf": conf, "pin": pin}


def _token_gets(paths: dict, rounds: int = 1000, n: int = 1, settle: float = 1.0) -> dict:
    """Median token.get round trip (µs) per agent, batches interleaved so that both see the same
    machine (on shared cores the figure drifts by a factor of 4 within seconds). Each agent is first
    asked for its health and left `settle` seconds: READY=1 comes from stage 1, and stage 2 is still
    importing and building for tens of ms after it (a measurement started at once timed that)."""
    from agent.client import Client

    for p in paths.values():
        with Client(p, timeout=20) as c:
            c.health()
    time.sleep(settle)
    times: dict = {k: [] for k in paths}
    clients = {k: Client(p, timeout=20) for k, p in paths.items()}
    try:
        for _ in range(rounds):
            for k, c in clients.items():
                for _ in range(n):
                    t0 = time.perf_counter()
                    c.token()
                    times[k].append(time.perf_counter() - t0)
    finally:
        for c in clients.values():
            c.close()
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


HEAVY_MAPS = ("_ssl", "libssl", "cryptography")


def _heavy_maps(pid: int) -> list:
    """ssl and cryptography files mapped into process pid (what the helper process keeps out)."""
    with open("/proc/%d/maps" % pid) as f:
        return sorted({ln.split()[-1].rsplit("/", 1)[-1] for ln in f
                       if len(ln.split()) >= 6 and any(h in ln.split()[-1] for h in HEAVY_MAPS)})


def _children(pid: int) -> list:
    out = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out += f.read().split()
        except OSError:
            pass
    return out


def _helper_gone(pid: int, wait: float = 15.0) -> None:
    """Wait for the agent's helper process to exit (idle): measured alive, it would share the agent's
    pages and lower the agent's PSS by their half."""
    deadline = time.monotonic() + wait
    while _children(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def idle_after_fetch(cmd: list, tmp: str, samples: int, settle: float = 1.0) -> tuple:
    """Memory of the agent run by `cmd` (+ run --config) once it has registered, fetched a token from
    a fresh emulator and its helper process has exited: ([{rss_kb, pss_kb, uss_kb, heavy}] per sample,
    [bare interpreter's memory] measured beside each sample: PSS depends on what else runs, so the
    steady figure has its own samples of the same baseline process)."""
    from agent import config as configmod
    from agent.client import Client
    from agent.emulator import Emulator

    emu = Emulator(state_dir=os.path.join(tmp, "emu-steady"), tls=True, throttle=False).start()
    out, bare = [], []
    try:
        statement = os.path.join(tmp, "statement-steady.jwt")
        emu.write_statement(statement)
        for i in range(samples):
            d = os.path.join(tmp, "steady-%d" % i)
            os.makedirs(d)
            cfg = configmod.local(d, emu.base_url, statement, emu.ca_file, log={"level": "warning"})
            path = configmod.write(cfg, os.path.join(d, "agent.toml"))
            _, p = _spawn_until_ready(cmd + ["run", "--config", path], tmp, {"PASS_AGENT_HELPER_IDLE": "1"})
            try:
                with Client(cfg.socket.path, timeout=20) as c:
                    c.token(wait=15)
                _helper_gone(p.pid)
                time.sleep(settle)
                m = _mem(p.pid)
                m["heavy"] = _heavy_maps(p.pid)
                m["children"] = len(_children(p.pid))
                out.append(m)
            finally:
                p.terminate()
                p.wait()
            _, p = _spawn_until_ready(cmd[:2] + ["-c", BARE], tmp)
            time.sleep(settle)
            bare.append(_mem(p.pid))
            p.kill()
            p.wait()
    finally:
        emu.stop()
    return out, bare


def main(argv: list | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--no-pkcs11", action="store_true", help="skip the pkcs11 key provider figures")
    ap.add_argument("--steady", type=int, default=5, help="samples of the idle PSS after a fetch (0: skip)")
    ap.add_argument("--box", metavar="FILE", help="measure this usr/bin/pass-agent (an unpacked overlay's "
                    "launcher, or an earlier commit's zipapp) instead of the overlay built from this tree, "
                    "for a before/after")
    args = ap.parse_args(argv)

    tmp, emu, cfg, cfg_path = agent_against_emulator("bench-coldstart-")
    py = [sys.executable, "-I"]  # the baseline and every agent: same interpreter, same flags
    bare_cmd = py + ["-c", BARE]
    agent_cmd = py + ["-m", "agent", "run", "--config", cfg_path]
    box = args.box or install_box(tmp)
    box_cmd = py + [box, "run", "--config", cfg_path]

    # Prime: register and store a token, then make Adobe unreachable.
    from agent.client import Client

    _, p = _spawn_until_ready(agent_cmd, tmp)
    with Client(cfg.socket.path, timeout=20) as c:
        c.token(wait=15)
    p.terminate()
    p.wait()
    hsm = None if args.no_pkcs11 else _softhsm(tmp)
    p11_cmd, p11_env, p11_cfg = None, {}, None
    if hsm is not None:  # a second store, registered the same way, re-sealed by the token at its first start
        import shutil

        from agent import config as configmod

        p11_env = {"SOFTHSM2_CONF": hsm["conf"]}
        p11_cfg = cfg.replace(storage={"dir": os.path.join(tmp, "store-p11"), "runtime_dir": os.path.join(tmp, "run-p11"),
                                       "key_provider": "pkcs11", "pkcs11": configmod.Pkcs11Config(
                                           module=hsm["module"], token_label="bench", pin_file=hsm["pin"])},
                              socket={"path": os.path.join(tmp, "agent-p11.sock")})
        shutil.copytree(cfg.storage.dir, p11_cfg.storage.dir)
        p11_cmd = py + ["-m", "agent", "run", "--config", configmod.write(p11_cfg, os.path.join(tmp, "agent-p11.toml"))]
        _, p = _spawn_until_ready(p11_cmd, tmp, p11_env)  # migration device -> pkcs11 happens here
        with Client(p11_cfg.socket.path, timeout=20) as c:
            c.token(wait=15)
        p.terminate()
        p.wait()
    emu.stop()

    times: dict = {"bare": [], "box": [], "agent": [], "pkcs11": []}
    mems: dict = {"bare": [], "box": [], "agent": []}
    gets: dict = {}

    def idle(name: str, p: subprocess.Popen, settle: float) -> None:
        if name != "bare":
            with Client(cfg.socket.path) as c:
                assert c.health()["ready"], "the %s agent is not ready from its stored token" % name
            _helper_gone(p.pid)
        time.sleep(settle)
        mems[name].append(_mem(p.pid))

    # The unit's StateDirectory=pass-agent: systemd sets STATE_DIRECTORY, where the validated-configuration
    # cache lives (agent/configcache.py; the first start fills it). One per install, as on a box.
    states = {n: os.path.join(tmp, "state-" + n) for n in ("box", "agent")}
    for d in states.values():
        os.mkdir(d, 0o700)
    for i in range(args.runs):
        last = i == args.runs - 1
        for name, cmd in (("bare", bare_cmd), ("box", box_cmd), ("agent", agent_cmd)):
            # The helper process (forked at start, it decrypted the store) exits after 1 s idle instead of 30:
            # while it lives it shares the agent's pages, which halves their share in the agent's PSS.
            dt, p = _spawn_until_ready(cmd, tmp, None if name == "bare" else {"PASS_AGENT_HELPER_IDLE": "1",
                                                                             "STATE_DIRECTORY": states[name]})
            times[name].append(dt)
            idle(name, p, 0.5 if name == "bare" else 1.0)  # PSS moves with what else runs: a median too
            if name != "agent":  # the editable agent stays up for the pkcs11 token.get comparison
                p.kill() if name == "bare" else p.terminate()
                p.wait()
        if p11_cmd is not None:
            dt, p2 = _spawn_until_ready(p11_cmd, tmp, p11_env)
            times["pkcs11"].append(dt)
            if last:  # both agents up: token.get of each, interleaved
                gets = _token_gets({"device": cfg.socket.path, "pkcs11": p11_cfg.socket.path})
            p2.terminate()
            p2.wait()
        elif last:
            gets = _token_gets({"device": cfg.socket.path})
        p.terminate()
        p.wait()

    steady, steady_bare = idle_after_fetch(py + [box], tmp, args.steady) if args.steady > 0 else ([], [])

    def ms(name: str) -> float:
        return round(statistics.median(times[name]) * 1000, 1)

    mem = {name: {k: (round(statistics.median(m[k] for m in samples)) if all(m.get(k) is not None for m in samples) else None)
                  for k in ("rss_kb", "pss_kb", "uss_kb")} for name, samples in mems.items()}

    res = {
        "runs": args.runs,
        "baseline": "bare interpreter: %s -I -c BARE (sends READY=1, then sleeps)" % sys.executable,
        "bare_cmd": bare_cmd[:-1] + ["BARE"], "box_cmd": box_cmd, "agent_cmd": agent_cmd,
        "bare_ready_ms": ms("bare"), "box_ready_ms": ms("box"), "agent_ready_ms": ms("agent"),
        "bare_rss_kb": mem["bare"].get("rss_kb"), "box_rss_kb": mem["box"].get("rss_kb"),
        "agent_rss_kb": mem["agent"].get("rss_kb"),
        "bare_pss_kb": mem["bare"].get("pss_kb"), "box_pss_kb": mem["box"].get("pss_kb"),
        "agent_pss_kb": mem["agent"].get("pss_kb"),
        "bare_uss_kb": mem["bare"].get("uss_kb"), "box_uss_kb": mem["box"].get("uss_kb"),
        "agent_uss_kb": mem["agent"].get("uss_kb"),
    }
    res["ready_ratio"] = round(res["agent_ready_ms"] / res["bare_ready_ms"], 2)
    res["box_ready_ratio"] = round(res["box_ready_ms"] / res["bare_ready_ms"], 2)
    res["token_get_us_device"] = round(gets["device"], 1)
    if times["pkcs11"]:
        res["pkcs11_ready_ms"] = ms("pkcs11")
        res["pkcs11_vs_device_ratio"] = round(res["pkcs11_ready_ms"] / res["agent_ready_ms"], 2)
        res["token_get_us_pkcs11"] = round(gets["pkcs11"], 1)
    if res["agent_pss_kb"] is not None and res["bare_pss_kb"] is not None:
        res["pss_delta_mb"] = round((res["agent_pss_kb"] - res["bare_pss_kb"]) / 1024, 2)
        res["box_pss_delta_mb"] = round((res["box_pss_kb"] - res["bare_pss_kb"]) / 1024, 2)
    if steady and all(m.get("pss_kb") is not None for m in steady + steady_bare):
        res["box_steady_pss_kb"] = round(statistics.median(m["pss_kb"] for m in steady))
        res["box_steady_uss_kb"] = round(statistics.median(m["uss_kb"] for m in steady))
        res["steady_bare_pss_kb"] = round(statistics.median(m["pss_kb"] for m in steady_bare))
        res["box_steady_pss_delta_mb"] = round((res["box_steady_pss_kb"] - res["steady_bare_pss_kb"]) / 1024, 2)
        res["box_steady_heavy_maps"] = sorted({h for m in steady for h in m["heavy"]})
        res["box_steady_samples"] = len(steady)
    res["targets"] = {"agent_ready_ms <= 150": res["agent_ready_ms"] <= 150,
                      "pss_delta_mb <= 10": res.get("pss_delta_mb", 99) <= 10,
                      "box_ready_ratio <= 2.0": res["box_ready_ratio"] <= 2.0,
                      "box_pss_delta_mb <= 6": res.get("box_pss_delta_mb", 99) <= 6}
    if "box_steady_pss_kb" in res:
        res["targets"]["box_steady_pss_delta_mb <= 6"] = res["box_steady_pss_delta_mb"] <= 6
    print("cold start and idle memory (median of %d runs, interleaved)" % args.runs)
    print("baseline: " + res["baseline"])
    if args.box:
        print("box:      %s -I %s run (given with --box)" % (sys.executable, args.box))
    else:
        print("box:      %s -I <overlay root>/usr/bin/pass-agent run (launcher, modules with bytecode in"
              " /usr/lib/pass-agent, as installed)" % sys.executable)
    print("editable: %s -I -m agent run (this source tree)" % sys.executable)
    print("%-38s %10s %10s %10s %8s" % ("figure", "bare", "box", "editable", "box/bare"))
    print("%-38s %10.1f %10.1f %10.1f %8.2f" % ("spawn -> READY=1 (ms)", res["bare_ready_ms"], res["box_ready_ms"],
                                                 res["agent_ready_ms"], res["box_ready_ratio"]))
    print("%-38s %10s %10s %10s" % ("idle RSS (kB)", res["bare_rss_kb"], res["box_rss_kb"], res["agent_rss_kb"]))
    print("%-38s %10s %10s %10s %8s" % ("idle PSS (kB)", res["bare_pss_kb"], res["box_pss_kb"], res["agent_pss_kb"],
                                        ("+%.2f MB" % res["box_pss_delta_mb"]) if "box_pss_delta_mb" in res else ""))
    print("%-38s %10s %10s %10s" % ("idle USS (kB)", res["bare_uss_kb"], res["box_uss_kb"], res["agent_uss_kb"]))
    if "box_steady_pss_kb" in res:
        print("%-38s %10s %10s %10s %8s" % ("idle PSS after a fetch (kB)", res["steady_bare_pss_kb"], res["box_steady_pss_kb"],
                                            "", "+%.2f MB" % res["box_steady_pss_delta_mb"]))
        print("  (box agent registered and fetched from the emulator, helper exited; the bare interpreter beside each"
              " sample; median of %d; ssl/cryptography mapped: %s)" % (
                  res["box_steady_samples"], ", ".join(res["box_steady_heavy_maps"]) or "none"))
    if times["pkcs11"]:
        print("%-38s %10.1f %10.1f %8.2f" % ("READY=1 (ms), key provider device/pkcs11", res["agent_ready_ms"],
                                              res["pkcs11_ready_ms"], res["pkcs11_vs_device_ratio"]))
        print("%-38s %10.1f %10.1f %8.2f" % ("token.get round trip (us) dev/pkcs11", res["token_get_us_device"],
                                              res["token_get_us_pkcs11"],
                                              res["token_get_us_pkcs11"] / res["token_get_us_device"]))
    else:
        print("(pkcs11 figures skipped: SoftHSM2 or python-pkcs11 missing, or --no-pkcs11)")
    for k, v in res["targets"].items():
        print("target %-28s %s" % (k, "met" if v else "MISSED"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    main()
