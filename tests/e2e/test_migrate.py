"""End to end: ``mlox-iac migrate`` moves a stack with data from host A to host B (onprem -> onprem).

Engine: the real Pulumi engine throughout, as in test_deploy.py (``mlox_iac.automation`` in
a throwaway project, local file backend, passphrase-encrypted secrets). Two systemd-nspawn
hosts (prefix ``mlxmig``, indices 91 and 92). The stack is deployed on A and filled with
real data (MLflow runs, artifacts and model versions, a 1 GiB object and 1,000 small ones,
volume files). Then :func:`mlox_iac.migrations.stack.run` moves it with the real phases and the
engine the CLI uses (:class:`mlox_iac.migrations.stack.AutomationEngine`): every ``up`` of a phase
is a real engine update, and the move's settings reach the stack file through the engine
(``pulumi config set``); every data step runs for real on the hosts (``mlox_data move-*``
over SSH, A sending straight to B). No registry is reachable here, so host B, bare until the
move provisions it, gets its images as host A did: its bootstrap alone (a targeted update),
then the images, then the whole update. One lab serves the tests, which run in order and
build on each other:

0. a move aborted right after provisioning removes B's stack; A serves, nothing lost;
1. the copy is killed midway (the receiving tar on B); a rerun resumes at the copy;
2. one object is corrupted on B before the verification: no cutover, A serves again, the
   message names the object; a rerun completes; after the cutover the MLflow client and
   boto3, configured only by what `mlox-iac env` exports, find everything on B; A is
   stopped with its data as it was;
3. ``--finish`` removes A's stack (its data directory stays, as on any on-prem host); B serves.

The move between two cloud providers (Hetzner -> DigitalOcean) is ``test_migrate_cloud.py``,
which uses this module's helpers with the replay harness (no cloud API is reachable here).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from mlox_iac import connect
from mlox_iac.migrations import stack as migrate
from mlox_iac.components.services.registry import SERVICES

try:
    from . import backup_lab as lab
    from . import hosts, images
    from .stack import COMPOSE, STACK, Deployment, _lookup, bootstrap_targets, timed
except ImportError:  # pragma: no cover
    import backup_lab as lab  # type: ignore[no-redef]
    import hosts  # type: ignore[no-redef]
    import images  # type: ignore[no-redef]
    from stack import COMPOSE, STACK, Deployment, _lookup, bootstrap_targets, timed  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

PREFIX = "mlxmig"
FIRST_INDEX = 91  # A = 91, B = 92
BIG_OBJECT_MB = 1024
SECRETS = {"onprem.private_key", "target.onprem.private_key"}
NEEDED_IMAGES = lab.LAB_IMAGES  # the core stack's and the data tooling's (rclone copies the objects)


class MoveDeployment(Deployment):
    """The stack on host A, deployed by the real engine (``Deployment``), with host B as a
    move target. ``raw`` follows the stack file, which the move changes through the engine
    (``pulumi config set``): :meth:`sync` reads it back after each engine step."""

    def __init__(self, a: hosts.TargetHost, b: hosts.TargetHost, work: Path):
        super().__init__(a, work, secret_keys=tuple(sorted(SECRETS)))
        self.hosts = {a.address: a, b.address: b}
        self.raw["ssh"]["admin_cidrs"] = [a.subnet, b.subnet]
        self.image_names = tuple(NEEDED_IMAGES)

    def engine(self) -> "Engine":
        return Engine(self)

    def sync(self) -> None:
        """``raw`` from the stack file (a secret there stays as it was set, in clear)."""
        config = (yaml.safe_load(self.stack_file().read_text()) or {}).get("config") or {}
        raw = {key.removeprefix("mlox:"): value for key, value in config.items() if key.startswith("mlox:")}
        for dotted in self.secret_keys:
            value, node, leaf = _lookup({f"mlox:{k}": v for k, v in raw.items()}, dotted)
            if isinstance(value, dict) and "secure" in value and dotted in self._set_secrets:
                node[leaf] = self._set_secrets[dotted]
        self.raw = raw


class Engine(migrate.AutomationEngine):
    """The :class:`mlox_iac.migrations.stack.Engine` the CLI uses (the Automation API on the stack),
    in the test project's environment. No registry is reachable here, so a new server's
    images arrive as on the first host: its bootstrap alone first (a targeted update), then
    the images, then the whole update."""

    def __init__(self, d: MoveDeployment):
        super().__init__(STACK, d.project)
        self.d = d

    def outputs(self) -> dict:
        with self.d.environment():
            return super().outputs()

    def up(self) -> dict:
        from mlox_iac import automation

        with self.d.environment():
            migration = self.d.raw.get("migration") or {}
            host = self.d.hosts.get(((self.d.raw.get("target") or {}).get("onprem") or {}).get("host"))
            if migration and host is not None and host.ssh("command -v docker", check=False).returncode != 0:
                automation.up(STACK, project_dir=self.d.project, target=bootstrap_targets(STACK, migration["server"]))
                self.d.build.wait()
                images.load_images(host, self.d.image_names)
            outputs = super().up()
        self.d.read_outputs()
        return outputs

    def set_config(self, values, remove=(), secret=()) -> None:
        with self.d.environment():
            super().set_config(values, remove=remove, secret=secret)
        self.d.sync()

    def get_config(self, key: str) -> str:
        with self.d.environment():
            return super().get_config(key)


class Hooks:
    """Wraps the real :class:`SshServers` to interrupt or tamper at chosen moments."""

    def __init__(self, d: MoveDeployment):
        self.d = d
        self.before: dict[str, object] = {}  # verb -> callable(servers) run once before it
        self.during: dict[str, object] = {}  # verb -> callable() started in a thread, once
        self.progress: list[str] = []  # every progress message the servers sent

    def __call__(self, migration):
        ssh_opts = ("-o", f"UserKnownHostsFile={self.d.work / 'known_hosts'}", "-o", "StrictHostKeyChecking=no",
                    "-o", "LogLevel=ERROR")
        real = migrate.SshServers(migration, identity=str(self.d.host.key_path), options=ssh_opts,
                                  on_progress=self._progress)
        hooks = self

        class Wrapped:
            def verb(self, role, verb, args=()):
                if verb in hooks.before:
                    hooks.before.pop(verb)()
                if verb in hooks.during:
                    threading.Thread(target=hooks.during.pop(verb), daemon=True).start()
                return real.verb(role, verb, args)

            def __getattr__(self, name):
                return getattr(real, name)

        return Wrapped()

    def _progress(self, event: dict) -> None:
        self.progress.append(str(event.get("message")))
        print(f"[move] {event.get('message')}", file=sys.stderr)


def kept_volumes(d: Deployment) -> list[str]:
    """The volumes the stack keeps, from the services' declarations (a stack without
    mlox:backup has no plan.json on the server until a move ships the data tooling)."""
    from mlox_iac.components.services.base import Context
    from mlox_iac.config.loader import validate

    config = validate(d.raw, SECRETS, "e2e", STACK)
    return sorted({v for name in config.enabled_services() for v in SERVICES[name].data(Context(config)).volumes})


def seed(d: Deployment) -> dict:
    """MLflow runs, artifacts and model versions; a 1 GiB object and 1,000 small ones; volume files."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lab, "kept_volumes", kept_volumes)  # the lab asks which volumes are kept
        return lab.seed(d, big_mb=BIG_OBJECT_MB)


