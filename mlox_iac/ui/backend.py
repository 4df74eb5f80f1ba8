"""What the UI shows and does, through the same Python API as the CLI.

Each method calls what the matching ``mlox-iac`` command calls (``mlox_iac.automation``,
``mlox_iac.connect``, ``mlox_iac.pricing``, ``mlox_iac.migrations`` and the CLI's own helpers
in ``mlox_iac.cli``): no second implementation. The UI's tests and its benchmark replace
the methods that reach a server or the engine (``outputs``, ``probe``, ``backup_status``,
...) with fixture data; everything above them is the code users run.

Secrets: :meth:`outputs` returns them in clear to this process only. Pages get
:meth:`masked_outputs`; a secret leaves the process only through :meth:`reveal`, as the
answer to the POST that asked for it.
"""

from __future__ import annotations

import datetime
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from mlox_iac.errors import ConfigError, MloxError

# How long outputs read from the engine are reused (one engine call per stack per page load).
OUTPUTS_TTL_S = 30.0
# The outputs a reveal may return, with how a key inside them is named (``ui_passwords.mlflow``).
REVEALABLE = ("ui_passwords", "login_passwords", "api_tokens", "s3_access_key", "s3_secret_key", "backup_password")


def error_line(error: Exception) -> str:
    """One line for a user, as the CLI's handler prints it."""
    if isinstance(error, ConfigError):
        return "; ".join(error.problems)
    if isinstance(error, MloxError):
        return str(error)
    return f"{type(error).__name__}: {error}"


@dataclass
class StackRow:
    """One line of the stacks page."""

    name: str
    provider: str = "-"
    size: str = "-"
    monthly: Optional[float] = None
    currency: Optional[str] = None
    managed: Optional[float] = None
    health: str = "unknown"  # up | down | not deployed | unknown
    down: list[str] = field(default_factory=list)
    backup: Optional[dict] = None
    migration: Optional[dict] = None
    problem: Optional[str] = None


