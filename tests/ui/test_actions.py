"""Every action of the UI has a CLI twin that is a real ``mlox-iac`` command with real
options, and every state-changing route of the app is one of those actions."""

from __future__ import annotations

import re
import shlex

import pytest
import typer.main

from mlox_iac.cli.main import app as cli_app
from mlox_iac.ui.actions import ACTIONS

PLACEHOLDERS = {"stack": "prod", "service": "mlflow", "tail": "100", "snapshot": "4f2a91c0", "provider": "hetzner",
                "size": "cx23", "ssh_key": "key.pub", "admin_cidr": "203.0.113.7", "to": "digitalocean"}


def _resolve(argv: list[str]):
    """The Click command the argv names, and the rest of the argv."""
    command = typer.main.get_command(cli_app)
    assert argv[0] == "mlox-iac"
    rest = argv[1:]
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_each_actions_twin_is_a_real_command_with_real_options(name):
    action = ACTIONS[name]
    fields = set(re.findall(r"{(\w+)}", action.twin))
    assert fields <= set(PLACEHOLDERS), fields - set(PLACEHOLDERS)
    argv = shlex.split(action.command(**{k: PLACEHOLDERS[k] for k in fields}))
    command, rest = _resolve(argv)
    assert not hasattr(command, "commands"), f"{action.twin}: names a group, not a command"
    # Click parses the rest exactly as the CLI would: unknown options and missing arguments fail here.
    context = command.make_context("mlox-iac", list(rest), resilient_parsing=False)
    assert context.params.get("stack") == "prod", action.twin
    if action.changes and name not in ("reveal", "preview", "create", "backup"):
        assert context.params.get("yes") is True, f"{action.twin}: the UI confirms itself, so the twin says --yes"


def test_every_post_route_of_the_app_is_an_action(backend, guard):
    from mlox_iac.ui.app import create_app

    app = create_app(backend, guard)
    posts = sorted(r.path for r in app.routes if "POST" in getattr(r, "methods", set()))
    assert posts == ["/new", "/stacks/{name}/backup", "/stacks/{name}/migrate", "/stacks/{name}/preview",
                     "/stacks/{name}/restore", "/stacks/{name}/reveal", "/stacks/{name}/up"]
    named = {"new": "create", "backup": "backup", "migrate": "migrate", "preview": "preview", "restore": "restore",
             "reveal": "reveal", "up": "up"}
    for path in posts:
        action = ACTIONS[named[path.rsplit("/", 1)[-1]]]
        assert action.changes, path


from ui_fixtures import backend, guard, ui_env  # noqa: E402,F401 (fixtures)
