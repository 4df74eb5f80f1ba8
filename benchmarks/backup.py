"""Backup and restore on real hosts, as ratios measured in one run (needs root: it boots
Debian hosts with systemd-nspawn, like the e2e tests, with the same lab: the stack on host A
backing up to an S3 object store on host B, with MLflow runs, 1,000 small objects, volume
files and one big object: 1 GiB by default, ``--big-mb`` to change it).

Prints:
- unchanged second backup time / first backup time          (goal <= 0.1)
- repository growth on the second backup / data backed up    (goal <= 0.02)
- restore throughput / raw ``tar | ssh`` of the same data between the same hosts  (goal >= 0.5)

and, for each run, where its time went (seconds per phase, from the server's progress).

The restore is a real one: every object of the user bucket is deleted first, so the restore
writes them all back. Its throughput is the bytes restored over the restore's wall time,
which includes what a restore must do besides moving bytes: stopping and starting the
writers, restoring into scratch space, checking the copy against the snapshot's manifest,
and reading every object back to verify its SHA-256 once it is in the store. The floor: the
same bytes (the staged objects and the kept volume's files) streamed between hosts A and B
with ``tar -c | ssh | tar -x``.

    sudo .venv/bin/python benchmarks/backup.py [--big-mb 1024]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e import backup_lab as lab, hosts  # noqa: E402

GOALS = {"second/first time": ("<=", 0.1), "growth/data": ("<=", 0.02), "restore/tar|ssh throughput": (">=", 0.5)}


def timed_json(d, *args):
    """Run ``mlox-iac ARGS --json`` against the lab; return its result, its wall time, the
    seconds each of its phases took (from its progress lines on stderr, as they arrive; a
    phase that runs beside another is counted where its lines fall) and the seconds from each
    phase's first line to the end (a restore's ``stop``: how long its writers were down)."""
    argv, env = lab.mlox_command(d, *args)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=d.work, env=env)
    phases: dict[str, float] = {}
    firsts: dict[str, float] = {}
    current, since = "connecting", start  # until the server's first progress line
    assert proc.stderr is not None
    for line in proc.stderr:
        match = re.match(r"\s*\[(\w[\w-]*)\]\s*(.*)", line)
        if match:
            now = time.perf_counter()
            firsts.setdefault(match.group(1), now)
            phases[current] = phases.get(current, 0.0) + now - since
            # "[objects] bucket data: writing 1001 objects into the store" -> "objects: writing"
            step = match.group(2).rsplit(": ", 1)[1].split(" ")[0] if ": " in match.group(2) else ""
            current, since = f"{match.group(1)}: {step}" if step else match.group(1), now
    stdout = proc.stdout.read() if proc.stdout else ""
    code = proc.wait()
    end = time.perf_counter()
    phases[current] = phases.get(current, 0.0) + end - since  # the last phase runs until the command ends
    elapsed = end - start
    if code != 0:
        raise SystemExit(f"mlox-iac {' '.join(args)} failed (exit {code})")
    return json.loads(stdout), elapsed, phases, {phase: end - at for phase, at in firsts.items()}


def show_phases(name: str, phases: dict[str, float]) -> None:
    print(f"  {name}: " + ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in phases.items() if seconds >= 0.05))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big-mb", type=int, default=1024, help="size of the big object in MiB (default 1024)")
    options = parser.parse_args()
    lab.build_images()
    with hosts.target_hosts(2, prefix=lab.PREFIX, first_index=lab.FIRST_INDEX + 2) as (a, b), \
            tempfile.TemporaryDirectory() as work:
        store = lab.ObjectStore(b)
        store.install()
        d = lab.BackupDeployment(a, Path(work), store)
        d.deploy()
        lab.seed(d, big_mb=options.big_mb)
        first, first_s, first_phases, _ = timed_json(d, "backup", "--json")
        before = store.repository_bytes()
        second, second_s, second_phases, _ = timed_json(d, "backup", "--json")
        growth = store.repository_bytes() - before
        # A real restore: the user bucket's objects are gone and must come back.
        s3 = lab.s3_client(d)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=lab.USER_BUCKET):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=lab.USER_BUCKET, Delete={"Objects": keys})
        restored, restore_s, restore_phases, restore_tails = timed_json(d, "restore", "--yes", "--json")
        restored_bytes = sum(item.get("bytes", 0) for item in restored["restored"])
        # The floor: the same bytes (staged objects and kept volume files), tar over ssh
        # between the same two hosts, through the same network path.
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
        print(f"restore: writers stopped for the last {restore_tails.get('stop', 0):.1f}s of {restore_s:.1f}s "
              "(before that, everything downloaded was checked while the stack served)")
        print("where the time went (seconds per phase):")
        show_phases("first backup", first_phases)
        show_phases("second backup", second_phases)
        show_phases("restore", restore_phases)
        failed = False
        for name, value in ratios.items():
            op, goal = GOALS[name]
            ok = value <= goal if op == "<=" else value >= goal
            failed |= not ok
            print(f"{name}: {value:.3f} (goal {op} {goal}) {'ok' if ok else 'MISSED'}")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
