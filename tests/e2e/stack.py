"""A deployed core stack on one target host, shared by the end-to-end modules.

``Deployment`` holds the target host, the stack settings, the replay state and the
generated passwords (what Pulumi state would hold), and reaches the stack the way users
do: the MLflow client and boto3 through the proxy, trusting Caddy's internal CA.
``deployment_on_host`` boots a target host while the stand-in images build.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import string
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mlox_iac.plan import record_program, unwrap

try:
    from . import hosts, images
    from .replay import ReplayState, replay
except ImportError:  # pragma: no cover
    import hosts  # type: ignore[no-redef]
    import images  # type: ignore[no-redef]
    from replay import ReplayState, replay  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
CADDY_ROOT_CERT = "/mnt/mlox-data/volumes/caddy-data/caddy/pki/authorities/local/root.crt"
COMPOSE = "docker compose --project-name mlox --project-directory /opt/mlox/bundle -f /opt/mlox/bundle/compose.yaml"
LONG_RUNNING = ("postgres", "seaweedfs", "mlflow", "caddy")


def timed(name: str, seconds: float) -> None:
    """Report a phase's wall time (also listed at the end of the test run)."""
    hosts.TIMINGS.append((name, seconds))
    print(f"[e2e] {name}: {seconds:.1f}s", file=sys.stderr)


class PasswordStore:
    """What pulumi-random keeps in state: one password (and its bcrypt hash) per resource."""

    def __init__(self, path: Path):
        self.path = path
        self.values = json.loads(path.read_text()) if path.exists() else {}

    def password(self, name: str, length: int) -> str:
        if name not in self.values:
            alphabet = string.ascii_letters + string.digits
            self.values[name] = {"password": "".join(secrets.choice(alphabet) for _ in range(length))}
            self._save()
        return self.values[name]["password"]

    def bcrypt(self, password: str) -> str:
        import bcrypt

        for entry in self.values.values():
            if entry["password"] == password:
                if "bcrypt" not in entry:
                    entry["bcrypt"] = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
                    self._save()
                return entry["bcrypt"]
        raise KeyError("unknown password")

    def _save(self) -> None:
        self.path.write_text(json.dumps(self.values))
        self.path.chmod(0o600)


class Deployment:
    """The target, the stack settings, and one replay state across the tests."""

    def __init__(self, host: hosts.TargetHost, work: Path):
        self.host = host
        self.work = work
        self.passwords = PasswordStore(work / "passwords.json")
        self.state = ReplayState(work / "replay-state.json")
        public_key = subprocess.run(["ssh-keygen", "-y", "-f", str(host.key_path)], capture_output=True,
                                    text=True, check=True).stdout.strip()
        self.raw = {
            "provider": "onprem",
            "onprem": {"host": host.address, "user": "root", "port": 22, "private_key": host.private_key,
                       "memory_mb": 8192},
            "ssh": {"public_keys": [public_key], "admin_cidrs": [host.subnet]},
            "docker": {"source": "debian"},
        }
        self.outputs: dict = {}
        self.ca_path = work / "caddy-root.crt"

    def record(self):
        os.environ["MLOX_BUILD_DIR"] = str(self.work / "build")
        resources, outputs = record_program(
            self.raw, {"onprem.private_key"}, "e2e",
            secret_source=self.passwords.password, bcrypt=self.passwords.bcrypt,
        )
        self.outputs = unwrap(outputs)
        return resources

    def replay(self, only: set[str] | None = None):
        resources = self.record()
        if only is not None:
            resources = [r for r in resources if r.name in only]
        start = time.monotonic()
        result = replay(resources, self.state, log=lambda line: print(f"[replay] {line}", file=sys.stderr),
                        workdir=ROOT)
        timed(f"replay ({len(result.changed())} changed)", time.monotonic() - start)
        return result

    def compose_ps(self) -> list[dict]:
        out = self.host.ssh(f"{COMPOSE} ps --all --format json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
        if len(rows) == 1 and isinstance(rows[0], list):
            rows = rows[0]
        return rows

    def wait_healthy(self, timeout: float = 300) -> dict[str, dict]:
        return self.wait_healthy_services(LONG_RUNNING, timeout)

    def wait_healthy_services(self, services, timeout: float = 300) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            rows = {row["Service"]: row for row in self.compose_ps()}
            healthy = all(rows.get(s, {}).get("Health") == "healthy" for s in services)
            if healthy or time.monotonic() > deadline:
                return rows
            time.sleep(3)

    def started_at(self) -> dict[str, str]:
        ids = self.host.ssh(f"{COMPOSE} ps -q").stdout.split()
        out = self.host.ssh(["docker", "inspect", "--format", "{{.Name}} {{.State.StartedAt}}", *ids]).stdout
        return dict(line.split(" ", 1) for line in out.splitlines())

    def fetch_ca(self) -> Path:
        self.ca_path.write_text(self.host.ssh(f"cat {CADDY_ROOT_CERT}").stdout)
        return self.ca_path

    def client_env(self) -> dict[str, str]:
        """What `mlox-iac env --show-secrets` exports, from this deployment's outputs and the fetched CA."""
        from mlox_iac import connect

        connect.write_ca_bundle(self.ca_path)
        return connect.env_exports(self.outputs, self.ca_path)

    def mlflow_env(self) -> dict[str, str]:
        """The MLflow part of what `mlox-iac env` exports."""
        return {k: v for k, v in self.client_env().items() if k.startswith(("MLFLOW_", "REQUESTS_"))}

    def s3(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.outputs["s3_endpoint"], region_name="us-east-1",
            aws_access_key_id=self.outputs["s3_access_key"], aws_secret_access_key=self.outputs["s3_secret_key"],
            verify=str(self.ca_path), config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def bring_up(self) -> dict[str, dict]:
        """Bootstrap the bare host, load the images, deploy the whole stack; wait healthy."""
        start = time.monotonic()
        self.replay(only={"main-bootstrap"})
        self.build.wait()
        images.load_images(self.host, images.preset_images("core"))
        self.replay()
        rows = self.wait_healthy()
        self.fetch_ca()
        timed("core stack up (bootstrap, images, replay)", time.monotonic() - start)
        return rows

    def containers(self) -> dict[str, dict]:
        """Per compose service: OOMKilled, restart count and the container's name."""
        ids = self.host.ssh(f"{COMPOSE} ps -q").stdout.split()
        out = self.host.ssh(["docker", "inspect", "--format",
                             '{{index .Config.Labels "com.docker.compose.service"}} {{.State.OOMKilled}} '
                             '{{.RestartCount}} {{.Name}}', *ids]).stdout
        rows = {}
        for line in out.splitlines():
            service, oom, restarts, name = line.split()
            rows[service] = {"oom_killed": oom == "true", "restarts": int(restarts), "name": name.lstrip("/")}
        return rows


@contextlib.contextmanager
def deployment_on_host(work: Path, prefix: str, first_index: int,
                       names: Sequence[str] | None = None) -> Iterator[Deployment]:
    """One booted target host (prefix, index) as a Deployment; the stand-in images it will load
    (``names``, by default the core preset's) build meanwhile."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root: they boot Debian hosts with systemd-nspawn")
    started = time.monotonic()
    build = images.BackgroundBuild(images.preset_images("core") if names is None else names)
    with hosts.target_hosts(1, prefix=prefix, first_index=first_index) as (host,):
        d = Deployment(host, work)
        d.build = build
        timed("target ready", time.monotonic() - started)
        yield d