def fingerprint(d: Deployment) -> dict:
    """Every table's rows, object's and kept volume file's checksum, read from outside."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lab, "kept_volumes", kept_volumes)
        return lab.fingerprint(d)


def status_of(url: str, ca: Path) -> tuple[int, str | None]:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(url, context=context, timeout=10) as answer:
            return answer.status, answer.headers.get("Retry-After")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Retry-After")


def data_files(host: hosts.TargetHost) -> dict:
    """A's data as the move must leave it: the marker files' checksums and the stores' sizes."""
    sums = host.ssh("cd /mnt/mlox-data/volumes && sha256sum */mlox-e2e/marker.bin").stdout
    sizes = host.ssh("cd /mnt/mlox-data/volumes && du -sb seaweedfs-data postgres-data").stdout
    return {"markers": sums, "sizes": {line.split()[1]: int(line.split()[0]) for line in sizes.splitlines()}}


_LIST_WITH_BOTO3 = """
import boto3, hashlib, json, sys
from botocore.config import Config
s3 = boto3.session.Session().client("s3", config=Config(s3={"addressing_style": "path"}))
keys = [f"{b}/{o['Key']}" for b in ("data", "mlflow-artifacts")
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b) for o in page.get("Contents", [])]
body = s3.get_object(Bucket="data", Key=sys.argv[1])["Body"].read()
print(json.dumps({"keys": keys, "victim": hashlib.sha256(body).hexdigest()}))
"""


