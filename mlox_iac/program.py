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
    _refuse_provider_change(stack, config)
    mlox = MloxStack("mlox", config, build_dir(stack))
    for key, value in mlox.outputs.items():
        pulumi.export(key, value)


def _refuse_provider_change(stack: str, config) -> None:
    """Stop ``pulumi up``/``preview`` run directly (not through mlox-iac) when ``mlox:provider``
    differs from what the deployed stack runs on. The program cannot read the state itself,
    so it asks the Pulumi CLI running it (``pulumi stack output``); under mocks, or when the
    CLI does not answer, there is nothing to compare with and the check is skipped. The same
    for a part (objects, postgres) put on the other side without ``migrate --part``."""
    import json
    import shutil
    import subprocess

    from pulumi.runtime.mocks import MockMonitor

    from mlox_iac.automation import part_change_problem, provider_change_problem

    if isinstance(pulumi.runtime.settings.get_monitor(), MockMonitor) or shutil.which("pulumi") is None:
        return
    try:
        # The engine runs the program in the project it deploys (which need not be this checkout).
        done = subprocess.run(["pulumi", "stack", "output", "--json", "--stack", stack], cwd=Path.cwd(),
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        deployed = json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        deployed = {}
    source = str(stack_file(PROJECT_DIR, stack).relative_to(PROJECT_DIR))
    deployed = deployed if isinstance(deployed, dict) else {}
    problem = (provider_change_problem(stack, deployed, config.provider, source)
               or part_change_problem(stack, deployed, config, source))
    if problem:
        raise pulumi.RunError(problem)  # printed as one line, without a traceback
