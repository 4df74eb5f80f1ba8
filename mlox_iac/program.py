"""The Pulumi program: validate the stack's settings once, then build the stack.

Run by ``pulumi up`` (through ``__main__.py``), by the Automation API, and in-process
under mocks by ``mlox-iac plan``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pulumi

from mlox_iac.config.loader import read_runtime_config, validate
from mlox_iac.paths import stack_file

PROJECT_DIR = Path(__file__).resolve().parent.parent


def build_dir(stack: str) -> Path:
    """Where the rendered bundle is written before it is copied (inside the project)."""
    base = Path(os.environ.get("MLOX_BUILD_DIR", PROJECT_DIR / ".mlox" / "build"))
    return base / stack


def program() -> None:
    from mlox_iac.components.stack import MloxStack

    stack = pulumi.get_stack()
    raw, secret = read_runtime_config()
    config = validate(raw, secret, str(stack_file(PROJECT_DIR, stack).relative_to(PROJECT_DIR)), stack)
    mlox = MloxStack("mlox", config, build_dir(stack))
    for key, value in mlox.outputs.items():
        pulumi.export(key, value)
