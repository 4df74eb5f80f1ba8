"""``python -m <package> STEP [--date DAY] [--conf JSON]``: one step against the stack.

The DAGs pass the day and the run's conf in ``PIPELINE_DATE`` and ``PIPELINE_CONF``. The
stack is what ``mlox_client.connect()`` finds (inside the stack: its own settings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date, datetime, timezone

from . import config, steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=__package__, description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(steps.STEPS))
    parser.add_argument("--date", default=os.environ.get("PIPELINE_DATE") or datetime.now(timezone.utc).date().isoformat())
    parser.add_argument("--conf", default=os.environ.get("PIPELINE_CONF") or "{}",
                        help="JSON object overriding pipeline.yaml for this run")
    parser.add_argument("--stack", default=None, help="the stack (default: what mlox_client.connect() finds)")
    args = parser.parse_args(argv)
    conf = json.loads(args.conf) or {}
    day = date.fromisoformat(str(conf.pop("date", None) or args.date))
    cfg = config.load(conf)

    import mlox_client

    started = time.perf_counter()
    with mlox_client.connect(args.stack) as stack:
        result = steps.STEPS[args.step](stack, cfg, day)
    print(json.dumps({"step": args.step, "date": day.isoformat(), "seconds": round(time.perf_counter() - started, 2),
                      **result}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
