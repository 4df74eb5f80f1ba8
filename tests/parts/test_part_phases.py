"""``mlox_iac.migrations.parts``: the phases of a part move, their record, resume, a difference
that cancels the cutover, an unreachable store during the freeze, finish and abort.

The engine is a double that keeps the stack file's config as ``pulumi config set --path``
would and answers the ``parts`` output as the program computes it from that file (the real
config model decides which side the services use); the server is a double that records the
``mlox_data part-*`` verbs. The verbs themselves run on real hosts in ``tests/e2e/test_parts.py``.
"""

from __future__ import annotations

import pytest
import yaml
from testca import root_ca

from mlox_iac.errors import ConfigError
from mlox_iac.migrations import objects, parts, postgres
from mlox_iac.migrations.stack import MigrationError, VerificationFailed

CA = root_ca().cert_pem
SECURE = {"secure": "v1:dGVzdA=="}


class FakeEngine:
    """Config changes land in the stack file; ``up`` derives the ``parts`` output from it."""

    def __init__(self, project, stack="dev"):
        self.project = project
        self.path = project / "stacks" / f"Pulumi.{stack}.yaml"
        self.calls: list[tuple] = []
        self.deployed = self._outputs()

    def _config(self) -> dict:
        return yaml.safe_load(self.path.read_text())["config"]

    def _outputs(self) -> dict:
        from mlox_iac import automation
        from mlox_iac.components.stack import parts_output

        config = automation.validate_stack("dev", project_dir=self.project)
        return {"provider": "hetzner", "server_address": "198.51.100.1", "ssh_user": "root", "ssh_port": 22,
                "parts": parts_output(config)}

    def outputs(self):
        self.calls.append(("outputs",))
        return dict(self.deployed)

    def up(self):
        self.calls.append(("up", self._config().get("mlox:part_move")))
        self.deployed = self._outputs()
        return dict(self.deployed)

    def set_config(self, values, remove=(), secret=()):
        self.calls.append(("set", dict(values), tuple(remove)))
        document = yaml.safe_load(self.path.read_text())
        config = document["config"]
        for key, value in values.items():
            namespace, _, path = key.partition(":")
            top, *rest = path.split(".")
            node = config.setdefault(f"{namespace}:{top}", {})
            for part in rest[:-1]:
                node = node.setdefault(part, {})
            node[rest[-1]] = {"true": True, "false": False}.get(value, value)
        for key in remove:
            config.pop(key, None)
        self.path.write_text(yaml.safe_dump(document))

    def ups(self):
        return [c[1] for c in self.calls if c[0] == "up"]


class FakeServer:
    def __init__(self, problems=(), fail=None):
        self.calls: list[tuple] = []
        self.problems = list(problems)
        self.fail = dict(fail or {})  # verb -> how many calls fail (1: the next one)

    def __call__(self, outputs):  # the server_for factory
        self.outputs = outputs
        return self

    def verb(self, verb, args=()):
        self.calls.append((verb, tuple(args)))
        if self.fail.get(verb):
            self.fail[verb] -= 1
            raise MigrationError(f"server: {verb} failed: the external store did not answer")
        return {"part-copy": {"seconds": 12.0}, "part-freeze": {"frozen_at": 1000.0},
                "part-verify": {"ok": not self.problems, "problems": self.problems, "objects": 1001,
                                "bytes": 1 << 30}}.get(verb, {})

    def ping(self):
        self.calls.append(("ping", ()))

    def verbs(self):
        return [v for v, _ in self.calls]


@pytest.fixture
def project(mlox_project):
    path = mlox_project / "stacks" / "Pulumi.dev.yaml"
    document = yaml.safe_load(path.read_text())
    services = document["config"].setdefault("mlox:services", {})
    services["seaweedfs"] = {**services.get("seaweedfs", {}), "external": {
        "endpoint": "https://s3.provider.example", "access_key_id": SECURE, "secret_access_key": SECURE}}
    services["postgres"] = {"external": {"host": "db.provider.example", "admin_password": SECURE, "ca": CA,
                                         "in_use": False}}
    path.write_text(yaml.safe_dump(document))
    return mlox_project


def deployed_local(engine):
    engine.deployed["parts"] = {"objects": {"uses": "local"}, "postgres": {"uses": "local"}}


def run(project, engine, server, kind=objects.KIND, to="external"):
    lines: list[str] = []
    record = parts.run(kind, "dev", to, project_dir=project, engine=engine, server_for=server, say=lines.append)
    return record, lines


