"""``mlox-iac migrate --part objects --to external`` between two real hosts, as ratios measured
in one run (needs root: it boots Debian hosts with systemd-nspawn, like the e2e tests, with the
stack of ``tests/e2e/test_parts.py``: the core stack on host A with two MLflow runs, a 1 GiB
object and 1,000 small ones; host B is the provider, a SeaweedFS S3 gateway over TLS).

Prints:
- copy throughput / ``rclone copy`` of the same objects between the same endpoints  (goal >= 0.8)
  (bytes in the declared buckets per second of the move's bulk copy step, ``part-copy``; the
  floor is the same rclone image on A, on the stack's network, with the same keys, copying
  the same buckets from the server's SeaweedFS into new buckets of the provider with the
  move's parallelism, run just before the move)
- downtime (freeze until the services served again) / (30 s + the final delta's copy time)
  (goal <= 1); before the freeze a new MLflow run and a 16 MiB object are written, so the
  final delta carries an artifact and an object, as when users kept working
- each step's wall time, the engine's two updates included (and each resource they changed)
- then the databases move out the same way (a new MLflow run before the freeze): their
  downtime and steps, for context (the issue sets no goal for it)

    sudo .venv/bin/python benchmarks/migrate_part.py

Hosts mlxbpart 103 and 104 (no e2e module uses them).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e import hosts, images  # noqa: E402
from tests.e2e import test_parts as t  # noqa: E402

from mlox_iac.migrations import objects as objects_move  # noqa: E402
from mlox_iac.migrations import parts  # noqa: E402
from mlox_iac.migrations import postgres as postgres_move  # noqa: E402
from mlox_iac.migrations.stack import AutomationEngine  # noqa: E402

PREFIX, FIRST_INDEX = "mlxbpart", 103
FLOOR_PREFIX = "floor-"  # the floor's buckets at the provider, beside the move's (acme-*)
GOALS = {"copy_vs_rclone": 0.8, "downtime_s_plus_delta": 30.0}

# On A, in the data module's folder: the move's own rclone settings for both stores (keys from
# the stores' env files, the provider's CA), then `rclone copy` bucket by bucket.
FLOOR = """
import json, sys, time
from pathlib import Path
from mlox_data import objects, parts
from mlox_data.host import Host
host = Host(json.loads(Path("plan.json").read_text()), lambda event: None)
env, mounts = {}, []
for name, side in (("src", "local"), ("dst", "external")):
    side_env, side_mounts = objects.store_env(name, parts._store(host, side))
    env.update(side_env)
    mounts += [m for m in side_mounts if m not in mounts]
start = time.monotonic()
for bucket in parts._part(host, "objects")["buckets"]:
    objects.rclone(host, ["copy", f"src:{bucket}", f"dst:%s{bucket}", "--s3-disable-checksum",
                          "--checkers", "16", "--transfers", "8"], env, mounts)
print(json.dumps({"seconds": time.monotonic() - start}))
"""


class TimedEngine(AutomationEngine):
    """The move's engine, timing each update and, within it, each resource that changed."""

    def __init__(self, *args, times: dict, **kw):
        super().__init__(*args, **kw)
        self.times = times
        self.resources: list[dict[str, float]] = []

    def up(self, *args, **kw):
        start = time.perf_counter()
        began: dict[str, float] = {}
        took: dict[str, float] = {}

        def on_event(event) -> None:
            for kind in ("resource_pre_event", "res_outputs_event"):
                meta = getattr(getattr(event, kind, None), "metadata", None)
                if meta is None or meta.type.startswith(("mlox:", "pulumi:")):
                    continue
                name = meta.urn.rsplit("::", 1)[-1]
                if kind == "resource_pre_event":
                    began[name] = time.perf_counter()
                elif name in began:
                    took[name] = time.perf_counter() - began[name]

        self.on_event = on_event
        try:
            return super().up(*args, **kw)
        finally:
            self.times.setdefault("engine up", []).append(time.perf_counter() - start)
            self.resources.append({name: round(s, 1) for name, s in sorted(took.items(), key=lambda i: -i[1])
                                   if s >= 0.5})


