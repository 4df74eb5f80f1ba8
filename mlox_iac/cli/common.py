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

from mlox_iac.errors import MloxError

StackOpt = typer.Option(None, "--stack", "-s", help="Stack name (its file is stacks/Pulumi.<name>.yaml)", envvar="MLOX_STACK")
FileOpt = typer.Option(None, "--file", "-f", help="Path of a stack file, instead of --stack")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON")
YesOpt = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (for CI)")


def project_dir() -> Path:
    """The project: ``MLOX_PROJECT_DIR``, else the nearest directory above cwd with Pulumi.yaml."""
    env = os.environ.get("MLOX_PROJECT_DIR")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "Pulumi.yaml").is_file():
            return candidate
    raise MloxError("no Pulumi.yaml here or above: run mlox-iac inside the project, or set MLOX_PROJECT_DIR")


def stack_path(stack: Optional[str], file: Optional[Path]) -> Path:
    """The stack file named by ``--stack`` or ``--file`` (exactly one of them)."""
    if file is not None and stack is not None:
        raise MloxError("give --stack or --file, not both")
    if file is not None:
        return file
    if stack is None:
        raise MloxError("no stack given: pass --stack NAME (or set MLOX_STACK)")
    path = project_dir() / "stacks" / f"Pulumi.{stack}.yaml"
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
