"""One run of the pipeline template, orchestrated by the stack's Airflow, against the same
step functions run one after another in this process's environment against the same stack.

Needs a deployed stack with the project's model served (see the project's README) and a
project made by ``mlox-iac new pipeline``; the profile or ``mlox-iac env`` exports of the
stack in the environment, and the SSH key for Postgres' tunnel (``MLOX_SSH_IDENTITY``):

- orchestrated: ``mlox-iac code push`` (timed; a no-op when the release is there already),
  then the DAG triggered and waited for; each task's own duration from Airflow's task
  instances, and the wall time from trigger to success;
- local: ``python -m <package>``'s step functions imported into one Python process (the
  project's requirements, e.g. the venv ``tests/pipeline/venvs.py`` builds), called in the
  DAG's order for the next day, each timed.

``--rounds`` (3) runs each way, on new days each time; each round's seconds per step go to
stderr as it ends. Prints one JSON line: the push, the medians, and the overhead ratio
(median orchestrated wall / median local wall; goal <= 2).

    .venv/bin/python benchmarks/pipeline.py --project PIPELINE_DIR --stack shared \\
        --python ~/.cache/mlox-iac-pipeline/project-<hash>/bin/python --identity KEY
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL = 2.0

LOCAL = r"""
import json, sys, time
from datetime import date
import mlox_client
from {package} import config, steps
day, cfg, out = date.fromisoformat(sys.argv[1]), config.load(), {{}}
started = time.perf_counter()
with mlox_client.connect() as stack:
    for step in steps.PIPELINE:
        t = time.perf_counter()
        step(stack, cfg, day)
        out[step.__name__] = round(time.perf_counter() - t, 2)
print(json.dumps({{"steps": out, "wall_s": round(time.perf_counter() - started, 2)}}))
"""


def _seconds(task: dict) -> float:
    start, end = (datetime.fromisoformat(task[k].replace("Z", "+00:00")) for k in ("start_date", "end_date"))
    return round((end - start).total_seconds(), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True, help="the pipeline project (mlox-iac new pipeline)")
    parser.add_argument("--stack", required=True)
    parser.add_argument("--python", default=sys.executable, help="a Python with the project's requirements")
    parser.add_argument("--identity", help="the stack's SSH key (code push; Postgres' tunnel)")
    parser.add_argument("--day", default="2026-09-01", help="the first orchestrated run's day; the local run takes the next")
    parser.add_argument("--rounds", type=int, default=3, help="runs each way; the ratio is of the medians")
    args = parser.parse_args()

    import yaml

    answers = yaml.safe_load((args.project / ".copier-answers.yml").read_text())
    package, dag = answers["package"], f"{answers['package']}_pipeline"
    identity = ["--identity", args.identity] if args.identity else []
    env = {**os.environ, **({"MLOX_SSH_IDENTITY": args.identity} if args.identity else {})}

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mlox_iac.cli.main", "code", "push", str(args.project), "--stack", args.stack,
                    *identity], check=True, env={**env, "PYTHONPATH": str(ROOT)})
    push_s = round(time.perf_counter() - started, 2)

    import mlox_client

    stack = mlox_client.connect()
    deadline = time.monotonic() + 600
    while True:  # a new release is parsed by the DAG processor within its refresh interval
        try:
            stack.airflow.api("GET", f"/dags/{dag}")
            break
        except mlox_client.RemoteError:
            if time.monotonic() > deadline:
                raise
            time.sleep(5)
    rounds = []
    for i in range(args.rounds):  # orchestrated on day D+2i, local on D+2i+1: each run on new data
        day = date.fromisoformat(args.day) + timedelta(days=2 * i)
        started = time.perf_counter()
        run_id = stack.airflow.trigger(dag, {"date": day.isoformat()})
        stack.airflow.wait(dag, run_id, timeout=3600, poll=2)
        orchestrated_wall = round(time.perf_counter() - started, 2)
        tasks = {t["task_id"]: _seconds(t) for t in stack.airflow.tasks(dag, run_id)}
        local_day = (day + timedelta(days=1)).isoformat()
        done = subprocess.run([args.python, "-c", LOCAL.format(package=package), local_day], capture_output=True,
                              text=True, env={**env, "PYTHONPATH": str(args.project / "src")}, check=True)
        local = json.loads(done.stdout.strip().splitlines()[-1])
        rounds.append({"orchestrated_wall_s": orchestrated_wall, "orchestrated_steps_s": tasks,
                       "orchestration_only_s": round(orchestrated_wall - sum(tasks.values()), 2),
                       "local_wall_s": local["wall_s"], "local_steps_s": local["steps"]})
        print(json.dumps({"round": i + 1, **rounds[-1]}), file=sys.stderr, flush=True)

    orchestrated = statistics.median(r["orchestrated_wall_s"] for r in rounds)
    local_wall = statistics.median(r["local_wall_s"] for r in rounds)
    ratio = round(orchestrated / local_wall, 2)
    print(json.dumps({"push_s": push_s, "rounds": len(rounds), "orchestrated_wall_s_median": orchestrated,
                      "local_wall_s_median": local_wall, "overhead": ratio, "goal": GOAL, "met": ratio <= GOAL,
                      "per_round": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
