"""The UI on fixture data: a project with real stack files, the real Automation API against
a recording engine double (``tests/pulumi_double.py``), and fixture answers where the UI
would reach a server (probes, the backup tooling, Alertmanager, logs).

Everything between those seams is the code users run: the pages, the jobs, the Backend's
calls into ``mlox_iac.automation``, ``connect``, ``pricing`` and ``migrate``. Used by the
unit tests, the browser tests and ``benchmarks/ui.py``.
"""

from __future__ import annotations

import copy
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from mlox_iac.connect import ProbeResult
from mlox_iac.ui.backend import Backend

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"mlflow": "mlflow-pass-7dQx2", "home": "home-pass-Kp93a", "prometheus": "prom-pass-Zz81",
             "alertmanager": "am-pass-Yy72"}
SECRET_VALUES = [*PASSWORDS.values(), "S3ACCESSKEY0123456789", "s3-secret-key-VERYSECRET", "backup-pass-QQ11"]


def outputs_for(name: str, address: str, *, backup: bool = True, monitoring: bool = False) -> dict[str, Any]:
    """Stack outputs shaped as ``mlox_iac.components.stack`` exports them (secrets in clear)."""
    base = f"https://{address}"
    urls = {"s3": base, "mlflow": f"{base}/mlflow", "home": f"{base}/"}
    passwords = {"mlflow": PASSWORDS["mlflow"], "home": PASSWORDS["home"]}
    if monitoring:
        urls |= {"prometheus": f"{base}/prometheus", "alertmanager": f"{base}/alertmanager"}
        passwords |= {"prometheus": PASSWORDS["prometheus"], "alertmanager": PASSWORDS["alertmanager"]}
    out = {"provider": "hetzner", "server": "main", "server_address": address, "ssh_user": "root", "ssh_port": 22,
           "ssh_host_keys": [], "services": ["postgres", "seaweedfs", "mlflow", "home", "caddy"], "urls": urls,
           "tls": "internal", "ui_user": "admin", "ui_passwords": passwords, "login_passwords": {}, "api_tokens": {},
           "mlflow_tracking_uri": f"{base}/mlflow", "s3_endpoint": base, "s3_buckets": ["data", "mlflow-artifacts"],
           "s3_access_key": "S3ACCESSKEY0123456789", "s3_secret_key": "s3-secret-key-VERYSECRET",
           "bundle_hash": "abc123"}
    if backup:
        out |= {"backup_repository": "s3:https://objects.example.com/mlox-backups", "backup_schedule": "daily",
                "backup_password": "backup-pass-QQ11"}
    return out


# A preview's changed resource, as the engine's event log says it (one setting changed).
PREVIEW_EVENTS = [
    {"resourcePreEvent": {"metadata": {
        "op": "update", "type": "command:remote:Command", "provider": "",
        "urn": "urn:pulumi:prod::mlox::mlox:stack:Stack$mlox:server:Server$command:remote:Command::main-bundle-compose-up",
        "old": {"type": "command:remote:Command", "inputs": {"environment": {"MLFLOW_WORKERS": "2"}, "create": "up"}},
        "new": {"type": "command:remote:Command", "inputs": {"environment": {"MLFLOW_WORKERS": "4"}, "create": "up"}},
        "diffs": ["environment"], "detailedDiff": {"environment.MLFLOW_WORKERS": {"diffKind": "update", "inputDiff": True}},
    }}},
    {"resOutputsEvent": {"metadata": {
        "op": "update", "type": "command:remote:Command", "provider": "",
        "urn": "urn:pulumi:prod::mlox::mlox:stack:Stack$mlox:server:Server$command:remote:Command::main-bundle-compose-up"}}},
]


