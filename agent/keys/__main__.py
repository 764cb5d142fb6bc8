"""`python3 -m agent.keys`: the store's key provider, for the operator (docs/SECURITY.md, Rollback).

    python3 -m agent.keys [--config FILE] status            provider, hardware-backed, slots, counter
    python3 -m agent.keys [--config FILE] accept-rollback   keep a restored (older) store on purpose

accept-rollback is the operator's answer to store_rollback when the older copy was put back on
purpose (a restored backup): it records the restored store's newest generation as the counter, so
the agent starts with it. Stop the agent first (it holds the store lock). The other answer,
'pass-agent reset', discards the credentials and registers afresh.

Must never: print a secret (only providers, generations and client-id prefixes), or change a store
that is not rolled back.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO


def _stores(cfg, ident) -> list:
    from agent import keys
    from agent.storagepaths import app_runtime_dir, app_storage_dir, storage_dir
    from agent.store import Store

    base = storage_dir(cfg, ident["board"])
    out = []
    for app in cfg.apps:
        d = app_storage_dir(base, app.name)
        out.append((app.name, Store(d, ident["device_id"], token_cache="runtime",
                                    runtime_dir=app_runtime_dir(cfg.storage.runtime_dir, app.name),
                                    keys=keys.keyset(cfg.storage, ident["device_id"], d))))
    return out


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, prog: str = "python3 -m agent.keys") -> int:
    from agent import boards
    from agent import config as configmod
    from agent.errors import AgentError, StoreError

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="config file (default: $PASS_AGENT_CONFIG or /etc/pass-agent/agent.toml)")
    p.add_argument("command", choices=("status", "accept-rollback"))
    args = p.parse_args(argv)
    try:
        cfg = configmod.load(args.config, check_files=False)
        ident = boards.identify_for(cfg.device)
        stores = _stores(cfg, ident)
    except AgentError as e:
        out.write("error: %s\n" % e)
        return 2
    rc = 0
    for name, store in stores:
        where = "%s (%s)" % (store.directory, name)
        try:
            if args.command == "status":
                state = store.load()
                cid = ((state or {}).get("client") or {}).get("client_id") or ""
                out.write("%s: key provider %s (%s), generation %d, counter %s, %s\n" % (
                    where, store.key_provider, "hardware-backed" if store.hardware_backed else "software",
                    store.stats["generation"], store.anchor_generation, ("client %s…" % cid[:8]) if cid
                    else "no credentials (%s)" % store.problem))
                continue
            store.open()
            try:
                store.load()
                out.write("%s: not rolled back; nothing to accept\n" % where)
            except StoreError as e:
                if e.code != "store_rollback":
                    raise
                gen = store.accept_rollback()
                out.write("%s: rollback accepted; the generation counter now says %s\n" % (where, gen))
            finally:
                store.close()
        except StoreError as e:
            out.write("%s: %s (%s)\n" % (where, e, e.code))
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