def test_a_move_out_runs_every_phase_and_ends_on_the_external_store(project):
    engine, server = FakeEngine(project), FakeServer()
    deployed_local(engine)
    record, lines = run(project, engine, server)
    assert list(record.done) == list(parts.PHASES)
    assert engine.ups() == [{"part": "objects", "to": "external", "state": "copying"},
                            {"part": "objects", "to": "external", "state": "cutover"}]
    assert engine.deployed["parts"]["objects"]["uses"] == "external"
    # Bulk copy and a first read of both sides while serving; freeze; final delta and
    # verification; cutover, then serving.
    assert server.verbs() == ["ping", "part-copy", "part-verify", "part-freeze", "part-copy", "part-verify",
                              "part-unfreeze"]
    assert any("1001 objects" in line and "while" not in line for line in lines)
    assert all(args[:2] == ("--part", "objects") for _, args in server.calls if args)
    assert server.calls[1][1] == ("--part", "objects", "--to", "external")
    assert record.downtime_s is not None and any(line.startswith("downtime") for line in lines)
    assert "--finish" in lines[-1]
    # Finish: the services keep the external store, the server's own stops.
    parts.finish(objects.KIND, "dev", project_dir=project, engine=engine, say=lines.append)
    config = yaml.safe_load(engine.path.read_text())["config"]
    assert "mlox:part_move" not in config and config["mlox:services"]["seaweedfs"]["external"]["in_use"] is True
    assert engine.deployed["parts"]["objects"]["uses"] == "external"
    assert not parts.record_path(project, "dev").exists()


def test_a_copy_killed_midway_resumes_at_the_copy(project):
    engine, server = FakeEngine(project), FakeServer(fail={"part-copy": 1})
    deployed_local(engine)
    with pytest.raises(MigrationError, match="copy failed: server: part-copy failed.*resume at copy"):
        run(project, engine, server)
    saved = parts.load_record(project, "dev")
    assert list(saved.done) == ["preflight", "prepare"] and saved.next_phase == "copy"
    ups = len(engine.ups())
    record, lines = run(project, engine, server)
    assert any("resuming at copy" in line for line in lines) and record.cut_over
    assert len(engine.ups()) == ups + 1  # only the cutover: prepare is not repeated


def test_a_corrupted_object_cancels_the_cutover_names_it_and_unfreezes(project):
    engine = FakeEngine(project)
    deployed_local(engine)
    server = FakeServer(problems=["bucket data: object small/0007.bin: SHA-256 differs on the external side"])
    with pytest.raises(VerificationFailed, match="no cutover: the external side differs from the local side: "
                                                 "bucket data: object small/0007.bin: SHA-256 differs.*"
                                                 "serves again on its local buckets"):
        run(project, engine, server)
    assert server.verbs()[-1] == "part-unfreeze"
    assert engine.ups() == [{"part": "objects", "to": "external", "state": "copying"}]  # no cutover
    assert engine.deployed["parts"]["objects"]["uses"] == "local"
    saved = parts.load_record(project, "dev")
    assert saved.next_phase == "freeze" and saved.frozen_at is None and "small/0007.bin" in saved.last_error
    server.problems = []  # the cause fixed: a rerun freezes, verifies and cuts over
    record, _ = run(project, engine, server)
    assert record.cut_over and server.verbs().count("part-freeze") == 2


def test_an_unreachable_store_during_the_freeze_unfreezes_on_the_old_data(project):
    engine, server = FakeEngine(project), FakeServer(fail={"part-copy": 0})
    deployed_local(engine)
    server.fail = {}
    calls = {"n": 0}
    original = server.verb

    def verb(name, args=()):
        if name == "part-copy":
            calls["n"] += 1
            if calls["n"] == 2:  # the final delta, frozen
                server.calls.append((name, tuple(args)))
                raise MigrationError("server: copying bucket data to the external store failed: dial tcp: no route")
        return original(name, args)

    server.verb = verb
    with pytest.raises(VerificationFailed, match="no route.*serves again on its local buckets"):
        run(project, engine, server)
    assert server.verbs()[-3:] == ["part-freeze", "part-copy", "part-unfreeze"]
    assert engine.deployed["parts"]["objects"]["uses"] == "local"


def test_abort_after_the_bulk_copy_goes_back_with_nothing_lost(project):
    engine, server = FakeEngine(project), FakeServer(fail={"part-freeze": 1})
    deployed_local(engine)
    with pytest.raises(MigrationError):
        run(project, engine, server)
    assert parts.load_record(project, "dev").done.keys() >= {"copy"}
    parts.abort(objects.KIND, "dev", project_dir=project, engine=engine, server_for=server)
    config = yaml.safe_load(engine.path.read_text())["config"]
    assert "mlox:part_move" not in config
    assert config["mlox:services"]["seaweedfs"]["external"]["in_use"] is False  # settings kept, not used
    assert engine.deployed["parts"]["objects"]["uses"] == "local"
    assert "part-copy" not in server.verbs()[2:]  # nothing copied back: the local side never stopped being used
    assert not parts.record_path(project, "dev").exists()


def test_abort_after_the_cutover_brings_the_data_back_first(project):
    engine, server = FakeEngine(project), FakeServer()
    deployed_local(engine)
    run(project, engine, server)
    before = len(server.calls)
    lines: list[str] = []
    parts.abort(objects.KIND, "dev", project_dir=project, engine=engine, server_for=server, say=lines.append)
    assert server.verbs()[before:] == ["part-freeze", "part-copy", "part-verify", "part-unfreeze"]
    assert server.calls[before + 1][1] == ("--part", "objects", "--to", "local")
    assert engine.deployed["parts"]["objects"]["uses"] == "local"
    assert any(line.startswith("downtime") for line in lines)


