"""``mlox-iac sandbox`` through the real entry point: the refusals, each one line, before
anything is created; the sandbox's passphrase for every command. (Booting a machine and
deploying onto it: tests/e2e/test_sandbox.py, with the real engine.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import cli  # noqa: F401 (fixture used by name)

from mlox_iac.sandbox import manage, spec

INSTEAD = "without it, preview a stack with the engine instead (scripts/quickstart does)"


@pytest.fixture
def all_tools(monkeypatch):
    """This machine has every tool, and is root, whatever it really is."""
    monkeypatch.setattr(manage.os, "geteuid", lambda: 0)
    monkeypatch.setattr(manage.sys, "platform", "linux")
    monkeypatch.setattr(manage.shutil, "which", lambda exe, path=None: f"/usr/bin/{exe}")


def make_sandbox(project, name: str = "sandbox", preset: str = "core") -> spec.Record:
    """A sandbox's record, as `sandbox up` writes it first."""
    r = spec.Record(name=name, machine="mlxsb0000000", network="10.79", index=1, memory_mb=4096, preset=preset,
                    images="pull")
    spec.sandbox_dir(project, name).mkdir(parents=True)
    manage.save_record(project, r)
    return r


def nothing_created(project) -> bool:
    return not (project / ".mlox" / "sandbox").exists() and not (project / "stacks" / "Pulumi.sandbox.yaml").exists()


@pytest.mark.parametrize("command", ["up", "status", "down"])
def test_help_has_examples(cli, command):
    result = cli("sandbox", command, "--help")
    assert result.exit_code == 0 and "Example" in result.stdout and "--name" in result.stdout


@pytest.mark.parametrize("command", [("up",), ("down", "--yes")])
def test_a_name_of_a_stack_that_is_not_a_sandbox_is_refused(cli, mlox_project, all_tools, command):
    result = cli("sandbox", *command, "--name", "dev")  # mlox_project has stacks/Pulumi.dev.yaml
    assert result.exit_code == 2
    assert result.stderr == ("--name: dev is a stack that is not a sandbox (stacks/Pulumi.dev.yaml exists, "
                             ".mlox/sandbox/dev/sandbox.json does not); choose another name\n")
    assert (mlox_project / "stacks" / "Pulumi.dev.yaml").is_file()


def test_without_root_up_says_what_it_needs_in_one_line(cli, mlox_project, all_tools, monkeypatch):
    monkeypatch.setattr(manage.os, "geteuid", lambda: 1000)
    result = cli("sandbox", "up")
    assert result.exit_code == 1
    assert result.stderr == ("error: sandbox: needs root to boot a systemd-nspawn machine and give it a network and "
                             f"firewall rules (run: sudo mlox-iac sandbox up); {INSTEAD}\n")
    assert nothing_created(mlox_project)


def test_without_systemd_nspawn_up_names_the_package(cli, mlox_project, all_tools, monkeypatch):
    monkeypatch.setattr(manage.shutil, "which", lambda exe, path=None: None if exe == "systemd-nspawn" else f"/bin/{exe}")
    result = cli("sandbox", "up", "--preset", "full")
    assert result.exit_code == 1
    assert result.stderr == f"error: sandbox: needs systemd-nspawn (apt-get install systemd-container); {INSTEAD}\n"
    assert nothing_created(mlox_project)


def test_on_macos_up_points_at_the_docs(cli, mlox_project, all_tools, monkeypatch):
    monkeypatch.setattr(manage.sys, "platform", "darwin")
    result = cli("sandbox", "up")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "docs/sandbox.md" in result.stderr


@pytest.mark.parametrize("args, message", [
    (("--preset", "huge"), "--preset: 'huge' is not allowed (allowed: core, full)"),
    (("--name", "a/b"), "--name: 'a/b' is not allowed (allowed: 1-40 letters, digits, '_', '.' and '-', "
                        "starting with a letter or digit)"),
    (("--memory", "1024"), "--memory: 1024 MiB is too little for the core preset (allowed: "
                           f"{manage.needed_memory_mb('core')} or more)"),
], ids=["preset", "name", "memory"])
def test_bad_options_exit_2_before_anything_is_made(cli, mlox_project, all_tools, args, message):
    result = cli("sandbox", "up", *args)
    assert (result.exit_code, result.stderr) == (2, message + "\n")
    assert nothing_created(mlox_project)