def main() -> int:
    build = images.BackgroundBuild(t.NEEDED_IMAGES)
    with hosts.target_hosts(2, prefix=PREFIX, first_index=FIRST_INDEX) as (a, b), \
            tempfile.TemporaryDirectory() as work:
        provider = t.Provider(b)
        installing = threading.Thread(target=provider.install)
        installing.start()
        d = t.Deployment(a, Path(work), secret_keys=t.SECRET_KEYS)
        d.build = build
        d.image_names = tuple(t.NEEDED_IMAGES)
        d.bring_up()
        d.logged = t.seed(d)
        installing.join()
        d.raw.setdefault("services", {})["seaweedfs"] = {"external": provider.s3_settings()}
        d.write_stack_file()

        times: dict[str, list[float]] = {}
        floor: dict[str, float] = {}
        hooks = t.Hooks(d)  # the real parts.SshServer, as the e2e test builds it
        before: dict[str, list] = {}

        def servers(outputs):
            server = hooks(outputs)

            class Timed:
                def verb(self, verb, args=()):
                    pending = before.get(verb)
                    if pending:
                        pending.pop(0)()  # not timed
                    start = time.perf_counter()
                    try:
                        return server.verb(verb, args)
                    finally:
                        times.setdefault(verb, []).append(time.perf_counter() - start)

                def ping(self):
                    server.ping()

            return Timed()

        def measure_floor():  # after prepare (the provider's buckets exist, the plan names both stores)
            out = a.ssh("cd /opt/mlox/bundle/backup && python3 -", input=FLOOR % FLOOR_PREFIX, timeout=3600).stdout
            floor["seconds"] = json.loads(out.strip().splitlines()[-1])["seconds"]

        def users_kept_working():
            t.lab.mlflow_client(d, "log", uuid.uuid4().hex[:8])
            t.lab.s3_client(d).put_object(Bucket="data", Key="late/object.bin", Body=os.urandom(16 << 20))

        before["part-copy"] = [measure_floor]
        before["part-freeze"] = [users_kept_working]
        s3 = t.lab.s3_client(d)
        total_bytes = sum(o["Size"] for bucket in ("data", "mlflow-artifacts")
                          for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                          for o in page.get("Contents", []))
        lines: list[str] = []

        def say(line: str) -> None:
            lines.append(line)
            print(f"[parts] {line}", file=sys.stderr)

        started = time.perf_counter()
        engine = TimedEngine(t.STACK, d.project, times=times)
        with d.environment():
            record = parts.run(objects_move.KIND, t.STACK, "external", project_dir=d.project,
                               engine=engine, server_for=servers, say=say)
        whole = time.perf_counter() - started

        floor_rate = total_bytes / floor["seconds"]
        copy_s, delta_s = times["part-copy"][0], times["part-copy"][1]
        copy_rate = total_bytes / copy_s
        downtime_goal = GOALS["downtime_s_plus_delta"] + delta_s
        result = {
            "bytes": total_bytes, "floor_rclone_copy_s": round(floor["seconds"], 1),
            "move_copy_s": round(copy_s, 1), "copy_vs_rclone": round(copy_rate / floor_rate, 2),
            "downtime_s": round(record.downtime_s, 1), "final_delta_copy_s": round(delta_s, 1),
            "downtime_vs_goal": round(record.downtime_s / downtime_goal, 2), "whole_move_s": round(whole, 1),
            "steps_s": {name: [round(v, 1) for v in values] for name, values in times.items()},
            "engine_resources_s": engine.resources,
            "load": os.getloadavg(),
        }
        print(f"rclone copy A->B: {floor_rate / 1e6:.1f} MB/s ({total_bytes / 1e6:.0f} MB in {floor['seconds']:.1f}s)")
        print(f"move's bulk copy: {copy_rate / 1e6:.1f} MB/s ({copy_s:.1f}s)")
        print(f"copy throughput / rclone copy: {copy_rate / floor_rate:.2f} (goal >= {GOALS['copy_vs_rclone']})")
        print(f"downtime: {record.downtime_s:.1f}s; final delta copied in {delta_s:.1f}s")
        print(f"downtime / (30 s + final delta copy): {record.downtime_s / downtime_goal:.2f} (goal <= 1)")
        print(json.dumps(result), flush=True)
        # Then the databases, for context (no goal): the same phases, a dump in the freeze.
        with d.environment():
            parts.finish(objects_move.KIND, t.STACK, project_dir=d.project, engine=engine, say=say)
        t.sync_raw(d)  # what the move wrote into the stack file (in_use, part_move)
        d.raw["services"]["postgres"] = {"external": provider.postgres_settings()}
        d.write_stack_file()
        times.clear()
        before["part-freeze"] = [lambda: t.lab.mlflow_client(d, "log", uuid.uuid4().hex[:8])]
        pg_engine = TimedEngine(t.STACK, d.project, times=times)
        with d.environment():
            pg = parts.run(postgres_move.KIND, t.STACK, "external", project_dir=d.project,
                           engine=pg_engine, server_for=servers, say=say)
        result["postgres"] = {"downtime_s": round(pg.downtime_s, 1),
                              "steps_s": {name: [round(v, 1) for v in values] for name, values in times.items()},
                              "engine_resources_s": pg_engine.resources}
        print(f"postgres move downtime: {pg.downtime_s:.1f}s (context, no goal)")
        print(json.dumps(result))
        ok = copy_rate / floor_rate >= GOALS["copy_vs_rclone"] and record.downtime_s <= downtime_goal
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
