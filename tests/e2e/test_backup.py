"""End to end: backups to an S3 repository on a second host, restores, failures, schedule.

Host A (10.77.51.2) runs the stack with ``mlox:backup`` pointing at host B (10.77.52.2),
whose SeaweedFS stands in for the provider's object storage; host C (10.77.53.2) stays
bare until the "server lost" test deploys the same stack (same secrets) there. The tests
run in file order and build on each other (one deployment, one repository).
Everything is checked from outside with the real clients: the mlox-iac CLI over SSH, the
MLflow client and boto3 through the proxy, psql and sha256sum on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

try:
    from . import backup_lab as lab
    from . import hosts, images
    from .stack import timed
except ImportError:  # pragma: no cover
    import backup_lab as lab  # type: ignore[no-redef]
    import hosts  # type: ignore[no-redef]
    import images  # type: ignore[no-redef]
    from stack import timed  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e


def _json(done) -> object:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-3000:]}"
    return json.loads(done.stdout)


def _one_line_error(done) -> str:
    """The one error line (progress lines before it are fine), never a traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, done.stderr
    assert done.stderr.rstrip().endswith(errors[0]), done.stderr
    return errors[0]


@pytest.fixture(scope="module")
def lab_hosts():
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root: they boot Debian hosts with systemd-nspawn")
    build = images.BackgroundBuild(lab.LAB_IMAGES)  # images build on the CI machine while the hosts boot
    with hosts.target_hosts(3, prefix=lab.PREFIX, first_index=lab.FIRST_INDEX) as (a, b, c):
        build.wait()
        yield a, b, c


@pytest.fixture(scope="module")
def stack(lab_hosts, tmp_path_factory):
    a, b, c = lab_hosts
    start = time.monotonic()
    store = lab.ObjectStore(b)
    store.install()
    d = lab.BackupDeployment(a, tmp_path_factory.mktemp("backup-a"), store)
    d.deploy()
    d.seeded = lab.seed(d)
    d.spare = c
    timed("backup: lab ready", time.monotonic() - start)
    return d


def test_1_backup_holds_every_service_and_no_secret_leaks(stack):
    d = stack
    d.before = lab.fingerprint(d)
    assert len(d.before["objects"]) >= lab.SMALL_OBJECTS + 1 + 2  # 1,000 small, the big one, the artifacts
    assert any(name.endswith(lab.VOLUME_MARKER) for name in d.before["files"])
    start = time.monotonic()
    done = lab.mlox(d, "backup", "--json")
    d.first_backup_s = time.monotonic() - start
    timed("backup: first backup", d.first_backup_s)
    result = _json(done)
    assert result["ok"] is True and result["check"].startswith("ok")
    assert result["services"] == ["caddy", "mlflow", "postgres", "seaweedfs"]
    assert result["total_bytes"] > lab.BIG_OBJECT_MB * 1_000_000
    assert "[upload]" in done.stderr and "[dump] database mlflow" in done.stderr  # progress on stderr
    d.first = result

    listed = _json(lab.mlox(d, "backups", "--json"))
    assert [s["full_id"] for s in listed] == [result["snapshot"]]
    assert listed[0]["services"] == ["caddy", "mlflow", "postgres", "seaweedfs"] and listed[0]["check"].startswith("ok")
    assert listed[0]["size"] == result["total_bytes"]

    # The repository password exists only in state (here: the password store), the 0600 env file
    # and the repository's key: not in the bundle, not in a unit, not in any process list.
    password = d.outputs["backup_password"]
    assert len(password) == 48
    assert d.host.ssh(f"grep -rl {password} /opt/mlox/bundle /etc/systemd/system || echo none").stdout.strip() == "none"
    assert d.host.ssh("stat -c '%a %U' /opt/mlox/secrets/backup.env").stdout.strip() == "600 root"
    masked = lab.mlox(d, "outputs", "--json")
    assert json.loads(masked.stdout)["backup_password"] == "[secret]"
    shown = _json(lab.mlox(d, "outputs", "--json", "--show-secrets"))
    assert shown["backup_password"] == password

    status = lab.mlox(d, "status", "--json")
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert status.returncode == 0, status.stdout + status.stderr
    assert rows["backup"]["up"] is True and rows["backup"]["age_s"] < 600
    # What the BackupFailed/BackupStale alerts read (node-exporter's textfile collector).
    assert "mlox_backup_last_status 1\n" in d.host.ssh("cat /opt/mlox/metrics/mlox_backup.prom").stdout