def boto3_from_env(d, key: str) -> dict:
    """boto3 in a separate process configured only by what `mlox-iac env` exports: every
    object key, and the SHA-256 of ``key`` in the bucket ``data``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    done = subprocess.run([sys.executable, "-c", _LIST_WITH_BOTO3, key], env={**env, **d.client_env()},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_move(d, hooks: Hooks, to: str = "onprem") -> list[str]:
    """``mlox-iac migrate --to TO`` as its command runs it, with ``d``'s engine and the hooks."""
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(f"[migrate] {line}", file=sys.stderr)

    migrate.run(STACK, to, project_dir=d.project, engine=d.engine(), servers_for=hooks, say=say)
    return lines


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root: they boot Debian hosts with systemd-nspawn")
    build = images.BackgroundBuild(NEEDED_IMAGES)  # images build while the hosts boot
    started = time.monotonic()
    with hosts.target_hosts(2, prefix=PREFIX, first_index=FIRST_INDEX) as (a, b):
        d = MoveDeployment(a, b, tmp_path_factory.mktemp("migrate"))
        d.a, d.b = a, b
        d.build = build
        rows = d.bring_up()  # bootstrap (targeted), images, the whole stack
        assert all(rows[s].get("Health") == "healthy" for s in ("postgres", "seaweedfs", "mlflow", "caddy")), rows
        d.seeded = seed(d)
        d.before = fingerprint(d)
        d.a_files = data_files(a)
        d.a_outputs = dict(d.outputs)
        timed("migrate: stack with data on A", time.monotonic() - started)
        yield d


def use_b_as_target(d: MoveDeployment) -> None:
    """What a user writes into the stack file before ``mlox-iac migrate --to onprem``."""
    d.sync()
    d.raw["target"] = {"onprem": {"host": d.b.address, "user": "root", "port": 22, "private_key": d.b.private_key,
                                  "memory_mb": 8192}}
    d.write_stack_file()


def test_0_abort_after_provisioning_removes_b_and_a_keeps_serving(moving):
    d = moving
    use_b_as_target(d)
    hooks = Hooks(d)

    def stop_after_provisioning():
        raise migrate.MigrationError("stopped by the test after provisioning")

    hooks.before["move-keygen"] = stop_after_provisioning
    start = time.monotonic()
    with pytest.raises(migrate.MigrationError, match="copy failed: stopped by the test"):
        run_move(d, hooks)
    assert d.b.ssh(f"{COMPOSE} ps -q").stdout.strip() != ""  # B was provisioned
    migrate.abort(STACK, project_dir=d.project, engine=d.engine(), servers_for=hooks)
    assert "migration" not in d.raw and "migration" not in d.outputs
    assert d.b.ssh(f"{COMPOSE} ps -q", check=False).stdout.strip() == ""  # B's stack is gone
    assert d.outputs["server_address"] == d.a.address
    assert fingerprint(d) == d.before  # nothing lost on A, which serves
    timed("migrate: provision + abort", time.monotonic() - start)


def test_1_a_copy_killed_midway_resumes(moving):
    d = moving
    use_b_as_target(d)
    hooks = Hooks(d)

    def kill_receiver():  # once 100 MB have arrived on B, kill the receiving tar
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            got = d.b.ssh("du -sm /mnt/mlox-data/migrate/incoming 2>/dev/null | cut -f1", check=False).stdout.strip()
            if got.isdigit() and int(got) >= 100:
                d.b.ssh("pkill -KILL -f 'tar -C /mnt/mlox-data/migrate/incoming'", check=False)
                return
            time.sleep(0.5)

    hooks.during["move-send"] = kill_receiver
    start = time.monotonic()
    with pytest.raises(migrate.MigrationError, match="copy failed: .*resume at copy"):
        run_move(d, hooks)
    record = migrate.load_record(d.project, STACK)
    assert record.next_phase == "copy" and "provision" in record.done
    assert status_of(d.a_outputs["urls"]["mlflow"] + "/health", d.ca_path)[0] in (200, 401)  # A still serves
    timed("migrate: provision + interrupted copy", time.monotonic() - start)
    d.hooks = hooks