def make_engine(outputs: dict[str, dict]):
    """A recording ``PulumiCommand`` that knows ``outputs``' stacks and answers each its own."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from pulumi_double import RecordingPulumiCommand

    class FixtureEngine(RecordingPulumiCommand):
        def run(self, args, cwd, additional_env, on_output=None, on_error=None):
            stack = args[args.index("--stack") + 1] if "--stack" in args else None
            if stack in outputs:
                self.outputs = outputs[stack]
                self.secret_outputs = {k for k in outputs[stack] if k in SECRET_KEYS}
            return super().run(args, cwd, additional_env, on_output, on_error)

    return FixtureEngine(stacks=set(outputs), events=copy.deepcopy(PREVIEW_EVENTS), changes={"update": 1, "same": 30})


SECRET_KEYS = {"ui_passwords", "login_passwords", "api_tokens", "s3_access_key", "s3_secret_key", "backup_password"}


def make_project(root: Path, deployed: int = 2) -> tuple[Path, dict[str, dict]]:
    """A project: ``prod`` (Hetzner, with backups) and ``lab`` (on-prem, with monitoring)
    deployed, ``staging`` written but not deployed, ``broken`` an invalid file; with
    ``deployed`` > 2, more Hetzner stacks ``s03``... deployed too (the benchmark's ten)."""
    project = root / "project"
    (project / "stacks").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Pulumi.yaml", project / "Pulumi.yaml")
    hetzner = (REPO / "stacks" / "Pulumi.example-hetzner.yaml").read_text()
    onprem = (REPO / "stacks" / "Pulumi.example-onprem.yaml").read_text()
    (project / "stacks" / "Pulumi.prod.yaml").write_text(hetzner)
    document = yaml.safe_load(onprem)
    document["config"].setdefault("mlox:services", {})["monitoring"] = {"enabled": True}
    document["config"]["mlox:onprem"]["memory_mb"] = 8192
    (project / "stacks" / "Pulumi.lab.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    (project / "stacks" / "Pulumi.staging.yaml").write_text(hetzner)
    (project / "stacks" / "Pulumi.broken.yaml").write_text(hetzner.replace("server_type:", "server_typ:"))
    outputs = {"prod": outputs_for("prod", "192.0.2.10"), "lab": outputs_for("lab", "192.0.2.20", backup=False,
                                                                             monitoring=True)}
    for i in range(3, deployed + 1):
        name = f"s{i:02d}"
        (project / "stacks" / f"Pulumi.{name}.yaml").write_text(hetzner)
        outputs[name] = outputs_for(name, f"192.0.2.{30 + i}")
    return project, outputs


class FixtureBackend(Backend):
    """The real Backend, with fixture answers where it would reach a server."""

    def __init__(self, project: Path, outputs: dict[str, dict], *, probe_delay: float = 0.0):
        super().__init__(project, pulumi_command=make_engine(outputs))
        self.fixture_outputs = outputs
        self.probe_delay = probe_delay
        self.down: set[str] = set()
        self.snapshot_list: dict[str, list[dict]] = {name: [
            {"id": "4f2a91c0", "time": "2026-12-05T03:00:11Z", "services": ["postgres", "seaweedfs", "mlflow"],
             "size": 48_000_000, "added": 1_200_000, "check": "ok"}] for name in outputs}
        self.restored: list[tuple[str, str]] = []
        self.gate: threading.Event | None = None  # set: a backup waits for it (a job that is still running)

    def ca_path(self, name, outputs):
        return None  # without a domain the real one fetches the server's CA over SSH

    def probe(self, name, outputs):
        time.sleep(self.probe_delay)  # a server's answer takes time
        return [ProbeResult(route, url + ("/health" if route == "mlflow" else "/"), route not in self.down,
                            200 if route not in self.down else None, "ok" if route not in self.down else "no answer",
                            86400 * 60) for route, url in outputs["urls"].items()]

    def backup_status(self, name, outputs):
        if not outputs.get("backup_repository"):
            return None
        last = self.snapshot_list[name][-1]
        return {"name": "backup", "url": outputs["backup_repository"], "up": True, "status": None, "age_s": 7200.0,
                "interval_s": 86400, "last": {"ok": True, "snapshot": last["id"], "check": last["check"]},
                "detail": "ok (last good backup 2h ago)"}

    def alerts(self, name, outputs):
        if "alertmanager" not in outputs["urls"]:
            return None
        return [{"name": "BackupMissing", "severity": "warning", "summary": "No backup in 26 h",
                 "since": "2026-12-06T01:00:00Z"}]

    def compose_services(self, name, outputs):
        return ["caddy", "home", "mlflow", "postgres", "seaweedfs"]

    def logs(self, name, service, tail=100):
        return "".join(f"{service}-1  | line {i} of {service}\n" for i in range(1, 6))

    def _backup_verb(self, outputs, verb, args, on_progress):
        name = next(n for n, o in self.fixture_outputs.items() if o["server_address"] == outputs["server_address"])
        if verb == "snapshots":
            return list(self.snapshot_list[name])
        if self.gate is not None:
            assert self.gate.wait(20), "the test never opened the gate"
        for phase in ("databases", "buckets", "volumes", "upload", "check"):
            on_progress({"event": "progress", "phase": phase, "message": f"{phase} done"})
            time.sleep(0.05)
        if verb == "backup":
            snap = {"id": f"{len(self.snapshot_list[name]) + 0xa0b1c2d0:08x}", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "services": ["postgres", "seaweedfs", "mlflow"], "size": 49_000_000, "added": 100_000, "check": "ok"}
            self.snapshot_list[name].append(snap)
            return {"snapshot": snap["id"], "services": snap["services"], "total_bytes": 49_000_000,
                    "data_added": 100_000, "check": "ok"}
        snapshot = args[args.index("--snapshot") + 1]
        self.restored.append((name, snapshot))
        return {"snapshot": snapshot, "time": "2026-12-05T03:00:11Z", "restored": []}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveUI:
    """The UI app served by uvicorn on 127.0.0.1 in a thread, as ``mlox-iac ui`` serves it."""

    def __init__(self, backend: Backend):
        import uvicorn

        from mlox_iac.ui.app import create_app
        from mlox_iac.ui.security import Guard, new_token

        self.port = free_port()
        self.guard = Guard(new_token(), self.port)
        self.app = create_app(backend, self.guard)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveUI":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started, "the UI did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.guard.url(path)