class Backend:
    """The UI's view of a project: its stacks and what can be done to them."""

    def __init__(self, project: Path, *, identity: Optional[Path] = None, ca: Optional[Path] = None,
                 timeout: float = 5.0, pulumi_command=None):
        self.project = Path(project)
        self.ca = ca  # --ca / MLOX_CA_FILE, as for mlox-iac status and env
        self.pulumi_command = pulumi_command  # None: the Pulumi CLI on PATH (tests give a recording double)
        self.identity = identity
        self.timeout = timeout
        self._outputs: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    # ----- reading ---------------------------------------------------------------------

    def stack_names(self) -> list[str]:
        """Every stack file of the project (``stacks/Pulumi.<name>.yaml``), by name."""
        folder = self.project / "stacks"
        return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in folder.glob("Pulumi.*.yaml")) if folder.is_dir() else []

    def config(self, name: str):
        """The validated stack file (``mlox-iac validate``)."""
        from mlox_iac import automation

        return automation.validate_stack(name, project_dir=self.project)

    def cost(self, config):
        """``mlox-iac cost``: the built-in prices (``--live`` stays a CLI option)."""
        from mlox_iac import pricing

        return pricing.report(config, pricing.builtin_prices(config), datetime.date.today())

    def outputs(self, name: str) -> dict[str, Any]:
        """The deployed stack's outputs with secrets in clear (``mlox-iac outputs --show-secrets``),
        reused for :data:`OUTPUTS_TTL_S`. Raises :class:`MloxError` when it is not deployed."""
        from mlox_iac import automation

        with self._lock:
            cached = self._outputs.get(name)
        if cached and time.monotonic() - cached[0] < OUTPUTS_TTL_S:
            return cached[1]
        values = automation.outputs(name, project_dir=self.project, show_secrets=True,
                                    pulumi_command=self.pulumi_command)
        if not values.get("urls"):
            raise MloxError(f"stack {name} has not been deployed yet: run mlox-iac up --stack {name}")
        with self._lock:
            self._outputs[name] = (time.monotonic(), values)
        return values

    def forget(self, name: str) -> None:
        """Drop the cached outputs (after an up, a restore, a move)."""
        with self._lock:
            self._outputs.pop(name, None)

    def masked_outputs(self, name: str) -> dict[str, Any]:
        from mlox_iac import connect

        return connect.mask_outputs(self.outputs(name))

    def ca_path(self, name: str, outputs: dict) -> Optional[Path]:
        """The root to trust (``mlox-iac env``/``status``: fetched over SSH once without a domain)."""
        from mlox_iac.cli.connect_cmds import ca_file

        return ca_file(outputs, name, self.ca, self.identity, False)

    def probe(self, name: str, outputs: dict) -> list:
        """``mlox-iac status``: every route's health and certificate."""
        from mlox_iac import connect

        return connect.probe(outputs, self.ca_path(name, outputs), timeout=self.timeout)

    def backup_status(self, name: str, outputs: dict) -> Optional[dict]:
        """The ``backup`` row of ``mlox-iac status`` (None without a backup repository)."""
        from mlox_iac.cli.connect_cmds import _backup_status

        return _backup_status(outputs, self.identity) if outputs.get("backup_repository") else None

    def snapshots(self, name: str, outputs: dict) -> list[dict]:
        """``mlox-iac backups``."""
        return self._backup_verb(outputs, "snapshots", [], lambda event: None)

    def migration(self, name: str) -> Optional[dict]:
        """The move's record (``.mlox/migrate/<stack>.json``), with its next phase."""
        from mlox_iac.migrations import stack as migrate

        return migrate.project_record_summary(self.project, name)

    def alerts(self, name: str, outputs: dict) -> Optional[list[dict]]:
        """The alerts firing now, from Alertmanager's API (None without monitoring)."""
        import base64
        import json
        import urllib.request

        from mlox_iac import connect

        url = (outputs.get("urls") or {}).get("alertmanager")
        if not url:
            return None
        password = (outputs.get("ui_passwords") or {}).get("alertmanager", "")
        token = base64.b64encode(f"{outputs.get('ui_user', 'admin')}:{password}".encode()).decode()
        request = urllib.request.Request(f"{url.rstrip('/')}/api/v2/alerts?active=true&silenced=false&inhibited=false",
                                         headers={"Authorization": f"Basic {token}", "Accept": "application/json"})
        context = connect._ssl_context(self.ca_path(name, outputs))
        with urllib.request.urlopen(request, timeout=self.timeout, context=context) as response:
            alerts = json.loads(response.read())
        return [{"name": a.get("labels", {}).get("alertname", "?"), "severity": a.get("labels", {}).get("severity", ""),
                 "summary": (a.get("annotations") or {}).get("summary") or (a.get("annotations") or {}).get("description", ""),
                 "since": a.get("startsAt", "")} for a in alerts]

    def compose_services(self, name: str, outputs: dict) -> list[str]:
        """The compose services ``mlox-iac logs`` accepts."""
        from mlox_iac.cli.connect_cmds import _compose_services

        return _compose_services(name, outputs)

    def logs(self, name: str, service: str, tail: int = 100) -> str:
        """``mlox-iac logs SERVICE --tail N``: the last lines of a service's logs."""
        from mlox_iac import connect
        from mlox_iac.cli.common import ssh_options

        outputs = self.outputs(name)
        argv = connect.logs_argv(outputs, service, allowed=self.compose_services(name, outputs), tail=tail,
                                 follow=False, tty=False, identity=self.identity, options=ssh_options())
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise MloxError(connect.host_key_problem(done.stderr) or
                            f"logs failed: {(done.stderr.strip().splitlines() or ['exit ' + str(done.returncode)])[-1]}")
        return done.stdout + done.stderr

    def env(self, name: str, outputs: dict) -> str:
        """``mlox-iac env``: the exports, secrets left out as comments."""
        from mlox_iac import connect

        ca = self.ca_path(name, outputs)
        exports = connect.env_exports(outputs, Path(ca).resolve() if ca else None, stack=name)
        return connect.render_exports(exports, "sh", show_secrets=False)

    def secrets(self, outputs: dict) -> list[str]:
        """The names of the secrets a reveal may return (``ui_passwords.mlflow``, ``s3_secret_key``)."""
        names = []
        for key in REVEALABLE:
            value = outputs.get(key)
            if isinstance(value, dict):
                names += [f"{key}.{k}" for k in sorted(value)]
            elif value:
                names.append(key)
        return names

    def reveal(self, name: str, secret: str) -> str:
        """One secret's value (``mlox-iac outputs --show-secrets``), for the page that asked."""
        outputs = self.outputs(name)
        if secret not in self.secrets(outputs):
            raise ConfigError([f"secret: {secret!r} is not a secret of stack {name}"])
        key, _, inner = secret.partition(".")
        value = outputs[key][inner] if inner else outputs[key]
        return str(value)

    def row(self, name: str) -> StackRow:
        """One stack's line of the stacks page: what ``validate``, ``cost`` and ``status`` say."""
        row = StackRow(name)
        try:
            config = self.config(name)
        except MloxError as error:
            row.problem = error_line(error)
            return row
        from mlox_iac.cli.init_cmd import _size_field

        row.provider = config.provider
        size = getattr(getattr(config, config.provider, None), _size_field(config.provider), None)
        row.size = "-" if size is None else f"{size} MiB" if config.provider == "onprem" else str(size)
        report = self.cost(config)
        row.monthly, row.currency, row.managed = report.total, report.currency, report.summary.managed
        try:
            row.migration = self.migration(name)
        except MloxError as error:  # an unreadable record: said, and the rest of the row still shown
            row.problem = error_line(error)
        try:
            outputs = self.outputs(name)
        except MloxError as error:
            row.health = "not deployed" if "not been deployed" in str(error) else "unknown"
            row.problem = None if row.health == "not deployed" else error_line(error)
            return row
        try:
            results = self.probe(name, outputs)
            row.down = [r.name for r in results if not r.up]
            row.health = "down" if row.down else "up"
            row.backup = self.backup_status(name, outputs)
        except MloxError as error:
            row.problem = error_line(error)
        return row

    def rows(self, names: Optional[list[str]] = None) -> list[StackRow]:
        """:meth:`row` of every stack, all at once (each waits on its engine call and its server)."""
        names = self.stack_names() if names is None else names
        if not names:
            return []
        with ThreadPoolExecutor(max_workers=min(len(names), 16)) as pool:
            return list(pool.map(self.row, names))

    # ----- changing (each runs as a job: see mlox_iac.ui.jobs) ---------------------------

    def _backup_verb(self, outputs: dict, verb: str, args: list[str], on_progress: Callable[[dict], None]):
        from mlox_iac import connect
        from mlox_iac.cli.common import ssh_options

        argv = connect.backup_argv(outputs, verb, args, identity=self.identity, options=ssh_options())
        return connect.run_backup_verb(argv, on_progress, goes_on=verb if verb in ("backup", "restore") else None)

    def backup(self, name: str, say: Callable[[str], None]) -> dict:
        """``mlox-iac backup``."""
        result = self._backup_verb(self.outputs(name), "backup", [],
                                   lambda e: say(f"[{e.get('phase', '')}] {e.get('message', '')}"))
        return result

    def restore(self, name: str, snapshot: str, say: Callable[[str], None]) -> dict:
        """``mlox-iac restore --snapshot ID --yes``."""
        result = self._backup_verb(self.outputs(name), "restore", ["--snapshot", snapshot],
                                   lambda e: say(f"[{e.get('phase', '')}] {e.get('message', '')}"))
        self.forget(name)
        return result

    def preview(self, name: str, on_event) -> Any:
        """``mlox-iac preview``: the engine's events go to ``on_event``."""
        from mlox_iac import automation

        return automation.preview(name, project_dir=self.project, on_event=on_event,
                                  pulumi_command=self.pulumi_command)

    def up(self, name: str, on_event) -> Any:
        """``mlox-iac up --yes``."""
        from mlox_iac import automation

        result = automation.up(name, project_dir=self.project, on_event=on_event, pulumi_command=self.pulumi_command)
        self.forget(name)
        return result

    def migrate(self, name: str, to: Optional[str], finish: bool, abort: bool, say: Callable[[str], None]) -> dict:
        """``mlox-iac migrate --to P`` / ``--finish`` / ``--abort`` (with ``--yes``)."""
        from mlox_iac import automation
        from mlox_iac.migrations import stack as steps
        from mlox_iac.cli.common import ssh_options
        from mlox_iac.providers import PROVIDERS

        if sum([finish, abort, to is not None]) != 1:
            raise ConfigError(["--to/--finish/--abort: give exactly one (allowed: --to PROVIDER, --finish, --abort)"])
        if to is not None and to not in PROVIDERS:
            raise ConfigError([f"--to: {to!r} is not a provider (allowed: {', '.join(PROVIDERS)})"])
        automation.validate_stack(name, project_dir=self.project)
        cli = self.pulumi_command or automation.default_pulumi_command("mlox-iac migrate")
        engine = steps.AutomationEngine(name, self.project, cli, None)
        servers = steps.default_servers(str(self.identity) if self.identity else None, tuple(ssh_options()),
                                        lambda event: say(str(event.get("message", ""))))
        try:
            if finish:
                steps.finish(name, project_dir=self.project, engine=engine, say=say)
            elif abort:
                steps.abort(name, project_dir=self.project, engine=engine, servers_for=servers, say=say)
            else:
                steps.run(name, to, project_dir=self.project, engine=engine, servers_for=servers, say=say)
        finally:
            self.forget(name)
        return steps.project_record_summary(self.project, name) or {}

    def create(self, answers: dict[str, str]) -> Path:
        """``mlox-iac init`` with these answers (no secrets: tokens and keys stay with the CLI)."""
        from mlox_iac.cli.init_cmd import _read_public_key, _split, stack_file_text

        name = (answers.get("stack") or "").strip()
        if not name:
            raise ConfigError(["--stack: required"])
        provider = (answers.get("provider") or "").strip()
        services = answers.get("services")
        path, _, text = stack_file_text(
            self.project, name, provider, location=answers.get("location") or None, size=answers.get("size") or None,
            domain=answers.get("domain") or None, acme_email=answers.get("acme_email") or None,
            services=_split([services]) if services else None,
            ssh_keys=[_read_public_key(k) for k in _split([answers.get("ssh_key") or ""])],
            admin_cidrs=_split([answers.get("admin_cidr") or ""]), host=answers.get("host") or None,
            user=answers.get("user") or None)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path
