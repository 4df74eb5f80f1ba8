"""A deployed stack on one target host, shared by the end-to-end modules.

``Deployment`` holds the target host and the stack settings, deploys them with the real
Pulumi engine (``mlox_iac.automation``: a throwaway project of its own, the local file
backend, passphrase-encrypted secrets) and reaches the stack the way users do: the MLflow
client and boto3 through the proxy, trusting Caddy's internal CA.
Every on-prem stack of the end-to-end tests is deployed this way; the one replayed stack
(a cloud provider's, whose API cannot be reached here) is ``test_migrate_cloud.py``'s own.
``deployment_on_host`` boots a target host while the stand-in images build.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlox_iac.sandbox.spec import bootstrap_targets  # the same targeted update as `mlox-iac sandbox up`

try:
    from . import hosts, images
except ImportError:  # pragma: no cover
    import hosts  # type: ignore[no-redef]
    import images  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
CADDY_ROOT_CERT = "/mnt/mlox-data/volumes/caddy-data/caddy/pki/authorities/local/root.crt"
COMPOSE = "docker compose --project-name mlox --project-directory /opt/mlox/bundle -f /opt/mlox/bundle/compose.yaml"
LONG_RUNNING = ("postgres", "seaweedfs", "mlflow", "caddy")


def timed(name: str, seconds: float) -> None:
    """Report a phase's wall time (also listed at the end of the test run)."""
    hosts.TIMINGS.append((name, seconds))
    print(f"[e2e] {name}: {seconds:.1f}s", file=sys.stderr)


class _OnHost:
    """What every deployment reads of its target host (compose state, the CA, clients)."""

    host: hosts.TargetHost
    work: Path
    outputs: dict
    ca_path: Path

    def _settings(self, host: hosts.TargetHost) -> dict:
        public_key = subprocess.run(["ssh-keygen", "-y", "-f", str(host.key_path)], capture_output=True,
                                    text=True, check=True).stdout.strip()
        return {
            "provider": "onprem",
            "onprem": {"host": host.address, "user": "root", "port": 22, "private_key": host.private_key,
                       "memory_mb": 8192},
            "ssh": {"public_keys": [public_key], "admin_cidrs": [host.subnet]},
            "docker": {"source": "debian"},
        }

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

        connect.write_ca_bundle(self.ca_path, connect.external_s3_ca(self.outputs))
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


# What an engine step did to a resource, in the words the tests use.
_ACTIONS = {"same": "unchanged", "create": "created", "update": "updated", "delete": "deleted",
            "replace": "replaced", "create-replacement": "replaced", "delete-replaced": "replaced"}
PASSPHRASE = "e2e passphrase (a throwaway project's, no real stack's)"
STACK = "e2e"


@dataclass(frozen=True)
class Step:
    name: str
    action: str


class EngineResult:
    """What one engine update did, resource by resource (component resources left out)."""

    def __init__(self, run, ops: dict[str, str]):
        self.run = run
        self.ops = ops

    def actions(self) -> dict[str, str]:
        return dict(self.ops)

    def action(self, name: str) -> str:
        return self.ops.get(name, "unchanged")

    def changed(self) -> list[Step]:
        return [Step(n, a) for n, a in sorted(self.ops.items()) if a != "unchanged"]


