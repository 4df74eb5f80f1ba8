"""``mlox_iac.migrations.stack``: the phases, their record, resume, verification failure, finish and abort.

The engine is a double that keeps the stack file's config as ``pulumi config set --path``
would and answers outputs the way the program exports them; the servers are a double that
records the ``mlox_data move-*`` verbs. One test drives :class:`AutomationEngine` against the
recording Pulumi CLI double (the Automation API seam). The data verbs themselves run on real
hosts in the end-to-end tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mlox_iac import connect
from mlox_iac.migrations import stack as migrate
from mlox_iac.errors import ConfigError, MloxError
from pulumi_double import RecordingPulumiCommand

OLD, NEW = "198.51.100.1", "198.51.100.2"


class FakeEngine:
    """Config changes land in the stack file; ``up`` derives the outputs from it."""

    def __init__(self, project: Path, stack: str = "dev"):
        self.path = project / "stacks" / f"Pulumi.{stack}.yaml"
        self.calls: list[tuple] = []
        self.deployed = self._outputs()

    def _config(self) -> dict:
        return yaml.safe_load(self.path.read_text())["config"]

    def _outputs(self) -> dict:
        config = self._config()
        move = config.get("mlox:migration")
        out = {"provider": config["mlox:provider"], "server_address": OLD, "ssh_user": "root", "ssh_port": 22}
        if move:
            out["migration"] = {"from": config["mlox:provider"], "to": move["to"], "state": move["state"],
                                "old": {"server_address": OLD, "ssh_user": "root", "ssh_port": 22},
                                "new": {"server_address": NEW, "ssh_user": "root", "ssh_port": 22}}
            if move["state"] != "provisioning":
                out.update(provider=move["to"], server_address=NEW)
        elif config.get("mlox:server", "main") != "main":
            out["server_address"] = NEW
        return out

    def outputs(self) -> dict:
        self.calls.append(("outputs",))
        return dict(self.deployed)

    def up(self) -> dict:
        self.calls.append(("up", json.dumps(self._config().get("mlox:migration"), sort_keys=True)))
        self.deployed = self._outputs()
        return dict(self.deployed)

    def set_config(self, values, remove=(), secret=()):
        self.calls.append(("set", dict(values), tuple(remove), tuple(secret)))
        document = yaml.safe_load(self.path.read_text())
        config = document["config"]
        for key, value in values.items():
            namespace, _, path = key.partition(":")
            top, *rest = path.split(".")
            if not rest:
                config[key] = value
                continue
            node = config.setdefault(f"{namespace}:{top}", {})
            for part in rest[:-1]:
                node = node.setdefault(part, {})
            node[rest[-1]] = value
        for key in remove:
            config.pop(key, None)
        self.path.write_text(yaml.safe_dump(document))

    def get_config(self, key):
        return "SECRET"

    def ups(self) -> list:
        return [c for c in self.calls if c[0] == "up"]


class FakeServers:
    def __init__(self, problems=(), fail_at: tuple[str, int] | None = None):
        self.calls: list[tuple] = []
        self.problems = list(problems)
        self.fail_at = fail_at
        self.authorized: set[str] = set()

    def __call__(self, migration):  # the servers_for factory
        self.migration = migration
        return self

    def verb(self, role, verb, args=()):
        self.calls.append((role, verb, tuple(args)))
        if self.fail_at and self.fail_at[0] == verb:
            self.fail_at = (verb, self.fail_at[1] - 1)
            if self.fail_at[1] <= 0:
                self.fail_at = None
                raise migrate.MigrationError(f"{role} server: connection lost during {verb}")
        return {"move-keygen": {"public_key": "ssh-ed25519 AAAAKEY mlox-move"},
                "move-stage": {"files": 3, "bytes": 1 << 30},
                "move-send": {"files": 3, "bytes": 1 << 30, "pruned": 0},
                "move-verify": {"ok": not self.problems, "problems": self.problems}}.get(verb, {})

    def authorize(self, role, public_key, source):
        self.calls.append((role, "authorize", (source,)))
        self.authorized.add(role)

    def deauthorize(self, role):
        self.calls.append((role, "deauthorize", ()))
        self.authorized.discard(role)

    def ping(self, role):
        self.calls.append((role, "ping", ()))

    def verbs(self):
        return [(r, v) for r, v, _ in self.calls]


@pytest.fixture
def passphrase(monkeypatch):
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "correct horse battery staple")


@pytest.fixture
def project(mlox_project):
    path = mlox_project / "stacks" / "Pulumi.dev.yaml"
    document = yaml.safe_load(path.read_text())
    document["config"]["mlox:digitalocean"] = {"region": "fra1", "size": "s-2vcpu-4gb"}
    path.write_text(yaml.safe_dump(document))
    return mlox_project


def run(project, engine, servers, to="digitalocean"):
    lines: list[str] = []
    record = migrate.run("dev", to, project_dir=project, engine=engine, servers_for=servers, say=lines.append)
    return record, lines


def test_a_move_runs_every_phase_in_order_and_ends_on_the_new_server(project):
    engine, servers = FakeEngine(project), FakeServers()
    record, lines = run(project, engine, servers)
    assert list(record.done) == list(migrate.PHASES)
    # Engine: provision (both servers), then cutover (outputs on the new one); nothing else.
    assert [json.loads(c[1])["state"] for c in engine.ups()] == ["provisioning", "cutover"]
    config = yaml.safe_load(engine.path.read_text())["config"]
    assert config["mlox:migration"] == {"to": "digitalocean", "server": "b", "state": "cutover",
                                        "source_address": OLD}
    assert engine.deployed["server_address"] == NEW
    # Data: staged and sent by the old server, applied on the new one, twice (bulk, final delta).
    verbs = servers.verbs()
    assert verbs.index(("old", "move-freeze")) < verbs.index(("new", "move-verify")) < verbs.index(("old", "move-stop"))
    assert verbs.count(("old", "move-send")) == 2 and verbs.count(("new", "move-apply")) == 2
    assert ("new", "authorize") in verbs and servers.authorized == set()  # the move's key is gone again
    send = next(c for c in servers.calls if c[1] == "move-send")
    assert send[2] == ("--to", NEW, "--port", "22", "--user", "root")
    assert record.downtime_s is not None and any("downtime" in line for line in lines)
    assert "--finish" in lines[-1]


def test_the_preflight_reaches_the_old_server_with_its_recorded_host_keys(project):
    engine, seen = FakeEngine(project), []
    engine.deployed["ssh_host_keys"] = ["ssh-ed25519 AAAAHOST root@old"]

    def servers_for(migration):
        seen.append(migration)
        raise migrate.MigrationError("stop after the preflight's ping")

    with pytest.raises(migrate.MigrationError):
        migrate.run("dev", "digitalocean", project_dir=project, engine=engine, servers_for=servers_for)
    assert seen == [{"old": {"server_address": OLD, "ssh_user": "root", "ssh_port": 22,
                             "ssh_host_keys": ["ssh-ed25519 AAAAHOST root@old"]}}]
    assert connect.known_hosts_lines(seen[0]["old"]) == [f"{OLD} ssh-ed25519 AAAAHOST"]


def test_an_interrupted_copy_resumes_at_the_copy(project):
    engine, servers = FakeEngine(project), FakeServers(fail_at=("move-send", 1))
    with pytest.raises(migrate.MigrationError, match="copy failed: old server: connection lost during move-send.*"
                                                     "resume at copy"):
        run(project, engine, servers)
    saved = migrate.load_record(project, "dev")
    assert list(saved.done) == ["preflight", "provision"] and saved.next_phase == "copy"
    ups_before = len(engine.ups())
    record, lines = run(project, engine, servers)
    assert any("resuming at copy" in line for line in lines)
    assert list(record.done) == list(migrate.PHASES)
    assert len(engine.ups()) == ups_before + 1  # only the cutover: provisioning is not repeated
    assert servers.verbs().count(("new", "authorize")) == 1  # the key installed once survives the interruption


def test_a_difference_cancels_the_cutover_unfreezes_and_names_it(project):
    engine = FakeEngine(project)
    servers = FakeServers(problems=["bucket mlflow: object 1/abc/artifacts/model.pkl: differs"])
    with pytest.raises(migrate.VerificationFailed, match="no cutover: .*object 1/abc/artifacts/model.pkl: differs.*"
                                                         "the old server serves again"):
        run(project, engine, servers)
    assert servers.verbs()[-1] == ("old", "move-unfreeze")
    assert ("old", "move-stop") not in servers.verbs()
    assert [json.loads(c[1])["state"] for c in engine.ups()] == ["provisioning"]
    saved = migrate.load_record(project, "dev")
    assert saved.next_phase == "freeze" and saved.frozen_at is None
    # Once the cause is fixed, a rerun freezes and verifies again and cuts over.
    servers.problems = []
    record, _ = run(project, engine, servers)
    assert record.cut_over and servers.verbs().count(("old", "move-freeze")) == 2


def test_abort_after_provisioning_removes_the_new_server(project):
    engine, servers = FakeEngine(project), FakeServers(fail_at=("move-stage", 1))
    with pytest.raises(migrate.MigrationError):
        run(project, engine, servers)
    migrate.abort("dev", project_dir=project, engine=engine, servers_for=servers)
    config = yaml.safe_load(engine.path.read_text())["config"]
    assert "mlox:migration" not in config and config["mlox:provider"] == "hetzner"
    assert json.loads(engine.ups()[-1][1]) is None  # the last update ran without the second server
    assert ("new", "deauthorize") in servers.verbs() and ("old", "move-clean") in servers.verbs()
    assert migrate.load_record(project, "dev") is None


def test_abort_while_frozen_unfreezes_first(project):
    engine, servers = FakeEngine(project), FakeServers(fail_at=("move-stage", 2))
    with pytest.raises(migrate.MigrationError, match="verify failed"):
        run(project, engine, servers)
    assert migrate.load_record(project, "dev").frozen_at is not None
    migrate.abort("dev", project_dir=project, engine=engine, servers_for=servers)
    assert servers.verbs().index(("old", "move-unfreeze")) < len(servers.verbs())
    assert json.loads(engine.ups()[-1][1]) is None


def test_finish_lifts_the_protection_then_hands_the_stack_to_the_new_server(project):
    engine, servers = FakeEngine(project), FakeServers()
    run(project, engine, servers)
    migrate.finish("dev", project_dir=project, engine=engine)
    states = [json.loads(c[1]) for c in engine.ups()]
    assert [s["state"] if s else None for s in states] == ["provisioning", "cutover", "finishing", None]
    config = yaml.safe_load(engine.path.read_text())["config"]
    assert config["mlox:provider"] == "digitalocean" and config["mlox:server"] == "b"
    assert "mlox:migration" not in config
    assert migrate.load_record(project, "dev") is None


def test_finish_before_the_cutover_is_refused(project):
    engine, servers = FakeEngine(project), FakeServers(fail_at=("move-stage", 1))
    with pytest.raises(migrate.MigrationError):
        run(project, engine, servers)
    with pytest.raises(migrate.MigrationError, match="has not cut over yet .next: copy.; --finish runs only after"):
        migrate.finish("dev", project_dir=project, engine=engine)


def test_abort_after_the_cutover_copies_the_new_servers_data_back_first(project):
    engine, servers = FakeEngine(project), FakeServers()
    run(project, engine, servers)
    servers.calls.clear()
    migrate.abort("dev", project_dir=project, engine=engine, servers_for=servers)
    verbs = servers.verbs()
    # The new server stops taking writes, its data goes to the old one, which is verified, then serves.
    order = [("new", "move-freeze"), ("old", "move-start"), ("new", "move-stage"), ("new", "move-send"),
             ("old", "move-apply"), ("old", "move-verify"), ("old", "move-unfreeze")]
    assert [v for v in verbs if v in order] == order
    send = next(c for c in servers.calls if c[1] == "move-send")
    assert send[0] == "new" and send[2][:2] == ("--to", OLD)
    assert ("old", "authorize") in verbs and servers.authorized == set()
    states = [json.loads(c[1]) for c in engine.ups()]
    assert states[-3]["return_address"] == NEW  # the old server admitted the new one for the copy
    assert states[-2]["state"] == "provisioning" and states[-1] is None  # outputs back on A, then B removed
    assert engine.deployed["server_address"] == OLD and migrate.load_record(project, "dev") is None


def test_abort_after_the_cutover_keeps_the_new_server_when_the_copy_back_differs(project):
    engine, servers = FakeEngine(project), FakeServers()
    run(project, engine, servers)
    servers.problems = ["database mlflow: table public.runs: 11 rows (backup: 12)"]
    with pytest.raises(migrate.VerificationFailed, match="not aborted: .*public.runs.*the new server serves again"):
        migrate.abort("dev", project_dir=project, engine=engine, servers_for=servers)
    tail = servers.verbs()[-4:]
    assert tail[:2] == [("old", "move-stop"), ("new", "move-unfreeze")] and servers.authorized == set()
    assert engine.deployed["server_address"] == NEW and migrate.load_record(project, "dev").cut_over


def test_abort_after_the_cutover_of_a_sandbox_is_refused_before_anything_changes(project, monkeypatch):
    # The old server is a sandbox (198.51.100.0/31 holds OLD, not NEW): the new server cannot copy back into it.
    engine, servers = FakeEngine(project), FakeServers()
    run(project, engine, servers)
    monkeypatch.setattr(migrate, "_sandbox_subnet", lambda project_dir, stack: "198.51.100.0/31")
    servers.calls.clear()
    ups = len(engine.ups())
    with pytest.raises(migrate.MigrationError) as refused:
        migrate.abort("dev", project_dir=project, engine=engine, servers_for=servers)
    assert str(refused.value) == (
        f"stack dev runs on its new server {NEW} since the cutover, and that server cannot send its data back into "
        "the sandbox (nothing outside this machine can connect into a sandbox): nothing was changed; keep the new "
        "server (mlox-iac migrate --stack dev --finish)")
    assert servers.calls == [] and len(engine.ups()) == ups
    assert engine.deployed["server_address"] == NEW and migrate.load_record(project, "dev").cut_over


BEHIND_NAT_CASES = {
    # src, dst, sandbox subnet -> behind this machine's NAT?
    "not-a-sandbox": ("198.51.100.2", "203.0.113.9", None, False),
    "sandbox-to-a-server-elsewhere": ("10.79.1.2", "203.0.113.9", "10.79.1.0/24", True),
    "sandbox-to-its-own-network": ("10.79.1.2", "10.79.1.9", "10.79.1.0/24", False),
    "server-to-the-sandbox": ("203.0.113.9", "10.79.1.2", "10.79.1.0/24", False),
}


@pytest.mark.parametrize("case", sorted(BEHIND_NAT_CASES))
def test_behind_nat(case):
    src, dst, subnet, expected = BEHIND_NAT_CASES[case]
    assert migrate.behind_nat(src, dst, subnet) is expected


def test_missing_target_settings_stop_at_preflight_naming_the_key(mlox_project):
    engine, servers = FakeEngine(mlox_project), FakeServers()
    with pytest.raises(ConfigError) as caught:
        run(mlox_project, engine, servers, to="aws")
    assert caught.value.problems == [
        f"{mlox_project / 'stacks' / 'Pulumi.dev.yaml'}: mlox:aws: required to move the stack to aws "
        "(the new server's settings)"]
    assert engine.ups() == [] and servers.calls == []


def test_a_move_within_one_provider_needs_mlox_target(mlox_project):
    engine = FakeEngine(mlox_project)
    with pytest.raises(ConfigError, match="mlox:target.hetzner: required to move the stack to hetzner"):
        run(mlox_project, engine, FakeServers(), to="hetzner")


def test_another_destination_while_moving_is_refused(project):
    engine, servers = FakeEngine(project), FakeServers(fail_at=("move-stage", 1))
    with pytest.raises(migrate.MigrationError):
        run(project, engine, servers)
    with pytest.raises(ConfigError, match="already moving to digitalocean"):
        run(project, engine, servers, to="aws")


def test_automation_engine_sets_the_migration_by_path_and_runs_up(mlox_project, passphrase):
    cmd = RecordingPulumiCommand(stacks={"dev"}, outputs={"provider": "hetzner", "server_address": OLD})
    engine = migrate.AutomationEngine("dev", mlox_project, cmd)
    engine.set_config({"mlox:migration.to": "digitalocean", "mlox:migration.state": "provisioning"},
                      remove=("mlox:target",))
    engine.up()
    sets = [c.args for c in cmd.calls if c.verb in ("config set", "config rm")]
    assert sets == [
        ["config", "set", "--path", "mlox:migration.to", "--plaintext", "--stack", "dev", "--non-interactive", "--",
         "digitalocean"],
        ["config", "set", "--path", "mlox:migration.state", "--plaintext", "--stack", "dev", "--non-interactive", "--",
         "provisioning"],
        ["config", "rm", "mlox:target", "--stack", "dev", "--path"],
    ]
    assert "up" in cmd.verbs()


def test_the_move_key_is_restricted_to_the_old_server():
    script = migrate.authorize_script("ssh-ed25519 AAAAC3Nza mlox-move", "198.51.100.1")
    assert 'restrict,from="198.51.100.1" ssh-ed25519 AAAAC3Nza mlox-move' in script
    assert script.startswith(migrate.deauthorize_script())  # never two lines for one move
    with pytest.raises(MloxError, match="unexpected key"):
        migrate.authorize_script("ssh-rsa AAAA", "198.51.100.1")


# ----- the program refuses a changed provider by itself (pulumi up run directly) ----------

def test_the_program_asks_the_running_cli_what_is_deployed(tmp_path, monkeypatch):
    """Under the real engine the program runs `pulumi stack output` and stops with one line."""
    import pulumi

    from mlox_iac import program

    fake = tmp_path / "bin" / "pulumi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n[ \"$1 $2 $3 $5\" = 'stack output --json dev' ] || exit 3\n"
                    "echo '{\"provider\": \"onprem\", \"server_address\": \"192.0.2.50\"}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    monkeypatch.setattr(pulumi.runtime.settings, "get_monitor", lambda: object())  # not the mock monitor
    from conftest import secret_keys, settings
    from mlox_iac.config.loader import validate

    def config(provider):
        raw = settings(provider)
        return validate(raw, secret_keys(raw), "stacks/Pulumi.dev.yaml", "dev")

    with pytest.raises(pulumi.RunError) as caught:
        program._refuse_provider_change("dev", config("hetzner"))
    assert str(caught.value) == (
        "stacks/Pulumi.dev.yaml: mlox:provider: stack dev runs on onprem; changing the provider here would start an "
        "empty server on hetzner (allowed: onprem; to move the stack and its data run: "
        "mlox-iac migrate --stack dev --to hetzner)")
    program._refuse_provider_change("dev", config("onprem"))  # unchanged: no objection


def test_the_program_skips_the_check_under_mocks_and_for_new_stacks():
    from mlox_iac.automation import provider_change_problem

    assert provider_change_problem("dev", {}, "hetzner", "f") is None
    assert provider_change_problem("dev", {"provider": "aws"}, "aws", "f") is None
    finishing = {"provider": "aws", "migration": {"from": "aws", "to": "onprem", "state": "finishing"}}
    assert provider_change_problem("dev", finishing, "onprem", "f") is None
    moving = {"provider": "aws", "migration": {"from": "aws", "to": "onprem", "state": "cutover"}}
    assert provider_change_problem("dev", moving, "onprem", "f").startswith("f: mlox:provider: stack dev runs on aws")


def test_finish_of_a_move_within_onprem_makes_the_target_block_the_providers(mlox_project):
    path = mlox_project / "stacks" / "Pulumi.dev.yaml"
    document = yaml.safe_load((mlox_project / "stacks" / "Pulumi.example-onprem.yaml").read_text())
    document["config"]["mlox:onprem"]["data_device"] = "/dev/sdb"  # only the old host has one
    document["config"]["mlox:target"] = {"onprem": {"host": "192.0.2.60", "private_key": {"secure": "v1:eA=="},
                                                    "memory_mb": 8192}}
    path.write_text(yaml.safe_dump(document))
    engine, servers = FakeEngine(mlox_project), FakeServers()
    record, _ = run(mlox_project, engine, servers, to="onprem")
    assert (record.old_server, record.new_server) == ("main", "b")
    migrate.finish("dev", project_dir=mlox_project, engine=engine)
    config = yaml.safe_load(path.read_text())["config"]
    assert config["mlox:onprem"] == {"host": "192.0.2.60", "private_key": "SECRET", "memory_mb": "8192",
                                     "user": "root", "port": "22"}
    assert "mlox:target" not in config and config["mlox:server"] == "b"
    (moved,) = [c for c in engine.calls if c[0] == "set" and "mlox:onprem.private_key" in c[1]]
    assert moved[3] == ("mlox:onprem.private_key",)  # stored as a secret


def test_dns_names_are_the_host_names_of_the_stacks_urls():
    outputs = {"urls": {"mlflow": "https://mlflow.ml.example.com", "s3": "https://s3.ml.example.com/",
                        "ui": "https://mlflow.ml.example.com/ui"}}
    assert migrate.dns_names(outputs) == ["mlflow.ml.example.com", "s3.ml.example.com"]
    assert migrate.dns_names({"urls": {"mlflow": "https://203.0.113.20/mlflow"}}) == []  # a bare address: no DNS
    assert migrate.dns_names({}) == []


def test_waiting_for_dns_ends_when_every_name_points_at_the_new_server_only():
    answers = {"mlflow.ex.com": [{"203.0.113.10"}, {"203.0.113.10", "203.0.113.20"}, {"203.0.113.20"}],
               "s3.ex.com": [{"203.0.113.20"}, {"203.0.113.20"}, {"203.0.113.20"}]}
    polls = {name: 0 for name in answers}
    lines: list[str] = []

    def resolve(name):
        found = answers[name][min(polls[name], 2)]
        polls[name] += 1
        return found

    now = [0.0]
    migrate.wait_for_dns(sorted(answers), "203.0.113.20", timeout_s=600, say=lines.append, resolve=resolve,
                         sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    assert lines == ["DNS: waiting for 1 of 2 records: mlflow.ex.com -> A 203.0.113.10",
                     "DNS: waiting for 1 of 2 records: mlflow.ex.com -> A 203.0.113.10, A 203.0.113.20",
                     "DNS: mlflow.ex.com, s3.ex.com resolve to 203.0.113.20"]


def test_waiting_for_dns_gives_up_after_the_timeout_naming_the_records():
    now = [0.0]
    with pytest.raises(migrate.MigrationError) as raised:
        migrate.wait_for_dns(["mlflow.ex.com"], "203.0.113.20", timeout_s=60, resolve=lambda name: set(),
                             sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    assert str(raised.value) == ("DNS does not point at the new server 203.0.113.20 yet after 60s: mlflow.ex.com -> "
                                 "nothing (the move is done; change these records; clients follow once they resolve)")
    assert now[0] >= 60


# name -> what it resolves to (A and AAAA), against the new server 203.0.113.20: what is still pending.
DNS_CASES = {
    "a_only_right": ({"m.ex.com": {"203.0.113.20"}}, {}),
    "a_old": ({"m.ex.com": {"203.0.113.10"}}, {"m.ex.com": "A 203.0.113.10"}),
    "stale_aaaa": ({"m.ex.com": {"203.0.113.20", "2001:db8::10"}}, {"m.ex.com": "A 203.0.113.20, AAAA 2001:db8::10"}),
    "aaaa_only": ({"m.ex.com": {"2001:db8::10"}}, {"m.ex.com": "AAAA 2001:db8::10"}),
    "ipv4_mapped_answer_is_the_a_record": ({"m.ex.com": {"::ffff:203.0.113.20"}}, {}),
    "nothing": ({"m.ex.com": set()}, {"m.ex.com": "nothing"}),
    "one_of_two": ({"s3.ex.com": {"203.0.113.20", "2001:db8::10"}, "m.ex.com": {"203.0.113.20"}},
                   {"s3.ex.com": "A 203.0.113.20, AAAA 2001:db8::10"}),
}


@pytest.mark.parametrize("case", sorted(DNS_CASES))
def test_dns_pending_checks_a_and_aaaa_records(case):
    answers, pending = DNS_CASES[case]
    assert migrate.dns_pending(answers, "203.0.113.20") == pending


def test_dns_pending_for_a_server_announced_by_its_ipv6_address():
    answers = {"m.ex.com": {"2001:DB8:0:0::20"}, "s3.ex.com": {"2001:db8::20", "203.0.113.10"}}
    assert migrate.dns_pending(answers, "2001:db8::20") == {"s3.ex.com": "A 203.0.113.10, AAAA 2001:db8::20"}


def test_a_stale_aaaa_record_blocks_the_wait_and_is_named():
    now = [0.0]
    with pytest.raises(migrate.MigrationError) as raised:
        migrate.wait_for_dns(["mlflow.ex.com", "s3.ex.com"], "203.0.113.20", timeout_s=60,
                             resolve=lambda name: {"203.0.113.20"} | ({"2001:db8::10"} if name == "s3.ex.com" else set()),
                             sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    assert str(raised.value) == (
        "DNS does not point at the new server 203.0.113.20 yet after 60s: s3.ex.com -> A 203.0.113.20, "
        "AAAA 2001:db8::10 (the move is done; change these records and remove the AAAA ones, as the stack announces "
        "its IPv4 address only; clients follow once they resolve)")
    assert "\n" not in str(raised.value)


def test_the_system_resolver_asks_for_a_and_aaaa_records(monkeypatch):
    import socket

    asked = []

    def getaddrinfo(name, port, family):
        asked.append(family)
        if family == socket.AF_INET6:
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::10", 0, 0, 0))]
        raise socket.gaierror(socket.EAI_NONAME, "no A record")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert migrate.resolve_a_and_aaaa("m.ex.com") == {"2001:db8::10"}
    assert asked == [socket.AF_INET, socket.AF_INET6]


KEY_SOURCE_CASES = {
    # src, dst, sandbox subnet, admin_cidrs -> from=
    "two-servers": ("198.51.100.2", "203.0.113.9", None, ["192.0.2.7/32"], "198.51.100.2"),
    "sandbox-to-a-server-behind-nat": ("10.79.1.2", "203.0.113.9", "10.79.1.0/24",
                                       ["10.79.1.0/24", "192.0.2.7/32", "2001:db8::/64"], "192.0.2.7/32,2001:db8::/64"),
    "sandbox-to-a-machine-on-its-network": ("10.79.1.2", "10.79.1.9", "10.79.1.0/24", ["10.79.1.0/24"], "10.79.1.2"),
    "back-from-the-server-to-the-sandbox": ("203.0.113.9", "10.79.1.2", "10.79.1.0/24", ["10.79.1.0/24"], "203.0.113.9"),
}


@pytest.mark.parametrize("case", sorted(KEY_SOURCE_CASES))
def test_the_moves_key_is_usable_from_where_the_sender_is_seen(case):
    from mlox_iac.migrations.stack import key_source

    src, dst, subnet, cidrs, expected = KEY_SOURCE_CASES[case]
    assert key_source(src, dst, subnet, cidrs) == expected


def test_a_sandbox_without_an_outside_admin_address_cannot_send_to_a_server():
    from mlox_iac.migrations.stack import MigrationError, key_source

    with pytest.raises(MigrationError, match="mlox:ssh.admin_cidrs does not name"):
        key_source("10.79.1.2", "203.0.113.9", "10.79.1.0/24", ["10.79.1.0/24"])