def test_2_unchanged_second_backup_adds_almost_nothing(stack):
    d = stack
    before = d.store.repository_bytes()
    start = time.monotonic()
    second = _json(lab.mlox(d, "backup", "--json"))
    seconds = time.monotonic() - start
    growth = d.store.repository_bytes() - before
    timed(f"backup: unchanged second backup (added {second['data_added']} B, repository +{growth} B)", seconds)
    assert second["snapshot"] != d.first["snapshot"]
    assert second["data_added"] <= 0.02 * second["total_bytes"], second
    assert growth <= 0.02 * second["total_bytes"], (growth, second["total_bytes"])


def test_3_disaster_everything_comes_back(stack):
    d = stack
    from tests.e2e.test_deploy import COMPOSE

    d.host.ssh(f"{COMPOSE} exec -T postgres psql -U postgres -v ON_ERROR_STOP=1 -c 'DROP DATABASE mlflow WITH (FORCE)'")
    s3 = lab.s3_client(d)
    for bucket in (lab.USER_BUCKET, "mlflow-artifacts"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    for volume in lab.kept_volumes(d):
        d.host.ssh(f"find /mnt/mlox-data/volumes/{volume} -mindepth 1 -delete")

    start = time.monotonic()
    done = lab.mlox(d, "restore", "--yes", "--json")
    timed("backup: full restore", time.monotonic() - start)
    result = _json(done)
    assert result["verified"] is True
    # Every object was read back, through the filer (the S3 fallback names itself).
    assert "reading the objects back to verify them" in done.stderr
    assert "through S3" not in done.stderr, done.stderr[-2000:]
    kinds = {(item["kind"], item["name"]) for item in result["restored"]}
    assert kinds == {("database", "mlflow"), ("database", "data"), ("bucket", "mlflow-artifacts"),
                     ("bucket", lab.USER_BUCKET), ("volume", "caddy-data")}
    assert d.wait_healthy()["mlflow"]["Health"] == "healthy"
    after = lab.fingerprint(d)
    assert after["tables"] == d.before["tables"]
    assert after["objects"] == d.before["objects"]
    assert after["files"] == d.before["files"]
    for run in d.seeded["runs"]:
        assert lab.mlflow_client(d, "check", run["run_id"], run["marker"]) == "ok"


def _server_status(d) -> dict:
    """The backup tooling's own status verb on the server (what ``mlox-iac status`` reads)."""
    out = d.host.ssh("cd /opt/mlox/bundle/backup && python3 -m mlox_data status").stdout
    return next(json.loads(line)["result"] for line in out.splitlines() if '"result"' in line)


def test_3b_a_restore_whose_caller_is_interrupted_finishes_on_the_server(stack):
    """The user presses Ctrl-C (or the laptop's connection drops) while objects are written:
    the restore must not stop halfway with the stack stopped; it runs to its end, verified."""
    d = stack
    s3 = lab.s3_client(d)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=lab.USER_BUCKET):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=lab.USER_BUCKET, Key=obj["Key"])
    argv, env = lab.mlox_command(d, "restore", "--yes")
    # A terminal's Ctrl-C: SIGINT to the CLI and its ssh, at their default disposition (a
    # pytest-xdist worker ignores SIGINT, and an ignored signal stays ignored across exec).
    proc = subprocess.Popen(argv, cwd=d.work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        for line in proc.stderr:  # type: ignore[union-attr]
            seen.append(line)
            if f"bucket {lab.USER_BUCKET}: writing" in line:
                break
        else:
            raise AssertionError("the restore never reached the object writes: " + "".join(seen[-20:]))
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the CLI and its ssh alike
        rest = proc.stderr.read()  # type: ignore[union-attr]
        assert proc.wait(timeout=60) == 130, rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in rest, rest
    assert "the restore goes on on the server by itself: mlox-iac status shows how it ended" in rest, rest
    assert _server_status(d)["restore"]["state"] == "running"

    deadline = time.monotonic() + 600
    while (state := _server_status(d))["restore"]["state"] == "running":
        assert time.monotonic() < deadline, "the restore did not finish on the server"
        time.sleep(2)
    assert state["restore"]["state"] == "done" and state["restore"]["changed"], state["restore"]
    status = lab.mlox(d, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr[-2000:]
    assert d.wait_healthy()["mlflow"]["Health"] == "healthy"
    after = lab.fingerprint(d)
    assert (after["tables"], after["objects"], after["files"]) == (d.before["tables"], d.before["objects"], d.before["files"])


_BAD_DUMPS = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, "/opt/mlox/bundle/backup")
from mlox_data import postgres
from mlox_data.host import DataError, Host
host = Host(json.loads(Path("/opt/mlox/bundle/backup/plan.json").read_text()))
dump = Path("/mnt/mlox-data/backup/e2e-bad.dump")
manifest = postgres.capture(host, "mlflow", dump)
table = sorted(manifest)[0]
out = {"tables": len(manifest)}
cases = {"mismatch": {**manifest, table: {**manifest[table], "rows": manifest[table]["rows"] + 1}}, "truncated": manifest}
for case, expected in cases.items():
    if case == "truncated":
        os.truncate(dump, dump.stat().st_size // 2)
    try:
        postgres.prepare(host, "mlflow", dump, expected)
        out[case] = None
    except DataError as exc:
        out[case] = str(exc)
    out[case + "_live"] = postgres.verify(host, "mlflow", manifest)
dump.unlink()
print(json.dumps(out))
"""


def test_3c_a_dump_that_fails_to_restore_or_verify_leaves_the_live_database_alone(stack):
    """The database half of a restore, on the real Postgres, with a dump that does not match
    its manifest and one cut in half: each fails with its reason while the live database
    (checked table by table) and MLflow go on as they were."""
    d = stack
    result = json.loads(d.host.ssh("python3 -", input=_BAD_DUMPS).stdout.strip().splitlines()[-1])
    assert result["tables"] > 10, result
    assert result["mismatch"] and "the restored copy does not match the backup" in result["mismatch"], result
    assert "the live database is untouched" in result["mismatch"], result
    assert result["truncated"] and "pg_restore of mlflow" in result["truncated"], result
    assert result["mismatch_live"] == [] and result["truncated_live"] == [], result
    assert lab.fingerprint(d)["tables"] == d.before["tables"]
    for run in d.seeded["runs"]:
        assert lab.mlflow_client(d, "check", run["run_id"], run["marker"]) == "ok"


def test_4_failures_are_loud(stack):
    d = stack
    d.store.stop()
    try:
        failed = lab.mlox(d, "backup", "--json", timeout=900)
        assert failed.returncode == 1
        line = _one_line_error(failed)
        assert line.startswith("error: ") and "unreachable" in line, line
        status = lab.mlox(d, "status", "--json")
        assert status.returncode == 1
        row = {r["name"]: r for r in json.loads(status.stdout)}["backup"]
        assert row["up"] is False and "last backup failed" in row["detail"], row
        assert "mlox_backup_last_status 0\n" in d.host.ssh("cat /opt/mlox/metrics/mlox_backup.prom").stdout
    finally:
        d.store.start()

    env_file = "/opt/mlox/secrets/backup.env"
    original = d.host.ssh(f"cat {env_file}").stdout
    d.host.ssh(f"sed -i \"s/^RESTIC_PASSWORD=.*/RESTIC_PASSWORD='not-the-password'/\" {env_file}")
    try:
        wrong = lab.mlox(d, "backups")
        assert wrong.returncode == 1
        line = _one_line_error(wrong)
        assert "password is wrong" in line and "not-the-password" not in line, line
    finally:
        d.host.put_file(env_file, original, mode="0600")
    assert _json(lab.mlox(d, "backup", "--json"))["ok"] is True
    assert lab.mlox(d, "status", "--json").returncode == 0


def test_5_the_schedule_backs_up_by_itself(stack):
    d = stack
    d.raw["backup"]["schedule"] = "1m"
    d.up()
    assert "*:0/1" in d.host.ssh("systemctl cat mlox-backup.timer").stdout
    since = time.time()
    deadline = time.monotonic() + 240
    state: dict = {}
    while time.monotonic() < deadline:
        state = json.loads(d.host.ssh("cat /var/lib/mlox-backup/status.json").stdout)
        if state.get("last", {}).get("started_at", 0) > since and state["last"].get("finished_at"):
            break
        time.sleep(5)
    assert state["last"]["started_at"] > since, state
    assert state["last"]["ok"] is True, state["last"]
    journal = d.host.ssh("journalctl -u mlox-backup.service --no-pager -n 200").stdout
    assert '"event": "result"' in journal
    d.raw["backup"]["schedule"] = "daily"
    d.up()
    assert "OnCalendar=daily" in d.host.ssh("systemctl cat mlox-backup.timer").stdout
    # A run the timer started before the change finishes on its own; wait for it (it locks the repository).
    deadline = time.monotonic() + 300
    while d.host.ssh("systemctl is-active mlox-backup.service", check=False).stdout.strip() in ("active", "activating"):
        assert time.monotonic() < deadline, "the scheduled backup did not finish"
        time.sleep(3)


def test_6_server_lost_a_fresh_host_restores_from_the_repository_alone(stack, tmp_path_factory):
    a = stack
    fresh = lab.BackupDeployment(a.spare, tmp_path_factory.mktemp("backup-c"), a.store)
    # The same stack on a new server: the same state (so the same secrets) and stack file,
    # pointed at the new address, as a user redeploys after losing the server.
    shutil.copytree(a.project / ".mlox" / "state", fresh.project / ".mlox" / "state")
    shutil.copy(a.stack_file(), fresh.stack_file())
    fresh._set_secrets = dict(a._set_secrets)
    fresh.raw["onprem"]["host"] = a.spare.address
    fresh.raw["ssh"]["admin_cidrs"] = [a.spare.subnet]
    fresh.deploy()
    old_ca = a.ca_path.read_text()
    start = time.monotonic()
    result = _json(lab.mlox(fresh, "restore", "--yes", "--json"))
    timed("backup: restore onto a fresh server", time.monotonic() - start)
    assert result["verified"] is True
    fresh.wait_healthy()
    # Caddy's CA came back with its volume: clients keep trusting the server.
    assert fresh.fetch_ca().read_text() == old_ca
    after = lab.fingerprint(fresh)
    assert after["tables"] == a.before["tables"]
    assert after["objects"] == a.before["objects"]
    changed = sorted(k for k, v in a.before["files"].items() if after["files"].get(k) != v)
    assert not changed, changed
    # The only new files: Caddy's certificate for the new server's address, signed by the restored CA.
    new_site = f"caddy-data/./caddy/certificates/local/{a.spare.address}/"
    extra = sorted(set(after["files"]) - set(a.before["files"]))
    assert all(k.startswith(new_site) for k in extra), extra
    for run in a.seeded["runs"]:
        assert lab.mlflow_client(fresh, "check", run["run_id"], run["marker"]) == "ok"