class Deployment(_OnHost):
    """A stack on the target host, deployed with the real Pulumi engine.

    Its project is a throwaway copy of this one (``Pulumi.yaml``, ``__main__.py``, the venv)
    under ``work/project`` with the state in ``.mlox/state`` there; ``raw`` holds the stack
    settings, and the keys in ``secret_keys`` (dotted paths) are stored encrypted with
    ``pulumi config set --secret --path``, as a user sets them."""

    def __init__(self, host: hosts.TargetHost, work: Path, secret_keys: Sequence[str] = ("onprem.private_key",)):
        self.host = host
        self.work = work
        self.raw = self._settings(host)
        self.secret_keys = tuple(secret_keys)
        self.outputs: dict = {}
        self.ca_path = work / "caddy-root.crt"
        self.project = work / "project"
        self.stack = STACK
        (self.project / "stacks").mkdir(parents=True, exist_ok=True)
        for name in ("Pulumi.yaml", "__main__.py"):
            shutil.copy(ROOT / name, self.project / name)
        venv = self.project / ".venv"
        if not venv.exists():
            venv.symlink_to(Path(sys.executable).resolve().parents[1] if not (ROOT / ".venv").exists()
                            else ROOT / ".venv")
        self._set_secrets: dict[str, str] = {}

    # ---- the engine's environment: the CLI from the venv, this project, its passphrase
    @contextlib.contextmanager
    def environment(self) -> Iterator[dict[str, str]]:
        # PYTHONPATH: the engine runs the program from the throwaway project, where `import
        # mlox_iac` would find whatever checkout the venv was installed from (a worktree
        # shares its venv with another): the program must be this tree's, the one under test.
        env = {"PULUMI_CONFIG_PASSPHRASE": PASSPHRASE, "MLOX_PROJECT_DIR": str(self.project),
               "MLOX_BUILD_DIR": str(self.work / "build"), "PULUMI_SKIP_UPDATE_CHECK": "true",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def stack_file(self) -> Path:
        return self.project / "stacks" / f"Pulumi.{self.stack}.yaml"

    def write_stack_file(self) -> None:
        """``raw`` as the stack file: plain settings in clear, the secret ones kept as they were
        encrypted (and new or changed ones set with the CLI)."""
        import yaml

        from mlox_iac import automation

        path = self.stack_file()
        old = yaml.safe_load(path.read_text()) if path.is_file() else {}
        old = old or {}
        config = {f"mlox:{key}": json.loads(json.dumps(value)) for key, value in self.raw.items()}
        pending = {}
        for dotted in self.secret_keys:
            value, node, leaf = _lookup(config, dotted)
            if node is None:
                continue
            kept = _lookup(old.get("config") or {}, dotted)[0]
            if self._set_secrets.get(dotted) == value and isinstance(kept, dict) and "secure" in kept:
                node[leaf] = kept
            else:
                del node[leaf]
                pending[f"mlox:{dotted}"] = value
        document = {k: v for k, v in old.items() if k != "config"}
        document["config"] = config
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        if pending:
            with self.environment():
                automation.set_secrets(self.stack, pending, path_keys=tuple(pending), project_dir=self.project)
            for key, value in pending.items():
                self._set_secrets[key.removeprefix("mlox:")] = value

    # ---- engine operations
    def up(self, *, bootstrap_only: bool = False, replace: Sequence[str] = ()) -> EngineResult:
        """``mlox-iac up`` (the automation API under it); ``bootstrap_only`` updates the server's
        bootstrap alone (``--target``), so that images can be loaded before compose runs."""
        from mlox_iac import automation

        self.write_stack_file()
        ops: dict[str, str] = {}

        def on_event(event) -> None:
            for kind in ("res_outputs_event", "res_op_failed_event", "resource_pre_event"):
                item = getattr(event, kind, None)
                meta = getattr(item, "metadata", None)
                if meta is None or meta.type.startswith(("mlox:", "pulumi:")):
                    continue
                op = getattr(meta.op, "value", meta.op)
                name = meta.urn.rsplit("::", 1)[-1]
                if kind == "res_op_failed_event":
                    ops[name] = "failed"
                elif op in _ACTIONS and ops.get(name) != "failed":
                    ops[name] = _ACTIONS[op]

        target = bootstrap_targets(self.stack) if bootstrap_only else None
        start = time.monotonic()
        with self.environment():
            run = automation.up(self.stack, project_dir=self.project, on_event=on_event, show_secrets=True,
                                target=target, replace=list(replace) or None)
        self.outputs = run.outputs  # what `mlox-iac up` prints: the update's own outputs, secrets in clear
        result = EngineResult(run, ops)
        timed(f"engine up{' (bootstrap)' if bootstrap_only else ''} ({len(result.changed())} changed)",
              time.monotonic() - start)
        return result

    def read_outputs(self) -> dict:
        """The stack's outputs with secrets in clear (``mlox-iac outputs --show-secrets``)."""
        from mlox_iac import automation

        with self.environment():
            self.outputs = automation.outputs(self.stack, project_dir=self.project, show_secrets=True)
        return self.outputs

    def mlox(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300,
             **kwargs) -> subprocess.CompletedProcess:
        """The ``mlox-iac`` CLI on this project, as a user runs it after ``up``: their own home
        with an empty ``~/.ssh``, the server's key as their identity."""
        home = self.work / "home"
        (home / ".ssh").mkdir(parents=True, exist_ok=True)
        with self.environment() as engine_env:
            run_env = {**os.environ, **engine_env, "HOME": str(home), "MLOX_SSH_IDENTITY": str(self.host.key_path),
                       **(env or {})}
        for key in ("MLOX_SSH_OPTS", "MLOX_OUTPUTS_FILE", "PULUMI_BACKEND_URL"):
            run_env.pop(key, None)
        return subprocess.run([sys.executable, "-m", "mlox_iac.cli.main", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=self.project, env=run_env, **kwargs)

    def bring_up(self) -> dict[str, dict]:
        """Bootstrap the bare host (a targeted update), load the images, deploy the whole stack
        with the engine; wait healthy."""
        start = time.monotonic()
        self.up(bootstrap_only=True)
        self.build.wait()
        images.load_images(self.host, self.image_names)
        self.up()
        rows = self.wait_healthy()
        self.fetch_ca()
        timed("stack up (bootstrap, images, engine up)", time.monotonic() - start)
        return rows

    image_names: Sequence[str] = tuple(images.preset_images("core"))


def _lookup(config: dict, dotted: str):
    """(value, parent dict, leaf key) of ``mlox:a.b.c`` in a config mapping; (None, None, None)
    when a part is missing."""
    first, *rest = dotted.split(".")
    node = config.get(f"mlox:{first}")
    parent, leaf = config, f"mlox:{first}"
    for part in rest:
        if not isinstance(node, dict) or part not in node:
            return None, None, None
        parent, leaf, node = node, part, node[part]
    return node, parent, leaf


@contextlib.contextmanager
def deployment_on_host(work: Path, prefix: str, first_index: int,
                       names: Sequence[str] | None = None, cls: type = None) -> Iterator[Deployment]:
    """One booted target host (prefix, index) as a Deployment (or ``cls``); the stand-in images
    it will load (``names``, by default the core preset's) build meanwhile."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root: they boot Debian hosts with systemd-nspawn")
    started = time.monotonic()
    build = images.BackgroundBuild(images.preset_images("core") if names is None else names)
    with hosts.target_hosts(1, prefix=prefix, first_index=first_index) as (host,):
        d = (cls or Deployment)(host, work)
        d.build = build
        if names is not None:
            d.image_names = tuple(names)
        timed("target ready", time.monotonic() - started)
        yield d
