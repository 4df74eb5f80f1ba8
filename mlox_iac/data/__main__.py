"""On the server: ``python3 -m mlox_data backup|snapshots|restore|status`` (run by the
systemd timer and, over SSH, by ``mlox-iac backup``, ``backups``, ``restore``, ``status``).

Prints one JSON object per line: ``progress`` events, then one ``result`` or ``error``;
exits 0, or 1 on failure (2 for a bad argument).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from . import backup, move, parts
from .host import DataError, Host, emit_json

PLAN = Path(__file__).resolve().parent.parent / "plan.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlox_data")
    parser.add_argument("verb", choices=["backup", "snapshots", "restore", "status", "installed", "move-send",
                                         "move-prune", "move-manifest", *move.VERBS, *parts.VERBS])
    parser.add_argument("--snapshot", default="latest")
    parser.add_argument("--service")
    parser.add_argument("--to", help="move-send: the new server's address; part-*: external or local")
    parser.add_argument("--part", help="part-*: objects or postgres")
    parser.add_argument("--port", type=int, default=22, help="move-send: its SSH port")
    parser.add_argument("--user", default="root", help="move-send: its SSH user")
    args = parser.parse_args(argv)
    # A dropped ssh connection must not stop a restore halfway (see host.emit_json).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    plan = json.loads(PLAN.read_text())
    host = Host(plan, emit_json)
    try:
        if args.verb.startswith("move-"):
            result = move.run_verb(host, args.verb, args)
        elif args.verb.startswith("part-"):
            result = parts.run_verb(host, args.verb, args)
        elif args.verb == "backup":
            result = backup.backup(host)
        elif args.verb == "snapshots":
            result = backup.snapshots(host)
        elif args.verb == "restore":
            result = backup.restore(host, args.snapshot, args.service)
        elif args.verb == "installed":  # the schedule was (re)installed: start the clock once
            state = backup.read_state()
            state.setdefault("installed_at", time.time())
            backup.write_state(state)
            result = {"installed_at": state["installed_at"]}
        else:
            result = backup.status(host)
    except DataError as exc:
        emit_json({"event": "error", "message": str(exc)})
        return 1
    except Exception as exc:  # one line for the caller; the journal keeps the traceback
        import traceback

        traceback.print_exc()
        emit_json({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    emit_json({"event": "result", "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
