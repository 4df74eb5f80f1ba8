"""``outputs``, ``env``, ``status``, ``logs``, ``ssh``: using a deployed stack.

Each reads the stack's outputs from the engine (``--stack``), or from a JSON file
(``--outputs-file`` / ``MLOX_OUTPUTS_FILE``: what ``pulumi stack output --json
--show-secrets`` prints), which needs no Pulumi CLI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from mlox_iac.cli.common import (
    CaOpt, IdentityOpt, JsonOpt, identity_for, Out, OutputsFileOpt, ShowSecretsOpt, StackOpt, passphrase_prompt, project_dir,
    require_stack, ssh_options,
)
from mlox_iac.errors import MloxError


def read_outputs(stack: Optional[str], outputs_file: Optional[Path], show_secrets: bool = True) -> dict[str, Any]:
    """The stack's outputs: from ``--outputs-file`` when given, else from the engine."""
    from mlox_iac import automation, connect

    if outputs_file is not None:
        values = connect.load_outputs_file(outputs_file)
        return values if show_secrets else connect.mask_outputs(values)
    name = require_stack(stack)
    values = automation.outputs(name, project_dir=project_dir(), show_secrets=show_secrets,
                                passphrase_prompt=passphrase_prompt())
    return values if show_secrets else connect.mask_outputs(values)


def stack_key(stack: Optional[str], outputs: dict) -> str:
    """The stack's name, or (outputs from a file without --stack) its server's address as a name."""
    return stack or re.sub(r"[^A-Za-z0-9._-]", "_", str(outputs.get("server_address") or "server"))


def ca_file(outputs: dict, stack: Optional[str], ca: Optional[Path], identity: Optional[Path], refresh: bool) -> Optional[Path]:
    """The root certificate to trust: ``--ca`` when given (with a domain: a custom ACME CA's
    root; without: the internal CA's); without a domain, else ``.mlox/<stack>/caddy-root.crt``
    (fetched over SSH the first time); with a domain, else None (the system's roots)."""
    from mlox_iac import connect

    if ca is not None:
        return connect.check_ca_file(ca)
    if outputs.get("tls") != "internal":
        return None
    key = stack_key(stack, outputs)
    try:
        base = project_dir() / ".mlox"
    except MloxError:  # outside the project (a notebook's directory, say): a per-user cache
        base = Path.home() / ".cache" / "mlox-iac"
    dest = base / key / "caddy-root.crt"
    cached = dest.is_file() and not refresh
    path = connect.fetch_ca(outputs, dest, identity=identity, options=ssh_options(), refresh=refresh)
    if cached and not connect.ca_is_current(outputs, path):
        # The server was rebuilt since the root was cached: fetch the new one.
        path = connect.fetch_ca(outputs, dest, identity=identity, options=ssh_options(), refresh=True)
    return path


RefreshCaOpt = typer.Option(False, "--refresh-ca", help="Fetch the server's CA certificate again (after a rebuild)")
WriteProfileOpt = typer.Option(
    False, "--write-profile",
    help="Write the settings, secrets included, to the profile mlox-client reads (mode 600, in the user's config "
    "directory) instead of printing them")


def outputs(
    stack: Optional[str] = StackOpt, as_json: bool = JsonOpt, show_secrets: bool = ShowSecretsOpt,
    outputs_file: Optional[Path] = OutputsFileOpt,
) -> None:
    """Show a deployed stack's service URLs, user names, passwords and keys.

    Passwords and keys show as \\[secret] unless --show-secrets. With
    --outputs-file (or MLOX_OUTPUTS_FILE) the outputs come from a JSON
    file, as `pulumi stack output --json --show-secrets` writes it,
    instead of from the engine.

    Examples:
      mlox-iac outputs --stack prod
      mlox-iac outputs --stack prod --show-secrets --json | jq .ui_passwords
      mlox-iac outputs --outputs-file prod-outputs.json
    """
    out = Out(as_json)
    values = read_outputs(stack, outputs_file, show_secrets)

    def table(console, values):
        from rich.table import Table
        from rich.text import Text

        t = Table(show_header=True)
        t.add_column("output")
        t.add_column("value", overflow="fold")
        for key in sorted(values):
            value = values[key]
            if isinstance(value, dict):
                text = "\n".join(f"{k}: {v}" for k, v in value.items())
            elif isinstance(value, list):
                text = ", ".join(str(v) for v in value)
            else:
                text = str(value)
            t.add_row(key, Text(text))
        console.print(t)
        if not show_secrets:
            console.print(Text("Secrets show as [secret]; add --show-secrets to print them.", style="dim"))

    out.data(values, table)


