"""The data modules' pure parts, on this machine: manifests, diffs, swaps, errors, status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlox_iac.data import backup, postgres, volumes
from mlox_iac.data.host import DataError, Host, read_env_file


def make_host(tmp_path, **plan):
    env = tmp_path / "backup.env"
    env.write_text("RESTIC_REPOSITORY='s3:http://10.0.0.9:8333/b/x'\nRESTIC_PASSWORD='pw'\n")
    base = {"compose": ["docker", "compose"], "data_dir": str(tmp_path / "data"), "stack": "prod",
            "images": {"restic": "restic/restic:0.19.1", "rclone": "rclone/rclone:1.60.1"},
            "backup": {"env_file": str(env), "interval_s": 3600, "keep": {"daily": 7, "weekly": 4, "monthly": 6},
                       "check_read_data": 5, "check_every_s": 604800},
            "services": {}}
    base.update(plan)
    return Host(base)


def test_tree_manifest_hashes_files_and_caches_by_mtime(tmp_path):
    root = tmp_path / "vol"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.bin").write_bytes(b"hello")
    (root / "link").symlink_to("a/x.bin")
    cache = tmp_path / "cache.json"
    manifest = volumes.tree_manifest(root, cache)
    assert manifest == {"a/x.bin": {"size": 5, "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"},
                        "link": {"link": "a/x.bin"}}
    # A cached hash is reused only while size, mtime and inode are unchanged.
    entry = json.loads(cache.read_text())["a/x.bin"]
    entry[3] = "0" * 64
    cache.write_text(json.dumps({"a/x.bin": entry}))
    assert volumes.tree_manifest(root, cache)["a/x.bin"]["sha256"] == "0" * 64
    (root / "a" / "x.bin").write_bytes(b"hellO")
    assert volumes.tree_manifest(root, cache)["a/x.bin"]["sha256"] != "0" * 64


def test_diff_names_missing_extra_and_changed():
    expected = {"a": {"size": 1, "sha256": "x"}, "b": {"size": 1, "sha256": "y"}}
    actual = {"a": {"size": 1, "sha256": "z"}, "c": {"size": 1, "sha256": "y"}}
    assert volumes.diff(expected, actual) == [
        "a: differs ({'size': 1, 'sha256': 'x'} != {'size': 1, 'sha256': 'z'})", "b: missing", "c: not in the backup"]
    assert volumes.diff(expected, expected) == []


def test_volume_copy_check_and_swap_keeping_the_old_files(tmp_path):
    host = make_host(tmp_path)
    live = host.data_dir / "volumes" / "caddy-data"
    live.mkdir(parents=True)
    (live / "old.txt").write_text("old")
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "cert.pem").write_text("cert")
    manifest = volumes.tree_manifest(restored)
    bad = {"cert.pem": {"size": 4, "sha256": "0" * 64}}
    with pytest.raises(DataError, match="does not match the backup's manifest"):
        volumes.check_copy("caddy-data", restored, bad)
    volumes.check_copy("caddy-data", restored, manifest)
    assert volumes.restore(host, "caddy-data", restored, manifest) == {"files": 1, "bytes": 4}
    assert (live / "cert.pem").read_text() == "cert"
    assert (host.data_dir / "volumes" / ".caddy-data.before-restore" / "old.txt").read_text() == "old"


def test_postgres_manifest_parsing_and_diff():
    # Two sums a table (negative ones too: they are kept modulo 2^64), as 32 hex digits.
    out = "public.runs\t3\t-1\t18446744073709551617\npublic.metrics\t10\t0\t255\n"
    manifest = postgres._parse(out)
    assert manifest == {"public.runs": {"rows": 3, "sum": "ffffffffffffffff0000000000000001"},
                        "public.metrics": {"rows": 10, "sum": "000000000000000000000000000000ff"}}
    changed = {**manifest, "public.runs": {"rows": 2, "sum": "0" * 32}}
    assert postgres.diff(manifest, changed) == ["table public.runs: 2 rows (backup: 3)"]
    assert postgres.diff(manifest, {**manifest, "public.metrics": {"rows": 10, "sum": "1" * 32}}) == [
        "table public.metrics: content differs"]
    assert postgres.diff(manifest, {"public.runs": manifest["public.runs"]}) == ["table public.metrics: missing"]
    assert postgres.checksums_for(manifest) == postgres.checksums_for({}) == postgres.CHECKSUMS


def test_postgres_manifest_of_format_1_is_verified_the_old_way():
    """Backups written before format 2 (and old servers a migration copies from) hold ``md5``."""
    legacy = postgres._parse("public.runs\t3\tabc\n")
    assert legacy == {"public.runs": {"rows": 3, "md5": "abc"}}
    assert postgres.checksums_for(legacy) == postgres.LEGACY_CHECKSUMS


def test_env_files_are_read_as_written(tmp_path):
    path = tmp_path / "x.env"
    path.write_text("A='1'\nB='$2b$10$x'\n")
    assert read_env_file(path) == {"A": "1", "B": "$2b$10$x"}
    with pytest.raises(DataError, match="cannot read"):
        read_env_file(tmp_path / "missing.env")


@pytest.mark.parametrize("code, stderr, expected", [
    (12, "Fatal: wrong password or no key found\n", "the backup repository's password is wrong (s3:http://10.0.0.9:8333/b/x): "
     "restic says 'wrong password or no key found'; the password is the stack's backup_password output"),
    (10, "Fatal: repository does not exist\n", "there is no backup repository at s3:http://10.0.0.9:8333/b/x"),
    (1, "Fatal: unable to open config file: Stat: Get \"http://10.0.0.9:8333/b/\": dial tcp 10.0.0.9:8333: connect: connection refused\n",
     "the backup repository is unreachable (s3:http://10.0.0.9:8333/b/x): unable to open config file: Stat: Get "
     "\"http://10.0.0.9:8333/b/\": dial tcp 10.0.0.9:8333: connect: connection refused"),
    (1, "Fatal: something else\n", "restic check failed (exit 1): something else"),
])
def test_restic_errors_become_one_clear_line(tmp_path, code, stderr, expected):
    repo = backup.Repository(make_host(tmp_path))
    error = repo.error(subprocess.CompletedProcess([], code, "", stderr), "restic check")
    assert str(error) == expected


def test_status_judges_age_and_result_against_the_schedule(tmp_path, monkeypatch):
    monkeypatch.setattr(backup, "STATE_DIR", tmp_path / "state")
    host = make_host(tmp_path)
    now = time.time()
    backup.write_state({"installed_at": now - 100})
    assert backup.status(host)["ok"] is True  # freshly installed, nothing due yet
    backup.write_state({"installed_at": now - 3 * 3600})
    assert backup.status(host)["ok"] is False  # two intervals passed without a backup
    good = {"ok": True, "finished_at": now - 600, "started_at": now - 700}
    backup.write_state({"last": good, "last_ok": good})
    assert backup.status(host)["ok"] is True
    old = {**good, "finished_at": now - 3 * 3600}
    backup.write_state({"last": old, "last_ok": old})
    status = backup.status(host)
    assert status["ok"] is False and "3.0h old" in status["detail"]
    backup.write_state({"last": {"ok": False, "error": "the backup repository is unreachable (x): y"}, "last_ok": good})
    status = backup.status(host)
    assert status["ok"] is False and status["detail"] == "last backup failed: the backup repository is unreachable (x): y"


def test_restore_checks_every_copy_before_anything_stops(tmp_path):
    host = make_host(tmp_path)
    calls = []
    host.run = lambda argv, **kw: calls.append(list(argv))  # any command would be a change
    staging, copies = tmp_path / "staging", tmp_path / "copies"
    (staging / "objects" / "data").mkdir(parents=True)
    (staging / "objects" / "data" / "model.bin").write_bytes(b"weights")
    (copies / "caddy-data").mkdir(parents=True)
    (copies / "caddy-data" / "ca.crt").write_text("ca")
    good = {"data": volumes.tree_manifest(staging / "objects" / "data"),
            "caddy-data": volumes.tree_manifest(copies / "caddy-data")}
    changed = []
    for bucket, volume, what in ((good["data"], {"ca.crt": {"size": 2, "sha256": "0" * 64}}, "volume caddy-data"),
                                 ({"model.bin": {"size": 7, "sha256": "0" * 64}}, good["caddy-data"], "bucket data")):
        chosen = {"mlflow": {"databases": {}, "buckets": {"data": bucket}, "volumes": {"caddy-data": volume},
                             "writers": ["mlflow"]}}
        with pytest.raises(DataError, match=f"{what}: the restored copy does not match"):
            backup.restore_all(host, chosen, staging, copies, changing=lambda: changed.append(1))
    assert calls == [] and changed == []  # nothing stopped, nothing started, nothing changed


def test_restore_order_databases_and_copies_checked_while_serving_then_stop_swap_write_start(tmp_path, monkeypatch):
    host = make_host(tmp_path)
    log = []
    monkeypatch.setattr(backup.postgres, "restore_roles", lambda h, src: log.append("roles"))
    monkeypatch.setattr(backup.postgres, "prepare", lambda h, db, dump, m: log.append(f"prepare {db}"))
    monkeypatch.setattr(backup.postgres, "swap", lambda h, db, m: log.append(f"swap {db}") or {"tables": 1})
    monkeypatch.setattr(backup.objects, "check_copy", lambda b, path, m, cache: log.append(f"check {b}"))
    monkeypatch.setattr(backup.objects, "make_buckets", lambda h, bs: log.append(f"buckets {','.join(bs)}"))
    monkeypatch.setattr(backup.objects, "restore", lambda h, b, path, m, cache: log.append(f"write {b}") or {})
    monkeypatch.setattr(backup.volumes, "check_copy", lambda v, path, m: log.append(f"check {v}"))
    monkeypatch.setattr(backup.volumes, "restore", lambda h, v, path, m: log.append(f"swap {v}") or {})
    monkeypatch.setattr(host, "compose_stop", lambda writers: log.append("stop " + ",".join(writers)))
    monkeypatch.setattr(host, "compose_up", lambda *a, **k: log.append("start"))
    chosen = {"mlflow": {"databases": {"mlflow": {}}, "buckets": {"mlflow-artifacts": {}}, "volumes": {},
                         "writers": ["mlflow"]},
              "caddy": {"databases": {}, "buckets": {}, "volumes": {"caddy-data": {}}, "writers": ["caddy"]}}
    restored = backup.restore_all(host, chosen, tmp_path, tmp_path, changing=lambda: log.append("changing"))
    stop = log.index("changing")
    assert log[stop:] == ["changing", "stop caddy,mlflow", "swap mlflow", "write mlflow-artifacts", "swap caddy-data",
                          "start"]
    assert sorted(log[:stop]) == ["buckets mlflow-artifacts", "check caddy-data", "check mlflow-artifacts",
                                  "prepare mlflow", "roles"]
    assert log.index("check caddy-data") < log.index("buckets mlflow-artifacts")  # after every check
    assert log.index("roles") < log.index("prepare mlflow")
    assert [(r["kind"], r["name"]) for r in restored] == [("database", "mlflow"), ("bucket", "mlflow-artifacts"),
                                                          ("volume", "caddy-data")]

    # A dump that does not match its manifest: the live database untouched, nothing stopped.
    log.clear()

    def bad(h, db, dump, m):
        raise DataError("database mlflow: the restored copy does not match the backup: table x: 3 rows, not 4")

    monkeypatch.setattr(backup.postgres, "prepare", bad)
    with pytest.raises(DataError, match="the restored copy does not match"):
        backup.restore_all(host, chosen, tmp_path, tmp_path, changing=lambda: log.append("changing"))
    assert "changing" not in log and not any(step.startswith(("stop", "swap", "write", "start")) for step in log)


def test_a_restore_record_says_running_done_failed_or_cut_off(tmp_path, monkeypatch):
    monkeypatch.setattr(backup, "STATE_DIR", tmp_path / "state")
    host = make_host(tmp_path)
    now = time.time()
    good = {"ok": True, "finished_at": now - 600, "started_at": now - 700}
    backup.write_state({"last": good, "last_ok": good})
    assert backup.status(host)["restore"] is None
    base = {"snapshot": "4f2a91c0", "services": ["mlflow"], "started_at": now - 120, "boot_id": backup._boot_id()}
    cases = [
        ({**base, "pid": os.getpid(), "changed": True}, True, "a restore is running (snapshot 4f2a91c0, started 2 min ago)"),
        ({**base, "pid": 2 ** 22 + 1, "changed": True}, False, "the last restore (snapshot 4f2a91c0, started 2 min ago) "
         "was cut off (its process ended without a result: killed, or the server restarted); run mlox-iac restore again"),
        ({**base, "pid": os.getpid(), "boot_id": "another boot", "changed": True}, False, "was cut off"),
        ({**base, "changed": True, "ok": False, "error": "bucket data: differs after the restore: x"}, False,
         "the last restore (snapshot 4f2a91c0, started 2 min ago) failed: bucket data: differs after the restore: x; "
         "run mlox-iac restore again"),
        ({**base, "changed": False, "ok": False, "error": "volume v: the restored copy does not match"}, True,
         "the last restore (snapshot 4f2a91c0, started 2 min ago) changed nothing: it failed: volume v: the restored "
         "copy does not match"),
        ({**base, "pid": 2 ** 22 + 1, "changed": False}, True, "changed nothing: it was cut off"),
    ]
    for record, ok, said in cases:
        backup._write_restore_record(record)
        status = backup.status(host)
        assert status["ok"] is ok and said in status["detail"], (record, status)
        assert status["detail"].endswith("; ok")  # the backups' own verdict stays
    backup._write_restore_record({**base, "changed": True, "ok": True})
    assert backup.status(host)["ok"] is True and backup.status(host)["detail"] == "ok"
    assert backup.status(host)["restore"]["state"] == "done"


def test_the_server_side_goes_on_when_nobody_reads_its_progress(tmp_path):
    """mlox-iac's ssh connection dropped: the verb's stdout is a pipe with no reader."""
    script = ("import sys, time; sys.path.insert(0, sys.argv[1]); from mlox_iac.data.host import emit_json\n"
              "for i in range(3):\n"
              "    emit_json({'event': 'progress', 'message': 'x' * 100000})\n"
              "print('still printing', file=sys.stderr)\n"
              "open(sys.argv[2], 'w').write('finished')\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(Path(backup.__file__).parents[2]), str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first event
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    assert (tmp_path / "out").read_text() == "finished"


def test_one_run_at_a_time_and_the_next_waits_for_it(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(backup, "LOCK_FILE", str(tmp_path / "lock"))
    with backup.Lock("restore"):
        with pytest.raises(DataError, match="^another restore is running on this server$"):
            with backup.Lock("backup"):
                pass
    with backup.Lock("migration restore"):
        with pytest.raises(DataError, match=r"^another migration restore is running on this server \(waited 0 min\)$"):
            with backup.Lock("backup", wait_s=1.5):
                pass
    # A scheduled backup firing during a restore waits for it, and says so once.
    events, order = [], []
    host = make_host(tmp_path)
    host._emit = events.append
    held = threading.Event()

    def restore():
        with backup.Lock("restore"):
            held.set()
            time.sleep(2.5)
            order.append("restore done")

    first = threading.Thread(target=restore)
    first.start()
    held.wait(10)
    with backup.Lock("backup", host, wait_s=30):
        order.append("backup runs")
    first.join()
    assert order == ["restore done", "backup runs"]
    assert [e["message"] for e in events] == ["waiting for the restore running on this server"]


def test_an_unreachable_repository_fails_at_once(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    host = make_host(tmp_path)
    env = tmp_path / "backup.env"
    env.write_text(f"RESTIC_REPOSITORY='s3:http://127.0.0.1:{port}/b/x'\nRESTIC_PASSWORD='pw'\n")
    repo = backup.Repository(host)
    started = time.monotonic()
    with pytest.raises(DataError, match=rf"^the backup repository is unreachable \(s3:http://127.0.0.1:{port}/b/x\): "
                                        rf"127.0.0.1:{port}: Connection refused$"):
        repo.reachable(attempts=2)
    assert time.monotonic() - started < 60  # at once, not restic's 15 minutes of retries


FAKE_DOCKER = """#!/bin/sh
# A docker that runs restic's `cat config` the way restic 0.19 answers for a missing S3 bucket:
# it retries for minutes, printing one line per attempt. `docker rm -f` records the removal.
# (Like `docker rm -f` ending `docker run`, the removal ends the fake and its sleep, so the
# pipes it held close. Each sleep's pid is on file before its line is printed: the removal
# that line causes always finds it, however loaded the machine.)
if [ "$1" = rm ]; then echo "$@" >> "$LOG"; kill "$(cat "$PIDFILE")" "$(cat "$PIDFILE.sleep")"; exit 0; fi
echo $$ > "$PIDFILE"
case "$MODE" in
  missing) for i in 1 2 3 4 5 6 7 8 9 10; do
             sleep 300 & echo $! > "$PIDFILE.sleep"
             echo "Stat(<config/>) returned error, retrying after 850ms: Stat: The specified bucket does not exist" >&2
             wait; done; exit 1 ;;
  present) exit 0 ;;
  nokey) echo "Fatal: unable to open config file: Stat: file does not exist" >&2; exit 10 ;;
  denied) echo "Fatal: unable to open config file: Stat: Access Denied." >&2; exit 1 ;;