def test_a_sandbox_keeps_its_preset(cli, mlox_project, all_tools):
    make_sandbox(mlox_project)
    result = cli("sandbox", "up", "--preset", "full")
    assert result.exit_code == 2
    assert result.stderr == ("--preset: sandbox sandbox has core; to change it, remove the sandbox first "
                             "(mlox-iac sandbox down --name sandbox) or edit stacks/Pulumi.sandbox.yaml\n")


def test_down_and_status_without_a_sandbox(cli, mlox_project, all_tools):
    down = cli("sandbox", "down", "--yes")
    assert (down.exit_code, down.stdout) == (0, "no sandbox sandbox in this project: nothing to remove\n")
    status = cli("sandbox", "status", "--json")
    assert status.exit_code == 1
    assert status.stderr == ("error: no sandbox sandbox in this project "
                             "(create it: sudo mlox-iac sandbox up --name sandbox)\n")


def test_down_without_yes_and_without_a_terminal_suggests_yes(cli, mlox_project, all_tools):
    make_sandbox(mlox_project, "lab")
    result = cli("sandbox", "down", "--name", "lab")
    assert result.exit_code == 2
    assert result.stderr == ("mlox-iac sandbox down needs confirmation and stdin is not a terminal: "
                             "pass --yes to go ahead without asking\n")
    assert spec.record_path(mlox_project, "lab").is_file()


def test_every_command_on_a_sandbox_uses_its_own_passphrase(mlox_project, monkeypatch):
    from mlox_iac import automation

    folder = spec.sandbox_dir(mlox_project, "sandbox")
    folder.mkdir(parents=True)
    spec.passphrase_path(mlox_project, "sandbox").write_text("the sandbox's own\n")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "the user's for other stacks")
    opts = automation.workspace_options(mlox_project, "sandbox")
    assert opts.env_vars["PULUMI_CONFIG_PASSPHRASE"] == "the user's for other stacks"  # no record: not a sandbox
    (folder / spec.RECORD).write_text(json.dumps({}))
    opts = automation.workspace_options(mlox_project, "sandbox")
    assert opts.env_vars["PULUMI_CONFIG_PASSPHRASE"] == "the sandbox's own"
    assert repr(opts.env_vars["PULUMI_CONFIG_PASSPHRASE"]) == "'[secret]'"
    assert automation.workspace_options(mlox_project, "dev").env_vars["PULUMI_CONFIG_PASSPHRASE"] == \
        "the user's for other stacks"


def test_registry_check_can_be_decided_by_the_environment(monkeypatch):
    monkeypatch.setenv("MLOX_SANDBOX_IMAGES", "standins")
    assert manage.registry_reachable() == (False, "MLOX_SANDBOX_IMAGES=standins")
    monkeypatch.setenv("MLOX_SANDBOX_IMAGES", "pull")
    assert manage.registry_reachable()[0] is True


def test_sandbox_images_of_a_preset_are_the_compose_files_and_the_data_tools():
    # rclone: a migrate (or restore) stages the buckets with it, on the sandbox as on a server.
    assert manage.preset_images("core") == sorted(["caddy:2.11.7", "chrislusf/seaweedfs:4.48",
                                                   "ghcr.io/mlflow/mlflow:v3.17.2-full", "postgres:15.18-bookworm",
                                                   "rclone/rclone:1.60.1"])
    assert set(manage.preset_images("core")) < set(manage.preset_images("full"))
    # Images built on the machine are not pulled: what it needs is what they start FROM.
    full = manage.preset_images("full")
    assert {"apache/airflow:3.3.2", "quay.io/jupyter/minimal-notebook:lab-4.6.6"} <= set(full)
    assert not [image for image in full if image.startswith("mlox-iac/")]
    assert "restic/restic:0.19.1" not in full  # only a stack that backs up needs it