def test_abort_after_the_cutover_stops_when_the_copy_back_differs(project):
    engine, server = FakeEngine(project), FakeServer()
    deployed_local(engine)
    run(project, engine, server)
    server.problems = ["bucket data: object big.bin: missing"]
    with pytest.raises(VerificationFailed, match="not aborted: the local side's copy differs: bucket data: object "
                                                 "big.bin: missing; the stack serves again on its external buckets"):
        parts.abort(objects.KIND, "dev", project_dir=project, engine=engine, server_for=server)
    assert server.verbs()[-1] == "part-unfreeze"
    assert engine.deployed["parts"]["objects"]["uses"] == "external"  # unchanged


def test_postgres_moves_home_with_its_own_phases(project):
    engine, server = FakeEngine(project), FakeServer()
    path = engine.path
    document = yaml.safe_load(path.read_text())
    document["config"]["mlox:services"]["postgres"]["external"]["in_use"] = True
    path.write_text(yaml.safe_dump(document))
    engine.deployed = engine._outputs()
    assert engine.deployed["parts"]["postgres"]["uses"] == "external"
    record, _ = run(project, engine, server, kind=postgres.KIND, to="local")
    assert record.cut_over and engine.deployed["parts"]["postgres"]["uses"] == "local"
    assert server.calls[1][1] == ("--part", "postgres", "--to", "local")
    parts.finish(postgres.KIND, "dev", project_dir=project, engine=engine)
    config = yaml.safe_load(path.read_text())["config"]
    assert config["mlox:services"]["postgres"]["external"]["in_use"] is False


@pytest.mark.parametrize("case, to, setup, error, message", [
    ("already_there", "external", lambda e: e.deployed.update(parts={"objects": {"uses": "external"}}),
     MigrationError, "stack dev already keeps its buckets on the external side: nothing to move"),
    ("not_deployed", "external", lambda e: e.deployed.update(server_address=None),
     MigrationError, "stack dev is not deployed: there is nothing to move (run mlox-iac up)"),
    ("bad_side", "cloud", lambda e: None, ConfigError, "--to: 'cloud' is not a side of a part (allowed: external, local)"),
])
def test_preflight_refuses_with_one_line(project, case, to, setup, error, message):
    engine, server = FakeEngine(project), FakeServer()
    deployed_local(engine)
    setup(engine)
    with pytest.raises(error) as caught:
        run(project, engine, server, to=to)
    assert message in str(caught.value)
    assert engine.ups() == [] and not parts.record_path(project, "dev").exists()


def test_preflight_needs_the_external_settings(mlox_project):
    engine, server = FakeEngine(mlox_project), FakeServer()
    deployed_local(engine)
    with pytest.raises(ConfigError) as caught:
        run(mlox_project, engine, server)
    assert caught.value.problems == [f"{mlox_project / 'stacks' / 'Pulumi.dev.yaml'}: mlox:services.seaweedfs.external: "
                                     "required to move the buckets to an external store (its endpoint and credentials; "
                                     "see the README)"]


def test_a_second_part_cannot_start_while_one_moves(project):
    engine, server = FakeEngine(project), FakeServer(fail={"part-copy": 1})
    deployed_local(engine)
    with pytest.raises(MigrationError):
        run(project, engine, server)
    with pytest.raises(ConfigError, match="already moving its objects to external"):
        run(project, engine, server, kind=postgres.KIND, to="external")


def test_finish_before_the_cutover_is_refused(project):
    engine, server = FakeEngine(project), FakeServer(fail={"part-copy": 1})
    deployed_local(engine)
    with pytest.raises(MigrationError):
        run(project, engine, server)
    with pytest.raises(MigrationError, match="has not cut over yet \\(next: copy\\); --finish runs only after"):
        parts.finish(objects.KIND, "dev", project_dir=project, engine=engine)


def test_the_copy_reads_both_sides_back_and_reports_what_differs_so_far_without_failing(project):
    engine = FakeEngine(project)
    deployed_local(engine)
    server = FakeServer(problems=["bucket data: object new.bin: missing on the external side"])
    lines: list[str] = []
    with pytest.raises(VerificationFailed):  # it still differs in the freeze: no cutover
        parts.run(objects.KIND, "dev", "external", project_dir=project, engine=engine, server_for=server,
                  say=lines.append)
    assert "copy" in parts.load_record(project, "dev").done
    assert any("1001 objects" in line and "1 differ so far" in line for line in lines), lines


def test_a_database_copy_is_not_read_back_before_the_freeze(project):
    engine, server = FakeEngine(project), FakeServer()
    deployed_local(engine)
    run(project, engine, server, kind=postgres.KIND)
    assert server.verbs() == ["ping", "part-copy", "part-freeze", "part-copy", "part-verify", "part-unfreeze"]
