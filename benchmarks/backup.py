"""Backup and restore on real hosts, as ratios measured in one run (needs root: it boots
Debian hosts with systemd-nspawn, like the e2e tests, with the same lab: the stack on host A
backing up to an S3 object store on host B, with a 200 MB object, 1,000 small ones, MLflow
runs and volume files).

Prints:
- unchanged second backup time / first backup time          (goal <= 0.1)
- repository growth on the second backup / data backed up    (goal <= 0.02)
- restore throughput / raw ``tar | ssh`` of the same data between the same hosts  (goal >= 0.5)

The floor for the last ratio: the same bytes (the staged objects and the kept volume's files)
streamed between hosts A and B with ``tar -c | ssh | tar -x``. The restore's time includes
what a restore must do besides moving bytes: stopping and starting the writers, restoring
into scratch space, and re-reading every object to verify its SHA-256.

    sudo python benchmarks/backup.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e import backup_lab as lab, hosts  # noqa: E402

GOALS = {"second/first time": ("<=", 0.1), "growth/data": ("<=", 0.02), "restore/tar|ssh throughput": (">=", 0.5)}


def timed_json(d, *args):
    start = time.perf_counter()
    done = lab.mlox(d, *args)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"mlox-iac {' '.join(args)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout), elapsed


def main() -> int:
    lab.build_images()
    with hosts.target_hosts(2, prefix=lab.PREFIX, first_index=lab.FIRST_INDEX + 2) as (a, b), \
            tempfile.TemporaryDirectory() as work:
        store = lab.ObjectStore(b)
        store.install()
        d = lab.BackupDeployment(a, Path(work), store)
        d.deploy()
        lab.seed(d)
        first, first_s = timed_json(d, "backup", "--json")
        before = store.repository_bytes()
        second, second_s = timed_json(d, "backup", "--json")
        growth = store.repository_bytes() - before
        restored, restore_s = timed_json(d, "restore", "--yes", "--json")
        restored_bytes = sum(item.get("bytes", 0) for item in restored["restored"])
        # The floor: the same bytes (staged objects and kept volume files), tar over ssh
        # between the same two hosts, through the same network path.
        import subprocess

        size = int(d.host.ssh("du -sb --apparent-size /mnt/mlox-data/backup/staging/objects "
                              "/mnt/mlox-data/volumes/caddy-data | awk '{s+=$1} END {print s}'").stdout)
        start = time.perf_counter()
        sender = subprocess.Popen([*a.ssh_argv(), "tar -C /mnt/mlox-data -c backup/staging/objects volumes/caddy-data"],
                                  stdout=subprocess.PIPE)
        subprocess.run([*b.ssh_argv(), "mkdir -p /tmp/raw-in && tar -C /tmp/raw-in -x"], stdin=sender.stdout, check=True)
        sender.wait()
        raw_s = time.perf_counter() - start
        ratios = {
            "second/first time": second_s / first_s,
            "growth/data": growth / second["total_bytes"],
            "restore/tar|ssh throughput": (restored_bytes / restore_s) / (size / raw_s),
        }
        print(f"first backup {first_s:.1f}s ({first['total_bytes'] / 1e6:.0f} MB), unchanged second {second_s:.1f}s; "
              f"repository +{growth / 1e6:.2f} MB; restore {restored_bytes / 1e6:.0f} MB in {restore_s:.1f}s; "
              f"tar|ssh {size / 1e6:.0f} MB in {raw_s:.1f}s")
        failed = False
        for name, value in ratios.items():
            op, goal = GOALS[name]
            ok = value <= goal if op == "<=" else value >= goal
            failed |= not ok
            print(f"{name}: {value:.3f} (goal {op} {goal}) {'ok' if ok else 'MISSED'}")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