MOVE_CASES = {
    # admin_cidrs, target host (on-prem move), refused?
    "only-the-sandbox-network": (["10.79.1.0/24"], None, True),
    "a-narrower-part-of-it": (["10.79.1.1/32"], None, True),
    "the-users-own-address-too": (["10.79.1.0/24", "198.51.100.7/32"], None, False),
    "another-machine-on-the-sandbox-network": (["10.79.1.0/24"], "10.79.1.9", False),
    "a-server-elsewhere": (["10.79.1.0/24"], "192.0.2.50", True),
    "ipv6-admin-address": (["10.79.1.0/24", "2001:db8::7/128"], None, False),
}


@pytest.mark.parametrize("case", sorted(MOVE_CASES))
def test_moving_a_sandbox_that_would_lock_this_machine_out_is_refused(case, tmp_path):
    cidrs, host, refused = MOVE_CASES[case]
    record = make_sandbox(tmp_path)
    problem = spec.move_problem(record, cidrs, host, "stacks/Pulumi.sandbox.yaml")
    assert (problem is not None) == refused
    if refused:
        assert problem == ("stacks/Pulumi.sandbox.yaml: mlox:ssh.admin_cidrs: sandbox sandbox admits SSH only from its "
                           "own network (10.79.1.0/24), so a server it moves to would refuse this machine; add the "
                           "address you reach servers from (for example your public address as /32), then run migrate "
                           "again")


