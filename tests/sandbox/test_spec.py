"""The sandbox without a machine: its record, names, sizes, networks, stack file, refusals
and the list of what ``sandbox down`` removes (``mlox_iac/sandbox/spec.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlox_iac.sandbox import spec
from mlox_iac.sandbox.spec import Record

PROJECT = Path("/work/project")
INSTEAD = "without it, preview a stack with the engine instead (scripts/quickstart does)"
ALL_TOOLS = ("systemd-nspawn", "debootstrap", "ip", "iptables", "nsenter", "ssh", "ssh-keygen")


def record(**changes) -> Record:
    values = dict(name="sandbox", machine="mlxsb1234567", network="10.79", index=3, memory_mb=4096, preset="core",
                  images="standins")
    values.update(changes)
    return Record(**values)


# ----- what down removes ---------------------------------------------------------------

def test_cleanup_list_names_the_machine_its_network_rules_cgroup_stack_and_files():
    cleanup = spec.cleanup_list(PROJECT, record())
    assert cleanup.describe() == [
        "machine mlxsb1234567 (systemd-nspawn)",
        "network interface ve-mlxsb1234567",
        "iptables -t nat POSTROUTING -s 10.79.3.0/24 ! -d 10.79.0.0/16 -j MASQUERADE",
        "iptables -t filter FORWARD -i ve-mlxsb1234567 -j ACCEPT",
        "iptables -t filter FORWARD -o ve-mlxsb1234567 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "cgroup mlox-sandbox-mlxsb1234567",
        "stack sandbox (engine destroy, then pulumi stack rm)",
        "/work/project/.mlox/sandbox/sandbox",
        "/work/project/stacks/Pulumi.sandbox.yaml",
        "/work/project/.mlox/sandbox/caddy-root.crt",
        "/work/project/.mlox/sandbox/caddy-root.crt.bundle.pem",
        "/work/project/.mlox/sandbox/drift.json",
        "/work/project/.mlox/build/sandbox",
        "/work/project/.mlox/known_hosts/10.79.3.2_22",
        "/work/project/.mlox/migrate/sandbox.json",
        "/work/project/.mlox/state/.pulumi/stacks/mlox/sandbox.json",
        "/work/project/.mlox/state/.pulumi/stacks/mlox/sandbox.json.attrs",
        "/work/project/.mlox/state/.pulumi/stacks/mlox/sandbox.json.bak",
        "/work/project/.mlox/state/.pulumi/stacks/mlox/sandbox.json.bak.attrs",
        "/work/project/.mlox/state/.pulumi/backups/mlox/sandbox",
        "/work/project/.mlox/state/.pulumi/history/mlox/sandbox",
        "/work/project/.mlox/state/.pulumi/locks/organization/mlox/sandbox",
    ]
    assert cleanup.rootfs == PROJECT / ".mlox/sandbox/sandbox/machine/rootfs"


def test_cleanup_list_of_a_stack_migrated_to_a_server_keeps_the_stack_and_its_passphrase():
    cleanup = spec.cleanup_list(PROJECT, record(name="trial"), stack_moved=True)
    assert cleanup.stack is None
    # the record, key and machine; the machine's recorded host key
    assert cleanup.paths == [PROJECT / ".mlox/sandbox/trial", PROJECT / ".mlox/known_hosts/10.79.3.2_22"]
    # The stack's secrets stay encrypted with the sandbox's passphrase: it is kept for the stack.
    assert cleanup.keep == [(PROJECT / ".mlox/sandbox/trial/passphrase", PROJECT / ".mlox/trial/.passphrase")]


def test_a_removed_sandbox_keeps_nothing():
    assert spec.cleanup_list(PROJECT, record()).keep == []


def test_the_kept_passphrase_is_no_sandbox_folder_even_for_the_name_sandbox():
    kept = spec.kept_passphrase_path(PROJECT, "sandbox")
    assert kept == PROJECT / ".mlox/sandbox/.passphrase"
    assert spec.name_problem(kept.name) is not None  # no sandbox can be called that


def test_cleanup_list_with_a_backend_of_the_users_own_and_another_build_dir():
    cleanup = spec.cleanup_list(PROJECT, record(), own_state=False, build_root=Path("/tmp/build"))
    assert Path("/tmp/build/sandbox") in cleanup.paths
    assert not [p for p in cleanup.paths if ".mlox/state" in str(p)]


# ----- refusals ------------------------------------------------------------------------

@pytest.mark.parametrize("platform, euid, have, message", [
    ("linux", 0, ALL_TOOLS, None),
    ("darwin", 501, (), "sandbox: a local machine needs Linux with systemd-nspawn (darwin has none; docs/sandbox.md "
                        f"shows an untested Docker container instead); {INSTEAD}"),
    ("linux", 1000, ALL_TOOLS, "sandbox: needs root to boot a systemd-nspawn machine and give it a network and "
                               f"firewall rules (run: sudo mlox-iac sandbox up); {INSTEAD}"),
    ("linux", 0, [t for t in ALL_TOOLS if t != "systemd-nspawn"],
     f"sandbox: needs systemd-nspawn (apt-get install systemd-container); {INSTEAD}"),
    ("linux", 0, ("ip", "ssh", "ssh-keygen"),
     "sandbox: needs debootstrap, iptables, nsenter, systemd-nspawn "
     f"(apt-get install debootstrap iptables systemd-container util-linux); {INSTEAD}"),
], ids=["ok", "macos", "not_root", "no_nspawn", "several_missing"])
def test_privilege_problem(platform, euid, have, message):
    assert spec.privilege_problem(platform, euid, have) == message


@pytest.mark.parametrize("record_exists, stack_exists, state_exists, message", [
    (False, False, False, None),
    (True, True, True, None),
    (False, True, False, "--name: prod is a stack that is not a sandbox (stacks/Pulumi.prod.yaml exists, "
                         ".mlox/sandbox/prod/sandbox.json does not); choose another name"),
    (False, False, True, "--name: prod is a stack that is not a sandbox (the deployed state of stack prod exists, "
                         ".mlox/sandbox/prod/sandbox.json does not); choose another name"),
], ids=["new", "sandbox", "stack_file", "state_only"])
def test_collision_problem(record_exists, stack_exists, state_exists, message):
    assert spec.collision_problem(PROJECT, "prod", record_exists=record_exists, stack_exists=stack_exists,
                                  state_exists=state_exists) == message


@pytest.mark.parametrize("name, ok", [("sandbox", True), ("lab-2.b_c", True), ("-x", False), ("a/b", False),
                                      ("", False), ("x" * 41, False)])
def test_name_problem(name, ok):
    assert (spec.name_problem(name) is None) == ok


def test_moved_problem():
    assert spec.moved_problem(record(), "onprem", "10.79.3.2") is None
    assert spec.moved_problem(record(), None, None) is None  # no stack file yet
    assert spec.moved_problem(record(), "hetzner", None) == (
        "stack sandbox now runs on a hetzner server, not on its sandbox machine 10.79.3.2 (it was migrated)")
    assert spec.moved_problem(record(), "onprem", "192.0.2.7") == (
        "stack sandbox now runs on a server 192.0.2.7, not on its sandbox machine 10.79.3.2 (it was migrated)")


def test_moving_problem():
    assert spec.moving_problem("trial", None) is None
    assert spec.moving_problem("trial", "onprem") == (
        "sandbox trial: its stack is being migrated (to onprem); finish the move first (mlox-iac migrate --stack "
        "trial --finish, then sandbox down removes only the machine) or go back to the sandbox (mlox-iac migrate "
        "--stack trial --abort)")


# ----- sizes, networks, names ----------------------------------------------------------

@pytest.mark.parametrize("needed, limit", [(2688, 4096), (3584, 4096), (3585, 5120), (7424, 8192)])
def test_memory_limit_is_what_is_needed_with_headroom_in_whole_gib(needed, limit):
    assert spec.memory_limit_mb(needed) == limit


@pytest.mark.parametrize("value, prefix", [("10.79", "10.79"), ("10.79.0.0/16", "10.79"), ("172.30", "172.30")])
def test_parse_network(value, prefix):
    assert spec.parse_network(value) == prefix


@pytest.mark.parametrize("value", ["10.79.1.0/24", "8.8", "10", "fd00::/16", "10.79.1.1/16"])
def test_parse_network_refuses(value):
    with pytest.raises(ValueError):
        spec.parse_network(value)


def test_pick_index_skips_networks_in_use_and_other_sandboxes():
    routes = ["10.79.1.0/24", "10.79.2.7/24", "default", "192.168.1.0/24", "not-a-network"]
    assert spec.pick_index("10.79", routes, taken=[3]) == 4
    with pytest.raises(ValueError, match="no free /24 left in 10.79.0.0/16"):
        spec.pick_index("10.79", ["10.79.0.0/16"], taken=[])


def test_machine_name_fits_an_interface_name_and_differs_per_project():
    a = spec.machine_name(Path("/a"), "sandbox")
    assert len(f"ve-{a}") <= 15 and a.startswith("mlxsb")
    assert a != spec.machine_name(Path("/b"), "sandbox") and a == spec.machine_name(Path("/a"), "sandbox")


def test_record_round_trip_and_phases_in_order():
    r = record()
    r.mark("deploy")
    r.mark("host")
    r.mark("host")
    assert r.done == ["host", "deploy"] and r.finished("host") and not r.finished("images")
    assert Record.from_json(r.to_json()) == r
    assert (r.address, r.subnet, r.veth) == ("10.79.3.2", "10.79.3.0/24", "ve-mlxsb1234567")


# ----- the stack -----------------------------------------------------------------------

def test_stack_file_says_it_is_a_sandbox_and_validates():
    from conftest import KEY

    from mlox_iac.config.loader import validate

    r = record(preset="full", memory_mb=8192)
    settings = spec.stack_settings(r, [KEY])
    text = spec.render_stack_file(r, settings)
    assert text.startswith("# Sandbox sandbox: a local machine made by `mlox-iac sandbox up --name sandbox` "
                           "(.mlox/sandbox/sandbox/sandbox.json).\n")
    config = yaml.safe_load(text)["config"]
    assert config["mlox:onprem"] == {"host": "10.79.3.2", "user": "root", "port": 22, "memory_mb": 8192}
    assert config["mlox:ssh"]["admin_cidrs"] == ["10.79.3.0/24"]
    raw = {key.removeprefix("mlox:"): value for key, value in config.items()}
    raw["onprem"]["private_key"] = "[secret]"
    stack = validate(raw, {"onprem.private_key"}, "stacks/Pulumi.sandbox.yaml", "sandbox")
    assert stack.memory_needed_mb() <= 8192 and stack.services.preset == "full"


def test_bootstrap_targets():
    assert spec.bootstrap_targets("sb") == [
        "urn:pulumi:sb::mlox::mlox:stack:Stack::mlox",
        "urn:pulumi:sb::mlox::mlox:stack:Stack$mlox:server:Server::main",
        "urn:pulumi:sb::mlox::mlox:stack:Stack$mlox:server:Server$command:remote:Command::main-bootstrap",
        "urn:pulumi:sb::mlox::mlox:stack:Stack$mlox:server:Server$command:remote:Command::main-host-keys",
    ]