def env(
    stack: Optional[str] = StackOpt, as_json: bool = JsonOpt, show_secrets: bool = ShowSecretsOpt,
    shell: str = typer.Option("sh", "--shell", help="Syntax: sh (bash, zsh), fish or powershell"),
    outputs_file: Optional[Path] = OutputsFileOpt, ca: Optional[Path] = CaOpt,
    identity: Optional[Path] = IdentityOpt, refresh_ca: bool = RefreshCaOpt,
    write_profile: bool = WriteProfileOpt,
) -> None:
    """Print shell exports so MLflow, boto3, notebooks and mlox-client connect at once.

    Sets what each service's clients read: MLFLOW_TRACKING_URI and
    MLFLOW_TRACKING_USERNAME/PASSWORD, AWS_ENDPOINT_URL_S3,
    AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, the feature server's,
    each served model's (MLOX_MODEL_<NAME>_*), and MLOX_STACK with the
    rest mlox-client needs. For stacks without a domain also
    MLOX_CA_FILE, MLFLOW_TRACKING_SERVER_CERT_PATH and AWS_CA_BUNDLE
    (the server's CA certificate, fetched over SSH once into
    .mlox/<stack>/caddy-root.crt; or give it with --ca); with a domain
    and a custom ACME CA, the same from --ca (that CA's root).
    Passwords and keys are printed only with --show-secrets, else as
    comments. With --write-profile the settings go, secrets included,
    to the profile mlox_client.connect() reads (mode 600:
    $XDG_CONFIG_HOME/mlox/<stack>.json, by default ~/.config/mlox/).

    Examples:
      eval "$(mlox-iac env --stack prod --show-secrets)"
      mlox-iac env --stack prod --show-secrets --shell fish | source
      mlox-iac env --stack prod --json
      mlox-iac env --stack prod --write-profile
    """
    from mlox_iac import connect

    out = Out(as_json)
    values = read_outputs(stack, outputs_file, show_secrets=True)
    identity = identity_for(identity, stack)
    ca_path = ca_file(values, stack, ca, identity, refresh_ca)
    if ca_path is not None:
        ca_path = Path(ca_path).resolve()  # the exports and the profile are used from other directories
        connect.write_ca_bundle(ca_path, connect.external_s3_ca(values))
    exports = connect.env_exports(values, ca_path, stack=stack_key(stack, values))
    if identity is not None:  # the key mlox-client's tunnels use too
        exports["MLOX_SSH_IDENTITY"] = str(Path(identity).expanduser().resolve())
    if write_profile:
        path = connect.write_profile(stack_key(stack, values), exports)
        if as_json:
            out.data({"profile": str(path)})
        else:
            out.err.print(f"wrote {path} (mode 600): mlox_client.connect() reads it", highlight=False)
        return
    if not show_secrets:
        exports = {k: (connect.SECRET if connect.is_secret_export(k) else v) for k, v in exports.items()}
    if as_json:
        out.data(exports)
        return
    sys.stdout.write(connect.render_exports(exports, shell, show_secrets=show_secrets))
    if not show_secrets and any(connect.is_secret_export(k) for k in exports):
        out.err.print("Passwords and keys are left out; add --show-secrets to print them.", style="dim")


def status(
    stack: Optional[str] = StackOpt, as_json: bool = JsonOpt, outputs_file: Optional[Path] = OutputsFileOpt,
    ca: Optional[Path] = CaOpt, identity: Optional[Path] = IdentityOpt, refresh_ca: bool = RefreshCaOpt,
    timeout: float = typer.Option(5.0, "--timeout", help="Seconds to wait for each endpoint"),
) -> None:
    """Probe every service endpoint of a deployed stack through the proxy.

    Checks each service's health over HTTPS (with the UI credentials
    where the proxy asks for them) and when its TLS certificate expires;
    an external S3 store or Postgres the stack uses is probed at its own
    endpoint, its TLS verified. Exits 1 when any endpoint is down.

    Examples:
      mlox-iac status --stack prod
      mlox-iac status --stack prod --json | jq '.[] | select(.up | not)'
    """
    from mlox_iac import connect

    out = Out(as_json)
    values = read_outputs(stack, outputs_file, show_secrets=True)
    identity = identity_for(identity, stack)
    results = connect.probe(values, ca_file(values, stack, ca, identity, refresh_ca), timeout=timeout)
    results += connect.probe_parts(values, timeout=timeout)
    backup = _backup_status(values, identity) if values.get("backup_repository") else None

    def table(console, rows):
        from rich.table import Table
        from rich.text import Text

        t = Table(show_header=True)
        for column in ("service", "url", "state", "http", "cert expires in", "detail"):
            t.add_column(column, overflow="fold")
        for r in results:
            state = Text("up", style="green") if r.up else Text("DOWN", style="red bold")
            t.add_row(Text(r.name), Text(r.url), state, str(r.status or "-"),
                      connect.format_duration(r.cert_expires_in_s), Text(r.detail))
        if backup is not None:
            state = Text("ok", style="green") if backup["up"] else Text("FAILED", style="red bold")
            t.add_row(Text("backup"), Text(backup["url"]), state, "-", "-", Text(backup["detail"]))
        console.print(t)

    rows = [r.to_dict() for r in results] + ([backup] if backup is not None else [])
    out.data(rows, table)
    down = [r.name for r in results if not r.up] + (["backup"] if backup is not None and not backup["up"] else [])
    if down:
        out.err.print(f"down: {', '.join(down)}")
        raise typer.Exit(1)