def test_migrate_of_a_locked_in_sandbox_is_one_line_and_changes_nothing(cli, mlox_project):
    from conftest import write_stack

    record = make_sandbox(mlox_project)
    settings = spec.stack_settings(record, ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ7eBjBSRNkuS+BTDG+3vvqteolSI3QO1RHW674qdPL t"])
    settings["onprem"]["private_key"] = "KEY"  # a secure: value in the file
    path = write_stack(mlox_project / "stacks", settings, name="sandbox")
    before = path.read_text()
    result = cli("migrate", "--stack", "sandbox", "--to", "hetzner", "--yes")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("stacks/Pulumi.sandbox.yaml: mlox:ssh.admin_cidrs: sandbox sandbox admits SSH only "
                                    "from its own network (10.79.1.0/24)")
    assert result.stderr.count("\n") == 1 and path.read_text() == before
    assert not (mlox_project / ".mlox" / "sandbox").joinpath("migrations").exists()


def sandbox_in_a_move(mlox_project, how: str) -> None:
    """A sandbox whose stack is being migrated: a migration record, or (a record lost) the
    move's settings still in the stack file."""
    from conftest import write_stack

    from mlox_iac.migrations import stack as migrate

    record = make_sandbox(mlox_project)
    settings = spec.stack_settings(record, ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ7eBjBSRNkuS+BTDG+3vvqteolSI3QO1RHW674qdPL t"])
    settings["onprem"]["private_key"] = "KEY"
    if how == "record":
        migrate.save_record(mlox_project, migrate.Record("sandbox", "onprem", "onprem", "main", "b"))
    else:
        settings["migration"] = {"to": "hetzner", "server": "b", "state": "cutover"}
    write_stack(mlox_project / "stacks", settings, name="sandbox")


@pytest.mark.parametrize("how", ["record", "stack-file"])
def test_down_during_a_move_is_refused_in_one_line_and_removes_nothing(cli, mlox_project, all_tools, how):
    # Until --finish the stack file still names the sandbox: down would destroy the stack and its new server.
    sandbox_in_a_move(mlox_project, how)
    result = cli("sandbox", "down", "--yes")
    assert result.exit_code == 1
    to = "onprem" if how == "record" else "hetzner"
    assert result.stderr == (f"error: sandbox sandbox: its stack is being migrated (to {to}); finish the move first "
                             "(mlox-iac migrate --stack sandbox --finish, then sandbox down removes only the machine) "
                             "or go back to the sandbox (mlox-iac migrate --stack sandbox --abort)\n")
    assert spec.record_path(mlox_project, "sandbox").is_file()
    assert (mlox_project / "stacks" / "Pulumi.sandbox.yaml").is_file()


@pytest.mark.parametrize("how", ["record", "stack-file"])
def test_up_during_a_move_is_refused_in_one_line_and_changes_nothing(cli, mlox_project, all_tools, how, monkeypatch):
    # The move owns the stack until --finish or --abort: sandbox up would deploy it under the move.
    from mlox_iac import automation

    sandbox_in_a_move(mlox_project, how)
    stack = mlox_project / "stacks" / "Pulumi.sandbox.yaml"
    before = stack.read_text()
    monkeypatch.setattr(automation, "up", lambda *a, **k: pytest.fail("sandbox up deployed during a move"))
    monkeypatch.setattr(manage, "ensure_host", lambda *a, **k: pytest.fail("sandbox up booted its machine during a move"))
    result = cli("sandbox", "up")
    assert result.exit_code == 1
    to = "onprem" if how == "record" else "hetzner"
    assert result.stderr == (f"error: sandbox sandbox: its stack is being migrated (to {to}); sandbox up would deploy "
                             "it under the move: finish the move (mlox-iac migrate --stack sandbox --finish) or go back "
                             "to the sandbox (mlox-iac migrate --stack sandbox --abort)\n")
    assert stack.read_text() == before


def test_down_of_a_moved_stack_keeps_its_passphrase_for_every_later_command(mlox_project, monkeypatch):
    from mlox_iac import automation

    record = make_sandbox(mlox_project, "trial")
    spec.passphrase_path(mlox_project, "trial").write_text("the sandbox's own\n")
    known = mlox_project / ".mlox" / "known_hosts" / f"{record.address}_22"
    known.parent.mkdir(parents=True)
    known.write_text("10.79.1.2 ssh-ed25519 AAAA\n")
    cleanup = spec.cleanup_list(mlox_project, record, stack_moved=True)
    manage.remove_paths(mlox_project, cleanup)
    assert not [p for p in cleanup.paths if p.exists()]
    kept = spec.kept_passphrase_path(mlox_project, "trial")
    assert kept.read_text() == "the sandbox's own\n" and kept.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "the user's for other stacks")
    assert automation.workspace_options(mlox_project, "trial").env_vars["PULUMI_CONFIG_PASSPHRASE"] == \
        "the sandbox's own"
    assert automation.workspace_options(mlox_project, "dev").env_vars["PULUMI_CONFIG_PASSPHRASE"] == \
        "the user's for other stacks"


def test_migrate_of_a_sandbox_logs_in_with_its_own_key_unless_told_otherwise(cli, mlox_project, monkeypatch):
    from conftest import write_stack

    from mlox_iac import automation
    from mlox_iac.migrations import stack as migrate

    record = make_sandbox(mlox_project)
    spec.key_path(mlox_project, "sandbox").write_text("KEY\n")
    settings = spec.stack_settings(record, ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ7eBjBSRNkuS+BTDG+3vvqteolSI3QO1RHW674qdPL t"])
    settings["onprem"]["private_key"] = "KEY"
    settings["ssh"]["admin_cidrs"].append("198.51.100.7/32")  # the user's own address: not refused
    write_stack(mlox_project / "stacks", settings, name="sandbox")
    used = []

    def fake_run(stack, to, *, project_dir, engine, servers_for, say):
        used.append(servers_for({"old": {}}).identity)
        return migrate.Record(stack, "onprem", to, "main", "b", done={p: 0.0 for p in migrate.PHASES})

    monkeypatch.setattr(automation, "default_pulumi_command", lambda command: None)
    monkeypatch.setattr(migrate, "run", fake_run)
    assert cli("migrate", "--stack", "sandbox", "--to", "hetzner", "--yes").exit_code == 0
    assert cli("migrate", "--stack", "sandbox", "--to", "hetzner", "--yes", "--identity", "/keys/mine").exit_code == 0
    assert used == [str(spec.key_path(mlox_project, "sandbox")), "/keys/mine"]


def test_commands_that_log_in_use_a_sandboxs_own_key_without_identity(mlox_project, monkeypatch):
    from mlox_iac.cli.common import identity_for

    monkeypatch.chdir(mlox_project)
    make_sandbox(mlox_project)
    key = spec.key_path(mlox_project, "sandbox")
    key.write_text("KEY")
    assert identity_for(None, "sandbox") == key
    assert identity_for(Path("/keys/mine"), "sandbox") == Path("/keys/mine")  # --identity wins
    assert identity_for(None, "dev") is None  # not a sandbox: ssh's own keys
