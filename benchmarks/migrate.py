"""``mlox-iac migrate`` between two real hosts, as ratios measured in one run (needs root: it
boots Debian hosts with systemd-nspawn, like the e2e tests, with the same stack: MLflow runs,
a 1 GiB object, 1,000 small ones and volume files on host A, moved to host B).

Prints:
- copy throughput / raw ``tar | ssh`` between the same hosts          (goal >= 0.8)
  (bytes the bulk copy sent from A to B per second of its send step; the floor streams the
  same staged files from A to B with ``tar -c | ssh | tar -x`` and the same key)
- the whole bulk copy phase (stage + send + restore and verify on B) / the floor, for context
- downtime (freeze until the new server served) / (60 s + the final delta's copy time)  (goal <= 1)
  (before the freeze a new MLflow run and a 16 MiB object are written, so the final delta
  carries database rows, an artifact and an object, as when users kept working)

    sudo python benchmarks/migrate.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e import hosts, images  # noqa: E402
from tests.e2e import test_migrate as t  # noqa: E402

from mlox_iac.migrations import stack as migrate  # noqa: E402

PREFIX, FIRST_INDEX = "mlxbench", 101  # its own hosts (101, 102): it can run beside the e2e tests


def main() -> int:
    build = images.BackgroundBuild(t.NEEDED_IMAGES)
    with hosts.target_hosts(2, prefix=PREFIX, first_index=FIRST_INDEX) as (a, b), \
            tempfile.TemporaryDirectory() as work:
        d = t.MoveDeployment(a, b, Path(work))
        d.build = build
        d.up()
        d.wait_healthy()
        d.fetch_ca()
        t.seed(d)
        d.raw["target"] = {"onprem": {"host": b.address, "user": "root", "port": 22, "private_key": b.private_key,
                                      "memory_mb": 8192}}
        d.write_stack_file()
        hooks = t.Hooks(d)
        times: dict[str, list[float]] = {}
        floor: dict[str, float] = {}

        def timed(servers_for):
            """Each data verb's wall time (and the bytes each send moved)."""
            def factory(migration):
                real = servers_for(migration)

                class Timed:
                    def verb(self, role, name, args=()):
                        start = time.perf_counter()
                        result = real.verb(role, name, args)
                        times.setdefault(name, []).append(time.perf_counter() - start)
                        if name == "move-send":
                            times.setdefault("sent-bytes", []).append(result["bytes"])
                        return result

                    def __getattr__(self, attr):
                        return getattr(real, attr)

                return Timed()
            return factory

        def measure_floor():
            # The same staged bytes, A -> B, tar over ssh with the move's key, into scratch space.
            key = "/mnt/mlox-data/migrate/key/id_ed25519"
            start = time.perf_counter()
            a.ssh(f"tar -C /mnt/mlox-data/migrate/staging -cf - . | ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes "
                  f"-o StrictHostKeyChecking=no -o Compression=no root@{b.address} "
                  "'rm -rf /tmp/floor && mkdir /tmp/floor && tar -C /tmp/floor -xf - && rm -rf /tmp/floor'", timeout=3600)
            floor["seconds"] = time.perf_counter() - start
            floor["bytes"] = int(a.ssh("du -sb /mnt/mlox-data/migrate/staging | cut -f1").stdout.strip())

        def before_freeze():
            measure_floor()
            # Users kept working while the bulk copy ran: the final delta has a new MLflow run
            # (database rows and an artifact) and a new 16 MiB object to carry.
            import os
            import uuid

            t.lab.mlflow_client(d, "log", uuid.uuid4().hex[:8])
            t.lab.s3_client(d).put_object(Bucket=t.lab.USER_BUCKET, Key="late/object.bin", Body=os.urandom(16 << 20))

        hooks.before["move-freeze"] = before_freeze
        servers = timed(hooks)
        phase_start = time.perf_counter()
        record = migrate.run(t.STACK, "onprem", project_dir=d.project, engine=t.Engine(d), servers_for=servers,
                             say=lambda line: print(f"[migrate] {line}", file=sys.stderr))
        total = time.perf_counter() - phase_start
        bulk_bytes, delta_bytes = times["sent-bytes"][0], times["sent-bytes"][1]
        bulk_send_s, delta_send_s = times["move-send"][0], times["move-send"][1]
        raw = floor["bytes"] / floor["seconds"]
        copy_rate = bulk_bytes / bulk_send_s
        phase_rate = bulk_bytes / (times["move-stage"][0] + bulk_send_s + times["move-apply"][0])
        downtime_goal = 60 + delta_send_s
        print(f"raw tar|ssh A->B: {raw / 1e6:.1f} MB/s ({floor['bytes'] / 1e6:.0f} MB in {floor['seconds']:.1f}s)")
        print(f"bulk copy send: {copy_rate / 1e6:.1f} MB/s ({bulk_bytes / 1e6:.0f} MB in {bulk_send_s:.1f}s)")
        print(f"copy throughput / raw tar|ssh: {copy_rate / raw:.2f} (goal >= 0.8)")
        print(f"whole copy phase (stage+send+restore+verify) / raw: {phase_rate / raw:.2f} (context, no goal)")
        print(f"downtime: {record.downtime_s:.1f}s; final delta sent {delta_bytes / 1e6:.1f} MB in {delta_send_s:.1f}s")
        print(f"downtime / (60 s + final delta copy): {record.downtime_s / downtime_goal:.2f} (goal <= 1)")
        print(f"whole migration: {total:.0f}s")
        print("each data step (seconds; the second of stage, send and apply is the final delta, in the freeze):")
        for name, values in times.items():
            if name != "sent-bytes":
                print(f"  {name}: " + ", ".join(f"{v:.1f}" for v in values))
        ok = copy_rate / raw >= 0.8 and record.downtime_s <= downtime_goal
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