esac
"""


def probed_repository(tmp_path, monkeypatch, mode: str) -> backup.Repository:
    """A Repository whose `docker` is FAKE_DOCKER answering as ``mode`` (its removals logged to docker.log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("LOG", str(tmp_path / "docker.log"))
    monkeypatch.setenv("PIDFILE", str(tmp_path / "pid"))
    monkeypatch.setenv("MODE", mode)
    repo = backup.Repository(make_host(tmp_path))
    monkeypatch.setattr(repo, "reachable", lambda: None)
    return repo


@pytest.mark.parametrize("mode, expected", [("missing", False), ("present", True), ("nokey", False)])
def test_the_repository_probe_stops_at_a_missing_bucket(tmp_path, monkeypatch, mode, expected):
    repo = probed_repository(tmp_path, monkeypatch, mode)
    log = tmp_path / "docker.log"
    started = time.monotonic()
    assert repo.exists() is expected
    assert time.monotonic() - started < 60  # stopped at the first line, not after an attempt (300 s)
    if mode == "missing":
        assert log.read_text().startswith("rm -f mlox-restic-cat-")
        with pytest.raises(DataError, match=r"^there is no backup repository at s3:http://10.0.0.9:8333/b/x "):
            repo.open()


def test_the_repository_probe_reports_other_failures(tmp_path, monkeypatch):
    repo = probed_repository(tmp_path, monkeypatch, "denied")
    with pytest.raises(DataError, match=r"^opening the backup repository failed \(exit 1\): unable to open config "
                                        r"file: Stat: Access Denied\.$"):
        repo.exists()


def test_backup_metrics_for_the_alerts(tmp_path, monkeypatch):
    monkeypatch.setattr(backup, "METRICS_DIR", tmp_path / "metrics")
    good = {"ok": True, "started_at": 100.0, "finished_at": 160.5}
    backup.write_metrics({"last": good, "last_ok": good}, 86400)
    text = (tmp_path / "metrics" / "mlox_backup.prom").read_text()
    values = dict(line.split() for line in text.splitlines() if not line.startswith("#"))
    assert values == {"mlox_backup_last_status": "1", "mlox_backup_last_run_timestamp_seconds": "160.5",
                      "mlox_backup_last_success_timestamp_seconds": "160.5", "mlox_backup_interval_seconds": "86400"}
    assert "# TYPE mlox_backup_last_status gauge" in text
    backup.write_metrics({"last": {"ok": False, "finished_at": 200.0}}, 3600)  # never succeeded
    values = dict(line.split() for line in (tmp_path / "metrics" / "mlox_backup.prom").read_text().splitlines()
                  if not line.startswith("#"))
    assert values == {"mlox_backup_last_status": "0", "mlox_backup_last_run_timestamp_seconds": "200.0",
                      "mlox_backup_interval_seconds": "3600"}
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["mlox_backup.prom"]


class FakeBucket:
    """``objects._rclone`` for one bucket: lsjson and hashsum as rclone answers them; counts
    the objects each hashsum downloads."""

    def __init__(self):
        self.objects: dict[str, tuple[bytes, str]] = {}  # key -> (content, server modification time)
        self.downloaded: list[str] = []

    def put(self, key: str, body: bytes, when: str) -> None:
        self.objects[key] = (body, when)

    def __call__(self, host, args, mount=None, what=""):
        import hashlib

        if args[0] == "lsjson":
            assert "--use-server-modtime" in args
            listing = [{"Path": k, "Size": len(b), "ModTime": t, "Hashes": {"md5": hashlib.md5(b).hexdigest()}}
                       for k, (b, t) in self.objects.items()]
            return subprocess.CompletedProcess(args, 0, json.dumps(listing), "")
        assert args[:3] == ["hashsum", "sha256", "--download"]
        keys = list(self.objects)
        if "--files-from-raw" in args:
            keys = (mount / "keys").read_text().splitlines()
        self.downloaded += keys
        out = "".join(f"{hashlib.sha256(self.objects[k][0]).hexdigest()}  {k}\n" for k in keys)
        return subprocess.CompletedProcess(args, 0, out, "")


def test_live_object_hashes_are_reused_until_the_server_says_the_object_changed(tmp_path, monkeypatch):
    from mlox_iac.data import objects

    bucket = FakeBucket()
    monkeypatch.setattr(objects, "_rclone", bucket)
    host = make_host(tmp_path)
    cache = tmp_path / "cache" / "hashes-live-data.json"
    for i in range(3):
        bucket.put(f"k{i}", b"x" * i, "2026-12-04T10:00:00Z")
    first = objects.manifest_of(host, "data", cache)
    assert sorted(bucket.downloaded) == ["k0", "k1", "k2"] and first["k2"]["size"] == 2
    bucket.downloaded.clear()
    assert objects.manifest_of(host, "data", cache) == first and bucket.downloaded == []  # nothing read again
    bucket.put("k1", b"y", "2026-12-04T10:00:00Z")  # same size and time, other content (single-part MD5)
    bucket.put("k2", b"zz", "2026-12-04T10:05:00Z")  # rewritten: the server's time changed
    bucket.put("k3", b"new", "2026-12-04T10:05:00Z")
    second = objects.manifest_of(host, "data", cache)
    assert sorted(bucket.downloaded) == ["k1", "k2", "k3"]
    assert objects.verify(host, "data", first, cache) == [
        f"k1: differs ({first['k1']} != {second['k1']})", f"k2: differs ({first['k2']} != {second['k2']})",
        "k3: not in the backup"]
    bucket.downloaded.clear()
    objects.manifest_of(host, "data")  # without a cache: every object is read
    assert sorted(bucket.downloaded) == ["k0", "k1", "k2", "k3"]


@pytest.fixture
def backup_state(tmp_path, monkeypatch):
    """The backup's state, metrics and lock files in ``tmp_path``."""
    monkeypatch.setattr(backup, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(backup, "METRICS_DIR", tmp_path / "metrics")
    monkeypatch.setattr(backup, "LOCK_FILE", str(tmp_path / "lock"))


def test_an_unchanged_backup_forgets_every_run_and_prunes_on_the_deep_checks_cadence(tmp_path, monkeypatch, backup_state):
    host = make_host(tmp_path)
    ran: list[str] = []
    monkeypatch.setattr(backup.Repository, "ensure", lambda self: ran.append("probe") or False)
    monkeypatch.setattr(backup.Repository, "reachable", lambda self: None)
    monkeypatch.setattr(backup.Repository, "run", lambda self, args, *a, **kw: ran.append(" ".join(args)))
    monkeypatch.setattr(backup, "capture_all", lambda *a: {"services": {}})
    monkeypatch.setattr(backup, "_restic_backup", lambda *a: {"snapshot_id": "s1"})
    monkeypatch.setattr(backup.Repository, "watched", lambda self, args, *a, **kw: ran.append(" ".join(args)) or (0, "", False))
    backup.backup(host)
    assert ran.pop(0) == "probe"  # the first backup into a repository probes it; later ones do not
    assert [r.split(" ")[0] + (" deep" if "read-data" in r else "") for r in ran] == ["forget", "check", "check deep", "prune"]
    assert "--prune" not in ran[0] and ran[0].endswith("--tag mlox --keep-daily 7 --keep-weekly 4 --keep-monthly 6")
    ran.clear()
    backup.backup(host)  # the same week: no deep check, no prune
    assert [r.split(" ")[0] for r in ran] == ["forget", "check"]
    state = backup.read_state()
    state["prune_at"] -= 604800
    state["deep_check_at"] -= 604800
    backup.write_state(state)
    ran.clear()
    backup.backup(host)
    assert [r.split(" ")[0] for r in ran] == ["forget", "check", "check", "prune"]


def test_objects_are_read_back_through_the_filer_and_through_s3_where_the_filer_cannot_serve_them(tmp_path, monkeypatch):
    import hashlib
    import http.server
    import threading
    import urllib.parse

    from mlox_iac.data import objects

    bucket = FakeBucket()
    monkeypatch.setattr(objects, "_rclone", bucket)
    big = bytes(range(256)) * 20000  # 5 MB, read in several chunks
    for key, body in {"big.bin": big, "dir/é x.txt": b"hello", "gone.txt": b"s3 has it", "a//b": b"odd key",
                      "bad.bin": b"original"}.items():
        bucket.put(key, body, "2026-12-04T10:00:00Z")
    served = {"/buckets/data/big.bin": big, "/buckets/data/dir/é x.txt": b"hello", "/buckets/data/bad.bin": b"corrupt!"}
    asked: list[str] = []

    class Filer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = urllib.parse.unquote(self.path)
            asked.append(path)
            body = served.get(path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Filer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(objects, "_filer_url", lambda host: f"http://127.0.0.1:{server.server_port}/buckets")
        events = []
        host = make_host(tmp_path)
        host._emit = events.append
        manifest = objects.manifest_of(host, "data")
    finally:
        server.shutdown()
    assert sorted(asked) == ["/buckets/data/bad.bin", "/buckets/data/big.bin", "/buckets/data/dir/é x.txt",
                             "/buckets/data/gone.txt"]  # "a//b" is not a plain path: S3 only
    assert sorted(bucket.downloaded) == ["a//b", "gone.txt"]  # what the filer did not serve
    assert manifest["big.bin"] == {"size": len(big), "sha256": hashlib.sha256(big).hexdigest()}
    assert manifest["gone.txt"]["sha256"] == hashlib.sha256(b"s3 has it").hexdigest()
    assert manifest["bad.bin"]["sha256"] == hashlib.sha256(b"corrupt!").hexdigest()  # read back as stored: a diff
    assert any("2 object(s) through S3" in e["message"] for e in events)


def test_a_backup_probes_the_repository_unless_the_last_one_succeeded_there(tmp_path, monkeypatch, backup_state):
    """The probe (a restic run) is skipped where the last backup into the same repository
    succeeded; a repository found gone then is created anew and said so; a failed backup makes
    the next one probe again, before it copies anything."""
    events: list[dict] = []
    host = make_host(tmp_path)
    host._emit = events.append
    ran: list[str] = []
    answers: list = []  # what each restic backup does: a summary, or an exception to raise
    monkeypatch.setattr(backup.Repository, "ensure", lambda self: ran.append("probe") or False)
    monkeypatch.setattr(backup.Repository, "reachable", lambda self: ran.append("reachable"))
    monkeypatch.setattr(backup.Repository, "run", lambda self, args, *a, **kw: ran.append(args[0]))
    monkeypatch.setattr(backup, "capture_all", lambda *a: ran.append("capture") or {"services": {}})
    monkeypatch.setattr(backup, "_forget", lambda *a: None)

    def restic_backup(*a):
        ran.append("backup")
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(backup, "_restic_backup", restic_backup)
    answers[:] = [{"snapshot_id": "s1"}]
    backup.backup(host)
    assert ran[:3] == ["probe", "capture", "backup"]
    ran.clear()
    answers[:] = [{"snapshot_id": "s2"}]
    backup.backup(host)
    assert ran == ["reachable", "capture", "backup", "check"]
    # The repository vanished: restic backup says so, it is created again, the backup is retried.
    ran.clear()
    answers[:] = [backup.MissingRepository("gone"), {"snapshot_id": "s3"}]
    assert backup.backup(host)["snapshot"] == "s3"
    assert ran == ["reachable", "capture", "backup", "init", "backup", "check"]
    assert any("is gone" in e["message"] for e in events)
    # A failure (here: a wrong password) is recorded, and the next backup probes first.
    ran.clear()
    answers[:] = [DataError("the backup repository's password is wrong")]
    with pytest.raises(DataError, match="password is wrong"):
        backup.backup(host)
    assert backup.read_state()["last"]["ok"] is False
    ran.clear()
    answers[:] = [{"snapshot_id": "s4"}]
    backup.backup(host)
    assert ran[:3] == ["probe", "capture", "backup"]


def test_restic_backup_stops_at_a_missing_bucket(tmp_path, monkeypatch):
    repo = probed_repository(tmp_path, monkeypatch, "missing")
    started = time.monotonic()
    with pytest.raises(backup.MissingRepository):
        backup._restic_backup(repo.host, repo, [], [])
    assert time.monotonic() - started < 60  # stopped at the first line, not after an attempt (300 s)
    assert (tmp_path / "docker.log").read_text().startswith("rm -f mlox-restic-backup-")


class FakeContainers:
    """`docker compose ps`, `docker inspect`, `docker logs` and `docker exec` of a stack whose
    containers change from one look to the next as ``script`` says."""

    def __init__(self, script):
        self.script = script  # look number -> {service: (status, health, restarts)}
        self.looks = 0
        self.probes: list[str] = []
        self.passes_at: dict[str, int] = {}  # service -> its own check passes from this probe on

    def state(self):
        return self.script[min(self.looks, len(self.script)) - 1]

    def run(self, argv, **kw):
        argv = list(argv)
        if argv[:3] == ["docker", "compose", "ps"]:
            self.looks += 1
            return subprocess.CompletedProcess(argv, 0, "\n".join(f"id-{s}" for s in self.state()), "")
        if argv[:2] == ["docker", "inspect"]:
            out = []
            for cid in argv[2:]:
                service = cid[3:]
                status, health, restarts = self.state()[service]
                out.append({"Id": cid, "Name": f"/prod-{service}-1", "RestartCount": restarts,
                            "State": {"Status": status, "ExitCode": 0 if status == "running" else 1,
                                      **({"Health": {"Status": health}} if health else {})},
                            "Config": {"Labels": {"com.docker.compose.service": service},
                                       "Healthcheck": {"Test": ["CMD", "check", service]} if health else None}})
            return subprocess.CompletedProcess(argv, 0, json.dumps(out), "")
        if argv[:2] == ["docker", "logs"]:
            return subprocess.CompletedProcess(argv, 0, "", "starting\nFATAL: it broke\n")
        raise AssertionError(argv)

    def exec(self, argv, **kw):
        assert argv[:2] == ["docker", "exec"] and argv[3:5] == ["check", argv[2][3:]], argv
        service = argv[2][3:]
        self.probes.append(service)
        passing = self.probes.count(service) >= self.passes_at.get(service, 10**9)
        return subprocess.CompletedProcess(argv, 0 if passing else 1, b"", b"")


@pytest.fixture
def containers(monkeypatch):
    def install(script):
        fake = FakeContainers(script)
        monkeypatch.setattr(Host, "run", fake.run)
        monkeypatch.setattr(subprocess, "run", fake.exec)
        monkeypatch.setattr(time, "sleep", lambda s: None)
        return fake
    return install


def test_a_starting_service_is_ready_when_its_own_healthcheck_passes(tmp_path, containers):
    fake = containers([{"postgres": ("running", "healthy", 0), "mlflow": ("running", "starting", 0),
                        "caddy": ("running", None, 0)}])
    fake.passes_at["mlflow"] = 3
    make_host(tmp_path).wait_ready()
    assert fake.probes == ["mlflow", "mlflow", "mlflow"]  # only the starting one, until it passed
    assert fake.looks == 3


@pytest.mark.parametrize("after, expected", [
    (("exited", None, 0), r"^service mlflow did not stay up \(exited, exit code 1\): FATAL: it broke$"),
    (("running", "starting", 1), r"^service mlflow did not stay up \(running, exit code 0\): FATAL: it broke$"),
    (("running", "unhealthy", 0), r"^service mlflow is unhealthy$"),
])
def test_a_service_that_fails_while_starting_is_named_at_once(tmp_path, containers, after, expected):
    containers([{"mlflow": ("running", "starting", 0)}, {"mlflow": after}])
    with pytest.raises(DataError, match=expected):
        make_host(tmp_path).wait_ready(["mlflow"])


def test_a_service_that_never_becomes_healthy_times_out_by_name(tmp_path, containers, monkeypatch):
    fake = containers([{"mlflow": ("running", "starting", 0), "postgres": ("running", "healthy", 0)}])
    clock = iter(range(0, 10_000, 100))
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    with pytest.raises(DataError, match=r"^mlflow did not become healthy within 600 s$"):
        make_host(tmp_path).wait_ready()
    assert set(fake.probes) == {"mlflow"}


@pytest.mark.parametrize("mode, fails", [("missing", False), ("nokey", False), ("present", False), ("denied", True)])
def test_forget_leaves_a_missing_repository_to_the_backup_and_fails_on_the_rest(tmp_path, monkeypatch, mode, fails):
    repo = probed_repository(tmp_path, monkeypatch, mode)
    started = time.monotonic()
    if fails:
        with pytest.raises(DataError, match=r"^restic forget failed \(exit 1\): unable to open config file"):
            backup._forget(repo.host, repo)
    else:
        backup._forget(repo.host, repo)
    assert time.monotonic() - started < 60  # stopped at the first line, not after an attempt (300 s)


def test_forget_passes_every_period_the_stack_keeps_and_only_those(tmp_path, monkeypatch):
    host = make_host(tmp_path)
    host.plan["backup"]["keep"] = {"last": 3, "hourly": 24, "daily": 0, "weekly": 4, "monthly": 0}
    ran: list[list[str]] = []
    monkeypatch.setattr(backup.Repository, "watched", lambda self, args, *a, **kw: ran.append(args) or (0, "", False))
    backup._forget(host, backup.Repository(host))
    assert ran == [["forget", "--host", host.plan["stack"], "--tag", "mlox",
                    "--keep-last", "3", "--keep-hourly", "24", "--keep-weekly", "4"]]


def test_a_failed_forget_fails_the_backup_after_the_copy(tmp_path, monkeypatch, backup_state):
    host = make_host(tmp_path)
    ran: list[str] = []
    monkeypatch.setattr(backup.Repository, "ensure", lambda self: False)

    def forget(*a):
        time.sleep(0.2)  # still running when the copy ends: the backup waits for it
        ran.append("forget")
        raise DataError("restic forget failed (exit 1): no space left")

    monkeypatch.setattr(backup, "_forget", forget)
    monkeypatch.setattr(backup, "capture_all", lambda *a: ran.append("capture") or {"services": {}})
    monkeypatch.setattr(backup, "_restic_backup", lambda *a: ran.append("backup") or {"snapshot_id": "s1"})
    with pytest.raises(DataError, match="no space left"):
        backup.backup(host)
    assert ran == ["capture", "forget"]
    assert backup.read_state()["last"] == {**backup.read_state()["last"], "ok": False,
                                           "error": "restic forget failed (exit 1): no space left"}
