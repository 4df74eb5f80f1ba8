"""What every command shares: options, the project directory, and one output object."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from mlox_iac.errors import ConfigError, MloxError

StackOpt = typer.Option(None, "--stack", "-s", help="Stack name (its file is stacks/Pulumi.<name>.yaml)", envvar="MLOX_STACK")
FileOpt = typer.Option(None, "--file", "-f", help="Path of a stack file, instead of --stack")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON")
YesOpt = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (for CI)")
ShowSecretsOpt = typer.Option(False, "--show-secrets", help="Print passwords and keys instead of \\[secret]")
OutputsFileOpt = typer.Option(
    None, "--outputs-file", envvar="MLOX_OUTPUTS_FILE",
    help="Read the stack's outputs from this JSON file (pulumi stack output --json --show-secrets) "
    "instead of asking the engine; works without the Pulumi CLI",
)
IdentityOpt = typer.Option(None, "--identity", "-i", envvar="MLOX_SSH_IDENTITY", help="SSH private key for the server")
CaOpt = typer.Option(
    None, "--ca", envvar="MLOX_CA_FILE",
    help="Root certificate to trust: the server's internal CA (stacks without a domain; default: fetched over "
    "SSH once), or a custom ACME CA's (stacks with mlox:acme_ca; default: the system's roots)",
)


def project_dir() -> Path:
    """The project: ``MLOX_PROJECT_DIR``, else the nearest directory above cwd with Pulumi.yaml."""
    from mlox_iac.automation import find_project_dir

    return find_project_dir()


def interactive() -> bool:
    """Whether a person can answer questions (stdin is a terminal)."""
    return sys.stdin.isatty()


def require_stack(stack: Optional[str]) -> str:
    """The ``--stack`` value, or exit 2 saying how to give it."""
    if not stack:
        raise ConfigError(["--stack: required (pass --stack NAME or set MLOX_STACK)"])
    return stack


def identity_for(identity: Optional[Path], stack: Optional[str]) -> Optional[Path]:
    """The SSH key to log in with: ``--identity`` (or ``MLOX_SSH_IDENTITY``), else for a sandbox
    its own key (its machine admits it, and so does a server it moved to); None otherwise."""
    if identity is not None or not stack:
        return identity
    from mlox_iac.errors import MloxError
    from mlox_iac.sandbox import manage

    try:
        return manage.own_key(project_dir(), stack)
    except MloxError:  # not in a project: no sandbox either
        return None


def require_terminal(what: str) -> None:
    """Never prompt without a terminal: exit 2 suggesting ``--yes`` instead."""
    if not interactive():
        raise ConfigError([f"{what} needs confirmation and stdin is not a terminal: pass --yes to go ahead without asking"])


def passphrase_prompt():
    """A prompt for the stack's secrets passphrase on a terminal (asked once per run), else None."""
    if not interactive():
        return None
    answer: dict[str, str] = {}

    def ask(new: bool) -> str:
        if "value" not in answer:
            text = "New passphrase to encrypt the stack's secrets" if new else "Passphrase of the stack's secrets"
            answer["value"] = typer.prompt(text, hide_input=True, confirmation_prompt=new, err=True)
        return answer["value"]

    return ask


def ssh_options() -> list[str]:
    """Extra ``ssh`` options from ``MLOX_SSH_OPTS`` (e.g. ``-o UserKnownHostsFile=/dev/null``)."""
    import shlex

    return shlex.split(os.environ.get("MLOX_SSH_OPTS", ""))


def stack_path(stack: Optional[str], file: Optional[Path]) -> Path:
    """The stack file named by ``--stack`` or ``--file`` (exactly one of them)."""
    if file is not None and stack is not None:
        raise MloxError("give --stack or --file, not both")
    if file is not None:
        return file
    if stack is None:
        raise MloxError("no stack given: pass --stack NAME (or set MLOX_STACK)")
    from mlox_iac.paths import stack_file

    path = stack_file(project_dir(), stack)
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


@dataclass
class Out:
    """One way to print results: rich for people, JSON with ``--json``."""

    as_json: bool = False

    def __post_init__(self) -> None:
        # Not a terminal (pipes, CI logs): wide enough that tables do not wrap every cell.
        width = None if sys.stdout.isatty() else 200
        self.console = Console(highlight=False, soft_wrap=True, width=width)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def data(self, value: Any, human=None) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
        elif human is not None:
            human(self.console, value)
        else:
            self.console.print(value)

    def info(self, message: str) -> None:
        if not self.as_json:
            self.console.print(message)

    def progress(self, message: str) -> None:
        """Progress goes to stderr so stdout stays clean for data."""
        self.err.print(message)
