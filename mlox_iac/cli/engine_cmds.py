"""``up``, ``preview``, ``refresh``, ``destroy``: the engine, with live progress and a summary."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from mlox_iac.cli.common import (
    IdentityOpt, JsonOpt, identity_for, Out, ShowSecretsOpt, StackOpt, YesOpt, passphrase_prompt, project_dir, require_stack,
    require_terminal, ssh_options,
)
from mlox_iac.errors import MloxError

ORDER = ("create", "update", "replace", "create-replacement", "delete-replaced", "delete", "refresh", "read", "same")


class Interrupted(MloxError):
    """Ctrl-C during an engine operation: the engine stopped after the steps under way."""

    exit_code = 130


def _run(out: Out, title: str, operation: str, call: Callable[[Any], Any], expected_total: int | None = None,
         stack: str = ""):
    """Run one automation call under a progress display; on failure show the engine's errors.

    Ctrl-C reaches the Pulumi CLI too (same process group): it finishes the steps under way,
    saves the state and stops. This process waits for that instead of dying first (which
    would cut the engine's output pipe and could leave operations pending in the state)."""
    from mlox_iac.automation import EngineError
    from mlox_iac.cli.progress import ProgressDisplay, ProgressState

    state = ProgressState(operation, expected_total)
    interrupted: list[bool] = []

    def on_sigint(signum, frame) -> None:
        if not interrupted:
            out.err.print("interrupting: the engine finishes the steps under way, then stops (a second Ctrl-C "
                          "forces it, which can leave operations pending)", markup=False)
        elif len(interrupted) == 1:
            raise KeyboardInterrupt
        interrupted.append(True)

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        with ProgressDisplay(out.err, state, title) as display:
            try:
                return call(display.on_event)
            except EngineError:
                if interrupted:
                    raise Interrupted(f"interrupted: the engine stopped after the steps under way and saved the "
                                      f"state; run mlox-iac {'up' if operation == 'update' else operation} "
                                      f"--stack {stack} to complete it") from None
                for line in state.errors[-5:]:
                    out.err.print(f"  {line}", markup=False)
                raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _changes_text(changes: dict[str, int], planned: bool = False) -> str:
    """``14 created, 1 unchanged`` (or ``14 to create`` for a preview)."""
    from mlox_iac.cli.progress import DONE

    ops = sorted(changes, key=lambda op: ORDER.index(op) if op in ORDER else len(ORDER))
    words = [f"{changes[op]} " + ("unchanged" if op == "same" else f"to {op}" if planned else DONE.get(op, op))
             for op in ops]
    return ", ".join(words) or "no resources"


def render_summary(console, data: dict) -> None:
    """The end of every engine command: changes, service URLs, what to run next."""
    from rich.table import Table
    from rich.text import Text

    verb = {"update": "Deployed", "preview": "Preview of", "refresh": "Refreshed", "destroy": "Destroyed"}[data["operation"]]
    console.print(f"[bold]{verb} stack {data['stack']}[/bold] in {data['duration_s']:.0f}s: "
                  f"{_changes_text(data['changes'], planned=data['operation'] == 'preview')}")
    urls = data.get("outputs", {}).get("urls") or {}
    if isinstance(urls, dict) and urls:
        table = Table(title="Services", title_justify="left", show_header=True)
        table.add_column("service")
        table.add_column("url", overflow="fold")
        for name, url in urls.items():
            table.add_row(Text(name), Text(str(url)))
        console.print(table)
        user = data["outputs"].get("ui_user")
        if user:
            console.print(f"UI user: {user}; passwords: mlox-iac outputs --stack {data['stack']} --show-secrets")
        console.print(f'Connect your code: eval "$(mlox-iac env --stack {data["stack"]} --show-secrets)"')


def drift_file(project: Path, stack: str) -> Path:
    """Where ``refresh`` leaves the drift it found for the next ``up`` to repair."""
    return project / ".mlox" / stack / "drift.json"


def server_drift(name: str, project, cli, prompt, identity) -> tuple[dict, list[str] | None]:
    """(outputs, drift) of a deployed stack: the long-running services whose containers are
    gone or stopped on the server (None when nothing is deployed)."""
    from mlox_iac import automation, connect

    outputs = automation.outputs(name, project_dir=project, pulumi_command=cli, passphrase_prompt=prompt)
    if not outputs.get("server_address") or outputs.get("server_address") == automation.SECRET:
        return outputs, None
    return outputs, connect.check_drift(outputs, identity=identity, options=ssh_options())


def _prepare(stack: Optional[str], command: str, validate: bool = True, confirm: bool = False):
    """Everything that can fail before the engine runs, in order: the stack file, the CLI,
    a terminal to confirm on (when ``confirm``), the passphrase.
    Returns (stack, project, pulumi command, passphrase prompt)."""
    from mlox_iac import automation

    name = require_stack(stack)
    project = project_dir()
    if validate:
        automation.validate_for_engine(name, project_dir=project)
    else:
        automation.require_stack_file(project, name)
    cli = automation.default_pulumi_command(command)
    if confirm:
        require_terminal(command)
    prompt = passphrase_prompt()
    automation.workspace_options(project, name, pulumi_command=cli, passphrase_prompt=prompt)
    return name, project, cli, prompt


ReplaceOpt = typer.Option(None, "--replace", metavar="NAME",
                          help="Re-create this resource (repeatable): a password gets a new value, "
                               "main-host-keys records a rebuilt server's new SSH host keys")


def up(stack: Optional[str] = StackOpt, yes: bool = YesOpt, as_json: bool = JsonOpt, show_secrets: bool = ShowSecretsOpt,
       replace: Optional[list[str]] = ReplaceOpt) -> None:
    """Create or update a stack's server and services.

    Without --yes it previews first and asks before changing anything
    (on a terminal; without one, pass --yes). Shows live progress on
    stderr, then the changes and the service URLs.

    Examples:
      mlox-iac up --stack prod
      mlox-iac up --stack prod --yes --json > deploy.json
      mlox-iac up --stack prod --replace caddy-ui-mlflow   # rotate that password

    Drift that `mlox-iac refresh` found on the server (a service whose
    container was removed or stopped by hand) is repaired.
    """
    from mlox_iac import automation

    out = Out(as_json)
    name, project, cli, prompt = _prepare(stack, "mlox-iac up", confirm=not yes)
    replace = list(replace or [])
    found = drift_file(project, name)
    drift = json.loads(found.read_text()) if found.is_file() else None
    if drift:
        out.err.print(f"repairing the drift mlox-iac refresh found: {'; '.join(drift['services'])}", markup=False)
        replace.append(f"{drift['server']}-bundle-compose-up")
    expected = None
    if not yes:
        preview = _run(out, f"Previewing {name}", "preview", lambda on_event: automation.preview(
            name, project_dir=project, on_event=on_event, pulumi_command=cli, passphrase_prompt=prompt), stack=name)
        out.err.print(f"Changes: {_changes_text(preview.changes, planned=True)}")
        if preview.changed and not typer.confirm("Apply these changes?", default=False, err=True):
            raise automation.Aborted("aborted: nothing was changed")
        expected = sum(preview.changes.values())
    result = _run(out, f"Deploying {name}", "update", lambda on_event: automation.up(
        name, project_dir=project, on_event=on_event, show_secrets=show_secrets, pulumi_command=cli,
        passphrase_prompt=prompt, replace=replace or None), expected, stack=name)
    if drift:
        found.unlink()
    out.data(result.to_dict(), render_summary)


def preview(stack: Optional[str] = StackOpt, as_json: bool = JsonOpt) -> None:
    """Show what `mlox-iac up` would change, changing nothing.

    Unlike `mlox-iac plan`, this asks the real providers: it needs the
    Pulumi CLI and the provider's credentials.

    Examples:
      mlox-iac preview --stack prod
      mlox-iac preview --stack prod --json | jq .changes
    """
    from mlox_iac import automation

    out = Out(as_json)
    name, project, cli, prompt = _prepare(stack, "mlox-iac preview")
    result = _run(out, f"Previewing {name}", "preview", lambda on_event: automation.preview(
        name, project_dir=project, on_event=on_event, pulumi_command=cli, passphrase_prompt=prompt), stack=name)
    out.data(result.to_dict(), render_summary)


def refresh(stack: Optional[str] = StackOpt, yes: bool = YesOpt, as_json: bool = JsonOpt,
            identity: Optional[Path] = IdentityOpt) -> None:
    """Read the real state of every resource back into the stack's state.

    Use it after changing resources outside mlox-iac (in the provider's
    console, say). Asks first unless --yes. Then asks the server (over
    ssh) for drift the engine cannot see: services whose containers were
    removed or stopped by hand (the next `mlox-iac up` repairs them).

    Examples:
      mlox-iac refresh --stack prod
      mlox-iac refresh --stack prod --yes
    """
    from mlox_iac import automation

    out = Out(as_json)
    name, project, cli, prompt = _prepare(stack, "mlox-iac refresh", confirm=not yes)
    if not yes:
        if not typer.confirm(f"Refresh the state of stack {name} from the real resources?", default=False, err=True):
            raise automation.Aborted("aborted: nothing was changed")
    result = _run(out, f"Refreshing {name}", "refresh", lambda on_event: automation.refresh(
        name, project_dir=project, on_event=on_event, pulumi_command=cli, passphrase_prompt=prompt), stack=name)
    data = result.to_dict()
    try:
        outputs, drift = server_drift(name, project, cli, prompt, identity_for(identity, name))
    except MloxError as error:
        outputs, drift = {}, None
        out.err.print(f"not checked for drift on the server: {error}", markup=False)
    data["drift"] = drift
    found = drift_file(project, name)
    if drift:
        found.parent.mkdir(parents=True, exist_ok=True)
        found.write_text(json.dumps({"server": outputs.get("server") or "main", "services": drift}))
        for line in drift:
            out.err.print(f"drift: {line} (the next mlox-iac up --stack {name} repairs it)", markup=False)
    elif drift is not None and found.is_file():
        found.unlink()
    out.data(data, render_summary)


def destroy(stack: Optional[str] = StackOpt, yes: bool = YesOpt, as_json: bool = JsonOpt) -> None:
    """Delete the stack's server and every other resource it created.

    Asks you to type the stack name unless --yes. Data volumes survive
    while mlox:keep_data_on_destroy is true (the default). The stack file
    and its (now empty) state stay.

    Examples:
      mlox-iac destroy --stack dev
      mlox-iac destroy --stack dev --yes
    """
    from mlox_iac import automation

    out = Out(as_json)
    name, project, cli, prompt = _prepare(stack, "mlox-iac destroy", validate=False, confirm=not yes)
    if not yes:
        typed = typer.prompt(f"This deletes every resource of stack {name}. Type the stack name to confirm", err=True)
        if typed.strip() != name:
            raise automation.Aborted(f"aborted: {typed.strip()!r} is not {name!r}; nothing was deleted")
    result = _run(out, f"Destroying {name}", "destroy", lambda on_event: automation.destroy(
        name, project_dir=project, on_event=on_event, pulumi_command=cli, passphrase_prompt=prompt), stack=name)
    out.data(result.to_dict(), render_summary)
