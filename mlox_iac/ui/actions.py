"""Every action the UI offers and the ``mlox-iac`` command it runs: its CLI twin.

The UI shows the twin beside each button; ``tests/ui/test_actions.py`` checks that each
twin parses as a real command of the Typer app with real options. A view that only reads
names the command that prints the same; one that changes something names the command that
does the same, with ``--yes`` where the UI asked for the confirmation itself.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Action:
    """One thing the UI does: its name, whether it changes anything, and its CLI twin."""

    name: str
    label: str
    twin: str  # a format string over the action's parameters
    changes: bool = False  # state-changing: a POST, with the CSRF token

    def command(self, **params: str) -> str:
        """The twin with these parameters, each quoted for a shell."""
        return self.twin.format(**{k: shlex.quote(str(v)) for k, v in params.items()})


ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("stacks", "Stacks", "mlox-iac status --stack {stack} --json"),
    Action("health", "Health", "mlox-iac status --stack {stack}"),
    Action("cost", "Cost", "mlox-iac cost --stack {stack}"),
    Action("outputs", "Credentials", "mlox-iac outputs --stack {stack}"),
    Action("reveal", "Reveal", "mlox-iac outputs --stack {stack} --show-secrets --json", changes=True),
    Action("env", "Connect your code", "mlox-iac env --stack {stack}"),
    Action("logs", "Logs", "mlox-iac logs {service} --stack {stack} --tail {tail}"),
    Action("backups", "Snapshots", "mlox-iac backups --stack {stack}"),
    Action("backup", "Back up now", "mlox-iac backup --stack {stack}", changes=True),
    Action("restore", "Restore", "mlox-iac restore --stack {stack} --snapshot {snapshot} --yes", changes=True),
    Action("validate", "Validate", "mlox-iac validate --stack {stack}"),
    Action("preview", "Preview", "mlox-iac preview --stack {stack}", changes=True),
    Action("up", "Deploy", "mlox-iac up --stack {stack} --yes", changes=True),
    Action("create", "Create stack", "mlox-iac init --stack {stack} --provider {provider} --size {size} "
                                     "--ssh-key {ssh_key} --admin-cidr {admin_cidr}", changes=True),
    Action("migrate", "Move to a new server", "mlox-iac migrate --stack {stack} --to {to} --yes", changes=True),
    Action("migrate-finish", "Finish the move", "mlox-iac migrate --stack {stack} --finish --yes", changes=True),
    Action("migrate-abort", "Abort the move", "mlox-iac migrate --stack {stack} --abort --yes", changes=True),
)}


def twin(name: str, **params: str) -> str:
    """The CLI twin of action ``name`` with ``params`` filled in."""
    return ACTIONS[name].command(**params)