def test_2_corruption_cancels_the_cutover_then_the_move_completes(moving):
    d = moving
    hooks = d.hooks
    victim = "small/0007.txt"

    def corrupt():  # after the final delta arrived on B, change one object there
        import boto3
        from botocore.config import Config

        new = d.outputs["migration"]["new"]["server_address"]
        s3 = boto3.client("s3", endpoint_url=f"https://{new}", region_name="us-east-1",
                          aws_access_key_id=d.outputs["s3_access_key"], aws_secret_access_key=d.outputs["s3_secret_key"],
                          verify=str(d.ca_path), config=Config(s3={"addressing_style": "path"}))
        s3.put_object(Bucket=lab.USER_BUCKET, Key=victim, Body=b"corrupted on B\n")

    def send_left_running():
        """The send an interrupted migrate leaves running on A (the server side ignores the
        dropped connection): it sends what test_1's killed copy did not. The resumed copy's
        stage must wait for it rather than rewrite the staging files under it."""
        new = d.outputs["migration"]["new"]
        # `cd || exit; nohup … &`: the & then backgrounds nohup alone (which execs python3), so $!
        # is the send's own pid; `cd && nohup … &` would background a subshell with another pid.
        started = d.a.ssh(f"cd {connect.BACKUP_DIR_ON_SERVER} || exit 1; nohup python3 -m mlox_data move-send "
                          f"--to {new['server_address']} --port {new['ssh_port']} --user {new['ssh_user']} "
                          f"> /root/stray-send.log 2>&1 < /dev/null & echo $!").stdout.strip()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until it holds the copy lock
            holder = d.a.ssh("cat /run/mlox-move.lock 2>/dev/null", check=False).stdout.strip()
            if holder == f"migration copy {started}":
                return
            time.sleep(0.2)
        pytest.fail(f"the stray send did not take the copy lock: {holder!r}")

    hooks.before["move-stage"] = send_left_running
    hooks.before["move-verify"] = corrupt
    start = time.monotonic()
    with pytest.raises(migrate.VerificationFailed, match=f"no cutover: .*{victim}.*the old server serves again"):
        run_move(d, hooks)
    # The resumed stage waited for the stray send, which ended well on its own.
    assert "waiting for the migration copy running on this server" in hooks.progress
    stray_log = d.a.ssh("cat /root/stray-send.log").stdout
    assert '"event": "result"' in stray_log, stray_log[-2000:]
    code, _ = status_of(d.a_outputs["urls"]["mlflow"] + "/health", d.ca_path)
    assert code in (200, 401), code  # not 503: A serves again
    timed("migrate: resumed copy, verification failed", time.monotonic() - start)

    start = time.monotonic()
    lines = run_move(d, hooks)
    assert migrate.load_record(d.project, STACK).cut_over
    downtime = next(line for line in lines if line.startswith("downtime"))
    timed(f"migrate: cutover ({downtime})", time.monotonic() - start)

    # The outputs point at B; everything is there, read with the real clients configured from them.
    assert d.outputs["server_address"] == d.b.address and d.outputs["urls"]["mlflow"].startswith(f"https://{d.b.address}")
    d.host = d.b
    d.fetch_ca()
    for run in d.seeded["runs"]:
        assert lab.mlflow_client(d, "check", run["run_id"], run["marker"]) == "ok"
    listed = boto3_from_env(d, victim)
    assert sorted(listed["keys"]) == sorted(d.before["objects"])
    assert listed["victim"] == d.before["objects"][f"{lab.USER_BUCKET}/{victim}"]  # B's corruption was repaired
    after = fingerprint(d)
    assert (after["tables"], after["objects"]) == (d.before["tables"], d.before["objects"])
    assert {k: after["files"].get(k) for k in d.before["files"]} == d.before["files"]
    # B's only files of its own: the certificate its Caddy issued for B's address (with A's CA).
    own = set(after["files"]) - set(d.before["files"])
    assert own and all(f"/caddy/certificates/local/{d.b.address}/" in k for k in own), own
    # A: stopped, its data as it was, until --finish.
    assert d.a.ssh(f"{COMPOSE} ps -q").stdout.strip() == ""
    now = data_files(d.a)
    assert now["markers"] == d.a_files["markers"]
    assert all(now["sizes"][k] >= 0.99 * v for k, v in d.a_files["sizes"].items()), (now, d.a_files)


def test_3_finish_removes_a_and_b_keeps_serving(moving):
    d = moving
    start = time.monotonic()
    migrate.finish(STACK, project_dir=d.project, engine=d.engine(),
                   say=lambda line: print(f"[migrate] {line}", file=sys.stderr))
    assert migrate.load_record(d.project, STACK) is None
    assert "migration" not in d.raw and "target" not in d.raw and d.raw["onprem"]["host"] == d.b.address
    assert "migration" not in d.outputs and d.outputs["server_address"] == d.b.address
    a_containers = d.a.ssh("docker ps -a -q --filter label=com.docker.compose.project=mlox").stdout
    assert a_containers.strip() == ""  # A's stack is gone
    assert data_files(d.a)["markers"] == d.a_files["markers"]  # an on-prem host keeps its data directory
    code, _ = status_of(d.outputs["urls"]["mlflow"] + "/health", d.ca_path)
    assert code in (200, 401), code
    assert lab.mlflow_client(d, "check", d.seeded["runs"][0]["run_id"], d.seeded["runs"][0]["marker"]) == "ok"
    timed("migrate: finish", time.monotonic() - start)