def _backup_status(values: dict, identity: Optional[Path]) -> dict:
    """The last backup's result and age, from the server (one status row: ``backup``)."""
    from mlox_iac import connect

    row: dict[str, Any] = {"name": "backup", "url": str(values["backup_repository"]), "up": False, "status": None}
    try:
        state = connect.run_backup_verb(connect.backup_argv(values, "status", identity=identity, options=ssh_options()))
    except MloxError as error:
        return {**row, "detail": f"unknown: {error}"}
    age = state.get("age_s")
    when = f"last good backup {connect.format_duration(age)} ago" if age is not None else "no successful backup yet"
    return {**row, "up": bool(state.get("ok")), "age_s": age, "interval_s": state.get("interval_s"),
            "last": state.get("last"), "detail": f"{state.get('detail')} ({when})"}


def _compose_services(stack: Optional[str], values: dict) -> list[str]:
    """The stack's compose services (from its file), else the enabled mlox services."""
    if stack:
        try:
            from mlox_iac import automation
            from mlox_iac.components.services.base import Context
            from mlox_iac.render.bundle import render_compose

            config = automation.validate_stack(stack, project_dir=project_dir())
            return sorted(render_compose(Context(config))["services"])
        except MloxError:
            pass
    return [str(s) for s in values.get("services") or []]


def logs(
    service: str = typer.Argument(..., help="Compose service, e.g. mlflow, caddy, postgres, seaweedfs"),
    stack: Optional[str] = StackOpt, tail: int = typer.Option(200, "--tail", "-n", help="Lines from the end"),
    follow: bool = typer.Option(False, "--follow", help="Keep printing new lines"),
    outputs_file: Optional[Path] = OutputsFileOpt, identity: Optional[Path] = IdentityOpt,
) -> None:
    """Print a service's container logs from its server.

    Runs `docker compose logs` on the server over the system ssh, as the
    stack's SSH user (with sudo when that is not root). SERVICE is one of
    the stack's compose services.

    Examples:
      mlox-iac logs mlflow --stack prod
      mlox-iac logs caddy --stack prod --follow --tail 50
    """
    from mlox_iac import connect

    values = read_outputs(stack, outputs_file, show_secrets=False)
    argv = connect.logs_argv(values, service, allowed=_compose_services(stack, values), tail=tail, follow=follow,
                             tty=follow and sys.stdin.isatty(), identity=identity_for(identity, stack),
                             options=ssh_options())
    try:
        code = subprocess.run(argv).returncode
    except FileNotFoundError:
        raise MloxError("ssh is not installed: install the OpenSSH client") from None
    if code != 0:
        raise typer.Exit(code)


def ssh(
    command: Optional[list[str]] = typer.Argument(None, help="Command to run instead of a login shell"),
    stack: Optional[str] = StackOpt, outputs_file: Optional[Path] = OutputsFileOpt,
    identity: Optional[Path] = IdentityOpt,
) -> None:
    """Open a shell on the stack's server, or run one command there.

    Uses the system ssh as the stack's SSH user; extra ssh options come
    from MLOX_SSH_OPTS, the key from --identity or MLOX_SSH_IDENTITY.

    Examples:
      mlox-iac ssh --stack prod
      mlox-iac ssh --stack prod -- docker ps
    """
    from mlox_iac import connect

    values = read_outputs(stack, outputs_file, show_secrets=False)
    argv = connect.ssh_argv(values, command or None, identity=identity_for(identity, stack), options=ssh_options(),
                            tty=bool(command) and sys.stdin.isatty())
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise MloxError("ssh is not installed: install the OpenSSH client") from None
