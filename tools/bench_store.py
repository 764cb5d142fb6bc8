"""Flash-wear benchmark of the credential store (issue 7) against a naive store, in one run.

Counts, through a counting FsOps on real files in a temp dir, the bytes and fsyncs each store puts
on flash for: one registration (credentials saved, then the first token), each token refresh, and
each save whose state did not change. The baseline is a naive store that rewrites the whole
plaintext JSON file twice per save (file + backup copy) and never skips. Also prints a daily and
yearly estimate at one refresh every 5 h (6 h tokens refreshed at ~80 % of their lifetime).

    python tools/bench_store.py [--refreshes 100] [--unchanged 100] [--json FILE]

Must never: touch anything outside its own temp dir, or print a secret (the states are synthetic).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.store import FsOps, Store  # noqa: E402

REFRESHES_PER_DAY = 24 / 5
TOKEN = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + "x" * 600 + ".sig-" + "y" * 340  # ~1 KB like Adobe's


def state(client: int, tok: int | None) -> dict:
    return {
        "client": {"client_id": "6e4b2a9c-%04d-4f1e-9b7a-2c1d3e4f5a6b" % client,
                   "client_secret": "c7d8e9f0-%04d-4a1b-8c2d-3e4f5a6b7c8d" % client,
                   "client_id_issued_at": 1700000000000, "redirect_uris": [],
                   "grant_types": ["client_credentials"], "scopes": ["api:client:v2"]},
        "statement_hash": "%064x" % client,
        "registered_at": 1700000000.0,
        "token": None if tok is None else {
            "access_token": TOKEN + str(tok), "token_type": "bearer", "expires_in": 21600,
            "received_at": 1700000000.0 + tok * 18000, "expires_at": 1700021600.0 + tok * 18000},
    }


class CountingFs(FsOps):
    """Real file operations; counts bytes, fsyncs and files replaced per directory root."""

    def __init__(self, flash_root: str) -> None:
        self.flash_root = flash_root
        self.paths: dict = {}
        self.c = {"flash_bytes": 0, "flash_fsyncs": 0, "flash_files": 0, "ram_bytes": 0, "ram_files": 0}

    def reset(self) -> None:
        for k in self.c:
            self.c[k] = 0

    def _flash(self, path: str) -> bool:
        return path.startswith(self.flash_root)

    def open(self, path, truncate=True):
        fd = super().open(path, truncate)
        self.paths[fd] = path
        return fd

    def write(self, fd, data):
        n = super().write(fd, data)
        self.c["flash_bytes" if self._flash(self.paths[fd]) else "ram_bytes"] += n
        return n

    def fsync(self, fd):
        super().fsync(fd)
        if self._flash(self.paths[fd]):
            self.c["flash_fsyncs"] += 1

    def close(self, fd):
        super().close(fd)
        self.paths.pop(fd, None)

    def rename(self, src, dst):
        super().rename(src, dst)
        self.c["flash_files" if self._flash(dst) else "ram_files"] += 1

    def fsync_dir(self, path):
        super().fsync_dir(path)
        if self._flash(path):
            self.c["flash_fsyncs"] += 1


class NaiveStore:
    """Baseline: plaintext JSON, whole file written twice (main + backup) on every save, no skip."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.c = {"flash_bytes": 0, "flash_fsyncs": 0, "flash_files": 0, "ram_bytes": 0, "ram_files": 0}

    def reset(self) -> None:
        for k in self.c:
            self.c[k] = 0

    def save(self, st: dict) -> bool:
        data = json.dumps(st, separators=(",", ":")).encode()
        for name in ("state.json", "state.json.bak"):
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.c["flash_bytes"] += len(data)
            self.c["flash_fsyncs"] += 1
            self.c["flash_files"] += 1
        return True


def run(kind: str, root: str, refreshes: int, unchanged: int) -> dict:
    flash, ram = os.path.join(root, kind, "flash"), os.path.join(root, kind, "run")
    if kind == "naive":
        store = NaiveStore(flash)
        counts = store.c
    else:
        fs = CountingFs(flash)
        store = Store(flash, "serial:BENCH0001|mac:00:11:22:33:44:55", token_cache=kind, runtime_dir=ram,
                      fs=fs)
        store.open()
        store.load()
        counts = fs.c
    out: dict = {"store": kind}
    fs_reset = fs.reset if kind != "naive" else store.reset
    # Registration: the credentials are saved, then the first token.
    fs_reset()
    store.save(state(1, None))
    store.save(state(1, 0))
    out["registration"] = dict(counts)
    fs_reset()
    for i in range(1, refreshes + 1):
        store.save(state(1, i))
    out["refresh"] = {k: v / refreshes for k, v in counts.items()}
    fs_reset()
    skipped = 0
    for _ in range(unchanged):
        skipped += store.save(state(1, refreshes)) is False
    out["unchanged"] = {k: v / unchanged for k, v in counts.items()}
    out["skipped_unchanged"] = skipped
    if kind != "naive":
        out["stats"] = dict(store.stats)
        store.close()
    per_day = out["refresh"]["flash_bytes"] * REFRESHES_PER_DAY
    out["flash_bytes_per_day"] = per_day
    out["flash_kib_per_year"] = per_day * 365 / 1024
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refreshes", type=int, default=100)
    ap.add_argument("--unchanged", type=int, default=100)
    ap.add_argument("--json", help="also write the results to this file")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as root:
        results = [run(k, root, a.refreshes, a.unchanged) for k in ("naive", "flash", "runtime", "memory")]
    print("store benchmark: 1 registration, %d token refreshes, %d unchanged saves (bytes put on flash)"
          % (a.refreshes, a.unchanged))
    head = "%-24s %12s %10s %9s %8s %10s %9s %9s %12s" % (
        "store", "register B", "refresh B", "files/rf", "fsync/rf", "unchgd B", "skipped", "tmpfs B/rf",
        "KiB/year")
    print(head)
    print("-" * len(head))
    names = {"naive": "naive (2 whole files)", "flash": "A/B token_cache=flash",
             "runtime": "A/B token_cache=runtime", "memory": "A/B token_cache=memory"}
    for r in results:
        print("%-24s %12d %10.0f %9.1f %8.1f %10.0f %5d/%-3d %9.0f %12.1f" % (
            names[r["store"]], r["registration"]["flash_bytes"], r["refresh"]["flash_bytes"],
            r["refresh"]["flash_files"], r["refresh"]["flash_fsyncs"], r["unchanged"]["flash_bytes"],
            r["skipped_unchanged"], a.unchanged, r["refresh"]["ram_bytes"], r["flash_kib_per_year"]))
    base = results[0]["refresh"]["flash_bytes"]
    for r in results[1:]:
        print("%s: %.2fx the naive store's flash bytes per refresh, %d of %d unchanged saves skipped" % (
            names[r["store"]], r["refresh"]["flash_bytes"] / base, r["skipped_unchanged"], a.unchanged))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
