"""Mutation testing over the agent's core modules: plant a known small bug, check that a test fails.

    python -m tools.mutate                 # every mutation, 2 workers; exit 1 on an unexpected survivor
    python -m tools.mutate --only store    # names containing "store"
    python -m tools.mutate --list          # the list, nothing run
    python -m tools.mutate --check         # every original snippet occurs exactly once (no run)

Each entry of MUTATIONS names a file, an exact original snippet (it must occur exactly once), its
replacement (the bug), the test files that must notice, and what a user would suffer. For each one
the tool copies the checkout into a scratch directory (one per worker), applies the mutation there,
runs `pytest -x` on the mapped test files with that directory as cwd and first on PYTHONPATH (so
the tests and every process they start import the mutated agent), and puts the file back. A test
failure (or error, or a hang cut by pytest-timeout) kills the mutation; a green run means it
survived: the suite would not notice that bug. An entry with `survives` set is a known survivor,
with the reason it is acceptable written there; docs/TESTING.md lists them and the last run.

Before the mutations, the mapped test files run once on the unmutated copy: a red baseline would
make every mutation look killed, so the tool stops there instead.

Must never: modify the checkout it was started from (every edit happens in a temporary copy, deleted
at the end), or report a mutation as killed when the mapped tests did not run (collection errors and
missing files are reported as errors, not kills).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IGNORE = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", ".hypothesis",
                                ".pytest_cache", ".ruff_cache", "*.pyc")
PER_TEST_TIMEOUT = 120      # pytest-timeout for one test under a mutation: a hang is a kill, found quickly
RUN_TIMEOUT = 900           # the whole pytest run of one mutation (a hang pytest-timeout cannot cut)


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str                  # relative to the checkout
    original: str              # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]     # test files (relative) that must kill it
    bug: str                   # what a user would suffer if this shipped
    survives: str = ""         # a known survivor: why that is acceptable (docs/TESTING.md)


LIFECYCLE = ("tests/test_lifecycle.py", "tests/test_lifecycle_policy.py")
STORE = ("tests/test_store.py", "tests/test_store_safety.py", "tests/test_store_crash.py")
SAFEDIR = ("tests/test_store_safety.py", "tests/test_store.py")
SERVER = ("tests/test_server_acl.py", "tests/test_server.py", "tests/test_server_limits.py")
LOG = ("tests/test_log.py",)
REDIRECTS = ("tests/test_urequests_redirects.py", "tests/test_urequests.py")
DCR = ("tests/test_dcr.py", "tests/test_dcr_hardening.py")
DEVICEINFO = ("tests/test_deviceinfo_network.py",)

M = Mutation
MUTATIONS: tuple[Mutation, ...] = (
    # -- lifecycle: when the agent asks Adobe -------------------------------------------------------
    M("lifecycle-invalid-client-reregisters-every-time", "agent/lifecycle.py",
      "            if not self.trigger_spent:\n                # First refusal",
      "            if True:\n                # First refusal", LIFECYCLE,
      "a client refused again registers again at once, for ever: a busy loop against Adobe (issue 21's hang)"),
    M("lifecycle-refresh-ignores-min-token-interval", "agent/lifecycle.py",
      "refresh_mono = max(received + lifetime * f, received + self.min_token_interval, now)",
      "refresh_mono = max(received + lifetime * f, now)", LIFECYCLE,
      "short-lived tokens refreshed faster than Adobe's 30 s throttle"),
    M("lifecycle-demand-ignores-min-token-interval", "agent/lifecycle.py",
      "return max(now, self.token_asked + self.min_token_interval)",
      "return now", LIFECYCLE,
      "every player's demand asks Adobe for a token at once, however recent the last request"),
    M("lifecycle-undocumented-count-off-by-one", "agent/lifecycle.py",
      "return (self.undocumented >= self.undocumented_count",
      "return (self.undocumented > self.undocumented_count", LIFECYCLE,
      "an undocumented-answer streak needs one answer more than documented before the operator is told"),
    M("lifecycle-undocumented-span-ignored", "agent/lifecycle.py",
      "                    and now - self.undocumented_since >= self.undocumented_span)",
      "                    or now - self.undocumented_since >= self.undocumented_span)", LIFECYCLE,
      "three quick undocumented answers (one proxy blip) park the agent for an hour"),
    M("lifecycle-undocumented-streak-not-ended", "agent/lifecycle.py",
      "            self.undocumented = 0  # a documented answer ends the streak",
      "            pass  # a documented answer ends the streak", LIFECYCLE,
      "undocumented answers weeks apart add up to an operator alarm"),
    M("lifecycle-throttle-streak-not-ended", "agent/lifecycle.py",
      "            self.throttled = 0  # Adobe answered something else: the 429 streak is over",
      "            pass  # Adobe answered something else: the 429 streak is over", LIFECYCLE,
      "after a 429 streak, every later error backs off with the throttle curve"),
    M("lifecycle-reregister-backoff-capped-like-a-blip", "agent/lifecycle.py",
      "                cap = self.operator_retry", "                cap = self.backoff_cap", LIFECYCLE,
      "a refused fresh client re-registers every few minutes, logging users out each time"),
    M("lifecycle-retry-after-not-a-floor", "agent/lifecycle.py",
      "delay = max(delay, min(float(err.retry_after), limit))",
      "delay = min(delay, min(float(err.retry_after), limit))", LIFECYCLE,
      "Retry-After shortens the backoff instead of lengthening it"),
    # -- store: the credentials on flash ------------------------------------------------------------
    M("store-first-save-overwrites-foreign-slot", "agent/store.py",
      "return min(SLOT_NAMES, key=lambda n: _RANK[", "return max(SLOT_NAMES, key=lambda n: _RANK[", STORE,
      "with no current slot, the first save overwrites a foreign-device or newer-format slot (issue 21)"),
    M("store-older-generation-wins", "agent/store.py",
      'gen_newer(r["generation"], res[best]["generation"])',
      'gen_newer(res[best]["generation"], r["generation"])', STORE,
      "after a crash the older slot is loaded: the previous credentials come back"),
    M("store-generation-wrap-ignored", "agent/slotformat.py",
      "return 0 < d < _GEN_HALF", "return 0 < d", STORE,
      "any two different generations both count as newer: the slot choice depends on the order read"),
    M("store-read-follows-symlinks", "agent/store.py",
      "fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW)\n",
      "fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)\n", STORE,
      "a slot replaced by a symlink is read through it (another file's content taken as credentials)"),
    M("store-write-follows-symlinks", "agent/store.py",
      "flags = os.O_WRONLY | os.O_CLOEXEC | _NOFOLLOW", "flags = os.O_WRONLY | os.O_CLOEXEC", STORE,
      "a temp file planted as a symlink makes the agent (root) overwrite the link's target"),
    M("store-lock-follows-symlink", "agent/store.py",
      "    flags = os.O_CLOEXEC | _NOFOLLOW\n", "    flags = os.O_CLOEXEC\n", STORE,
      "a lock file planted as a symlink makes the agent create or lock the link's target"),
    M("safedir-symlinked-dir-accepted", "agent/safedir.py",
      "    if stat.S_ISLNK(st.st_mode):", "    if False:", SAFEDIR,
      "a storage directory that is a symlink is used: files land wherever the link points"),
    M("safedir-foreign-owner-accepted", "agent/safedir.py",
      "    if st.st_uid not in (uid, 0):", "    if False:", SAFEDIR,
      "a directory owned by another user is used: that user can replace the agent's files"),
    M("safedir-world-writable-accepted", "agent/safedir.py",
      "    if st.st_mode & stat.S_IWOTH:", "    if False:", SAFEDIR,
      "a world-writable directory is used: any local user can replace the agent's files"),
    # -- server: who may use the socket, and what one connection may hold ---------------------------
    M("server-sighup-does-not-reread-groups", "agent/server.py",
      "    groups = read_groups()\n", "", SERVER,
      "a SIGHUP that allows a peer's supplementary group disconnects that peer (issue 21)"),
    M("server-sighup-uses-stale-groups", "agent/server.py",
      "lambda c=conn: peer_groups(c.pid, c.uid)", "lambda c=conn: c.groups", SERVER,
      "the same, through the server: the groups skipped at accept are never read"),
    M("server-accept-never-reads-groups", "agent/server.py",
      "    return bool(allow_gids) and gid not in allow_gids\n", "    return False\n", SERVER,
      "socket.allow_gids works only for primary groups: a peer in an allowed supplementary group is denied"),
    M("server-acl-ignores-supplementary-groups", "agent/server.py",
      "(gid in allow_gids or not allow_gids.isdisjoint(groups))", "(gid in allow_gids)", SERVER,
      "socket.allow_gids works only for a peer's primary group"),
    M("server-acl-ignores-primary-gid", "agent/server.py",
      "(gid in allow_gids or not allow_gids.isdisjoint(groups))", "(not allow_gids.isdisjoint(groups))", SERVER,
      "a peer whose primary group is allowed is denied"),
    M("server-acl-any-gid-when-list-empty", "agent/server.py",
      "return bool(allow_gids) and (", "return not allow_gids or (", SERVER,
      "an empty allow_gids lets every local user read tokens"),
    M("server-acl-own-uid-denied", "agent/server.py",
      "if uid == 0 or uid == own_uid or uid in allow_uids:", "if uid == 0 or uid in allow_uids:", SERVER,
      "the agent's own user (its CLI) is denied"),
    M("server-sighup-keeps-disallowed-peers", "agent/server.py",
      "                self._deny(conn, counted=True)\n", "                pass\n", SERVER,
      "a peer removed from the allow-lists by SIGHUP keeps its connection (and its tokens)"),
    M("server-parked-waits-per-connection-uncapped", "agent/server.py",
      "            if len(conn.waits) >= self.max_waits_per_conn:", "            if False:", SERVER,
      "one connection parks waits without limit and holds the agent's memory"),
    M("server-parked-waits-total-uncapped", "agent/server.py",
      "            elif self._nwaits >= self.max_waits:", "            elif False:", SERVER,
      "many connections together park waits without limit"),
    # -- log: secrets never reach a log line --------------------------------------------------------
    M("log-password-not-masked", "agent/log.py",
      "(client_secret|access_token|secret|password)", "(client_secret|access_token|secret)", LOG,
      "`password=...` in a log line is printed in clear (issue 21)"),
    M("log-bearer-not-masked", "agent/log.py",
      '_BEARER = re.compile(r"(?i)(bearer\\s+)', '_BEARER = re.compile(r"(?i)(bearerX\\s+)', LOG,
      "an unregistered `Bearer <token>` in a log line is printed in clear"),
    M("log-jwt-not-masked", "agent/log.py",
      '_JWT = re.compile(r"eyJ', '_JWT = re.compile(r"eyX', LOG,
      "an unregistered JWT (a software statement) in a log line is printed in clear"),
    M("log-previous-secret-forgotten", "agent/log.py",
      "    PER_KIND = 2 ", "    PER_KIND = 1 ", LOG,
      "a late log line quoting the previous token prints it in clear"),
    # -- urequests: redirects never carry a body or credentials to another origin -------------------
    M("urequests-origin-ignores-port", "agent/urequests.py",
      "return sa == sb and ha == hb and pa == pb", "return sa == sb and ha == hb", REDIRECTS,
      "a redirect to another port of the same host gets the body and credentials (issue 21)"),
    M("urequests-origin-ignores-scheme", "agent/urequests.py",
      "return sa == sb and ha == hb and pa == pb", "return ha == hb and pa == pb", REDIRECTS,
      "a redirect to another scheme on the same host and port gets the body and credentials (issue 21)"),
    M("urequests-origin-ignores-host", "agent/urequests.py",
      "return sa == sb and ha == hb and pa == pb", "return sa == sb and pa == pb", REDIRECTS,
      "a redirect to another host on the same port gets the body and credentials"),
    M("urequests-https-to-http-followed", "agent/urequests.py",
      'if split_url(url)[0] == "https" and split_url(new_url)[0] == "http":', "if False:", REDIRECTS,
      "an https request is redirected to clear text"),
    M("urequests-credentials-kept-across-origins", "agent/urequests.py",
      "            if name.lower() in _CREDENTIAL_HEADERS:\n                del hdrs[name]\n",
      "            if name.lower() in _CREDENTIAL_HEADERS:\n                pass\n", REDIRECTS,
      "Authorization and cookies follow a redirect to another origin"),
    M("urequests-body-resent-to-another-origin", "agent/urequests.py",
      "    elif body and not same:", "    elif False:", REDIRECTS,
      "a 307/308 resends the request body (a client secret) to another origin"),
    M("urequests-post-302-keeps-method", "agent/urequests.py",
      'if status == 303 or (status in (301, 302) and method == "POST"):', "if status == 303:", REDIRECTS,
      "a POST redirected by 301/302 is resent as a POST with its body"),
    # -- dcr: what Adobe's answers mean -------------------------------------------------------------
    M("dcr-bearer-token-any-character", "agent/dcr.py",
      "        if ch not in _B64TOKEN:\n            return False\n",
      "        if ch not in _B64TOKEN:\n            pass\n", DCR,
      "a served token may hold CR/LF: header injection in every player's Authorization line"),
    M("dcr-bearer-token-any-length", "agent/dcr.py",
      "    if not isinstance(value, str) or not 0 < len(value) <= MAX_TOKEN_LENGTH:",
      "    if not isinstance(value, str) or not value:", DCR,
      "a megabyte token is stored, served and sent in every player's requests"),
    M("dcr-bearer-token-only-padding", "agent/dcr.py",
      "    if end == 0:\n        return False\n", "    if end == 0:\n        pass\n", DCR,
      'a token made only of "=" is served'),
    M("dcr-retry-after-date-ignores-server-date", "agent/dcr.py",
      "now = parse_http_date(str(server_date)) if server_date is not None else None", "now = None", DCR,
      "a box whose clock is hours off waits hours too long (or not at all) on a Retry-After date"),
    M("dcr-retry-after-date-sign", "agent/dcr.py",
      "wait = when - float(now)", "wait = float(now) - when", DCR,
      "a Retry-After date in the future means no wait"),
    M("dcr-retry-after-seconds-uncapped", "agent/dcr.py",
      "return MAX_RETRY_AFTER if len(value) > 6 else float(min(int(value), int(MAX_RETRY_AFTER)))",
      "return float(int(value))", DCR,
      "Retry-After: 99999999 parks the agent for years"),
    M("dcr-invalid-client-on-register-retried", "agent/dcr.py",
      '        if code == "invalid_client" and endpoint != "token":\n            kind = OPERATOR\n',
      '        if code == "invalid_client" and endpoint != "token":\n            pass\n', DCR,
      "a statement Adobe refuses is re-sent in a loop instead of asking the operator"),
    M("dcr-429-not-throttled", "agent/dcr.py", "    if status == 429:", "    if status == 430:", DCR,
      "a 429 is treated as a plain error: Adobe's throttle is not respected"),
    M("dcr-reregister-codes-refresh-only", "agent/dcr.py",
      '    if code in REREGISTER_CODES:\n        return "reregister"',
      '    if code in REREGISTER_CODES:\n        return "refresh"', DCR,
      "revoked credentials are never replaced: the box is stuck with refused tokens"),
    M("dcr-application-registration-action-ignored", "agent/dcr.py",
      'if code in REFRESH_CODES or action == "application-registration":', "if code in REFRESH_CODES:", DCR,
      "an application-registration action with another code is ignored instead of refreshing"),
    M("dcr-management-403-ignored", "agent/dcr.py",
      "    if status == 403 and management:", "    if False:", DCR,
      "a 403 from a management API never renews the credentials"),
    M("dcr-unknown-error-documented", "agent/dcr.py",
      'undocumented=True,\n                             hint="check the agent version, "',
      'undocumented=False,\n                             hint="check the agent version, "', DCR,
      "an error Adobe does not document never reaches the operator (no upstream_undocumented streak)"),
    # -- deviceinfo: the connectionIp sent to Adobe must be public ----------------------------------
    M("deviceinfo-10-slash-8-public", "agent/netinfo.py",
      "if a == 10 or (a == 172 and 16 <= n <= 31)", "if (a == 172 and 16 <= n <= 31)", DEVICEINFO,
      "10.x addresses are sent to Adobe as the box's public address"),
    M("deviceinfo-cgnat-edge-public", "agent/netinfo.py",
      "if a == 100 and 64 <= n <= 127:", "if a == 100 and 64 <= n < 127:", DEVICEINFO,
      "100.127.x (CGNAT) is sent as public"),
    M("deviceinfo-fd00-ula-public", "agent/netinfo.py",
      "if first & 0xFE00 == 0xFC00:", "if first & 0xFF00 == 0xFC00:", DEVICEINFO,
      "fd00::/8 (the ULA block in real use) is sent as public"),
    M("deviceinfo-non-global-ipv6-public", "agent/netinfo.py",
      "    if first & 0xE000 != 0x2000:", "    if False:", DEVICEINFO,
      "IPv6 outside 2000::/3 is sent as public"),
    M("deviceinfo-ipv4-mapped-public", "agent/netinfo.py",
      "    if g[:5] == [0, 0, 0, 0, 0] and g[5] == 0xFFFF:", "    if False:", DEVICEINFO,
      "::ffff:10.0.0.1 hides a private IPv4 address behind IPv6"),
)


class Result(NamedTuple):
    mutation: Mutation
    outcome: str      # killed | survived | error
    detail: str       # the killing test, or why it is an error
    seconds: float


def problems(mutations: tuple[Mutation, ...] = MUTATIONS, root: str = ROOT) -> list[str]:
    """What is wrong with the list: duplicate names, missing files, snippets not found exactly once,
    no-op replacements, missing test files. Empty when it is well-formed."""
    out = []
    seen: set[str] = set()
    texts: dict[str, str] = {}
    for m in mutations:
        if m.name in seen:
            out.append("%s: duplicate name" % m.name)
        seen.add(m.name)
        if m.original == m.replacement:
            out.append("%s: the replacement equals the original" % m.name)
        if not m.bug:
            out.append("%s: no bug description" % m.name)
        if m.path not in texts:
            try:
                with open(os.path.join(root, m.path), encoding="utf-8") as f:
                    texts[m.path] = f.read()
            except OSError as e:
                texts[m.path] = ""
                out.append("%s: cannot read %s (%s)" % (m.name, m.path, e.strerror))
        n = texts[m.path].count(m.original)
        if n != 1:
            out.append("%s: the original snippet occurs %d times in %s (expected exactly once): %r"
                       % (m.name, n, m.path, m.original[:80]))
        if not m.tests:
            out.append("%s: no test files" % m.name)
        for t in m.tests:
            if not os.path.isfile(os.path.join(root, t)):
                out.append("%s: test file %s does not exist" % (m.name, t))
    return out


_FAILED = re.compile(r"^(FAILED|ERROR) (.+?)(?: - .*)?$", re.M)  # -rfE summary lines: the test id, its reason


def _pytest(workdir: str, tests: tuple[str, ...] | list[str], stop_first: bool = True) -> tuple[int, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = workdir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:randomly", "-p", "no:cacheprovider",
           "--timeout=%d" % PER_TEST_TIMEOUT]
    if stop_first:
        cmd.append("-x")
    try:
        p = subprocess.run(cmd + list(tests), cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode("utf-8", "replace") if isinstance(e.stdout, bytes) else ""
        return -1, out + "\n(the run exceeded %d s)" % RUN_TIMEOUT
    return p.returncode, p.stdout.decode("utf-8", "replace")


def _verify_copy(workdir: str) -> None:
    """The scratch copy, not the checkout, must be what `import agent` finds there."""
    env = dict(os.environ, PYTHONPATH=workdir)
    p = subprocess.run([sys.executable, "-c", "import agent, os; print(os.path.realpath(agent.__file__))"],
                       cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    where = p.stdout.decode().strip()
    if not where.startswith(os.path.realpath(workdir) + os.sep):
        raise SystemExit("mutate: the scratch copy %s imports agent from %s; refusing to run" % (workdir, where))


def run_one(m: Mutation, workdir: str) -> Result:
    path = os.path.join(workdir, m.path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.count(m.original) != 1:
        return Result(m, "error", "the original snippet does not occur exactly once", 0.0)
    start = time.monotonic()
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(m.original, m.replacement))
        rc, out = _pytest(workdir, m.tests)
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    took = time.monotonic() - start
    if rc == 0:
        return Result(m, "survived", "", took)
    if rc in (1, -1):
        hits = _FAILED.findall(out)
        if hits:
            return Result(m, "killed", hits[0][1], took)
        if rc == -1:
            return Result(m, "killed", "(hang: the run exceeded %d s)" % RUN_TIMEOUT, took)
    if rc == 2 and "during collection" in out:  # the mutated module no longer imports
        hits = _FAILED.findall(out)
        return Result(m, "killed", "(collection error%s)" % (": " + hits[0][1] if hits else ""), took)
    tail = out.strip().splitlines()[-1:] or [""]
    return Result(m, "error", "pytest exit %d: %s" % (rc, tail[0][:200]), took)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.mutate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="mutations run in parallel (default 2)")
    ap.add_argument("--only", action="append", default=[], help="run mutations whose name contains this")
    ap.add_argument("--list", action="store_true", help="print the mutations and exit")
    ap.add_argument("--check", action="store_true", help="check the list is well-formed and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the mapped tests")
    args = ap.parse_args(argv)

    bad = problems()
    if bad:
        print("mutate: the mutation list does not match the code:\n  " + "\n  ".join(bad))
        return 2
    chosen = [m for m in MUTATIONS if not args.only or any(o in m.name for o in args.only)]
    if args.list or args.check:
        if args.list:
            for m in chosen:
                print("%-48s %-22s %s" % (m.name, m.path, " ".join(m.tests)))
        print("%d mutations, well-formed" % len(chosen))
        return 0
    if not chosen:
        print("mutate: no mutation matches %s" % args.only)
        return 2

    t0 = time.monotonic()
    base = tempfile.mkdtemp(prefix="pass-agent-mutate-")
    try:
        dirs: queue.Queue[str] = queue.Queue()
        for i in range(max(1, args.jobs)):
            d = os.path.join(base, "w%d" % i)
            shutil.copytree(ROOT, d, ignore=IGNORE, symlinks=True)
            _verify_copy(d)
            dirs.put(d)
        if not args.no_baseline:
            files = sorted({t for m in chosen for t in m.tests})
            rc, out = _pytest(os.path.join(base, "w0"), files, stop_first=False)
            if rc != 0:
                print(out[-4000:])
                print("mutate: the mapped tests fail on the unmutated tree (pytest exit %d); fix that first" % rc)
                return 2
            print("baseline: %d test files pass unmutated (%.0f s)" % (len(files), time.monotonic() - t0), flush=True)

        def work(m: Mutation) -> Result:
            d = dirs.get()
            try:
                return run_one(m, d)
            finally:
                dirs.put(d)

        results: list[Result] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for r in pool.map(work, chosen):
                results.append(r)
                note = ""
                if r.outcome == "survived" and r.mutation.survives:
                    note = "  (known survivor: %s)" % r.mutation.survives
                elif r.outcome == "killed" and r.mutation.survives:
                    note = "  (listed as a survivor: drop its `survives`)"
                print("%-8s %-48s %5.1fs  %s%s" % (r.outcome, r.mutation.name, r.seconds, r.detail, note), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    killed = [r for r in results if r.outcome == "killed"]
    survived = [r for r in results if r.outcome == "survived"]
    errors = [r for r in results if r.outcome == "error"]
    unexpected = [r for r in survived if not r.mutation.survives]
    print("summary: %d mutations, %d killed, %d survived (%d unexpected), %d errors, %.0f s with %d workers"
          % (len(results), len(killed), len(survived), len(unexpected), len(errors), time.monotonic() - t0,
             args.jobs))
    for r in unexpected:
        print("  SURVIVED %s (%s): %s" % (r.mutation.name, r.mutation.path, r.mutation.bug))
    for r in errors:
        print("  ERROR %s: %s" % (r.mutation.name, r.detail))
    return 1 if unexpected or errors else 0


if __name__ == "__main__":
    sys.exit(main())
