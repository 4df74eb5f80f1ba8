"""Moving one part of a live stack (its buckets, or its databases) to an external store and
back, in named phases that can be resumed: the phases ``objects.py`` and ``postgres.py`` share.

``mlox-iac migrate --part PART --to external|local`` calls :func:`run`, :func:`finish` and
:func:`abort`. Each phase records in ``<project>/.mlox/migrate/<stack>.part.json`` that it
finished; a rerun starts at the first unfinished one. The engine steps go through
:class:`mlox_iac.migrations.stack.AutomationEngine`; the data steps run on the server
(``mlox_data part-*``, ``mlox_iac/data/parts.py``), reached over SSH.

=============  ==============================================================================
phase          what it does
=============  ==============================================================================
preflight      the stack is deployed, its part is on the other side, the external store's
               settings are in the file, no other move runs; the server answers over SSH
prepare        ``mlox:part_move`` is set and ``up`` deploys both sides: the services still on
               the old one, the new one ready (external buckets, or roles and databases,
               provisioned; or the server's own store started for a move home)
copy           bulk copy while the stack serves (objects: rclone sync, then both sides read
               back and hashed, the hashes kept; databases: dump, restore into a scratch
               database, verify, swap)
freeze         the proxy answers 503 with ``Retry-After``; the containers that write the part stop
verify         the final delta, then every object's key, size and SHA-256 (read again only where
               its size, modification time or MD5 changed since the copy's read) and every
               table's row count and checksum compared on both sides; any difference (or a failure to reach
               the new side) unfreezes the stack on the old data and names what differed
cutover        ``up`` reconfigures the services for the new side; the stack serves again; the
               downtime (freeze to serving) is printed
=============  ==============================================================================

``finish`` stops the old side (the server's own store after a move out: its files stay on
the data volume; an external store's buckets or databases are left as they are after a move
home); ``abort`` goes back to the old side from any phase, bringing the new side's data back
first when the cutover has happened.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from mlox_iac.errors import ConfigError, MloxError
from mlox_iac.migrations.stack import (
    RECORD_DIR, Engine, MigrationError, Say, VerificationFailed, read_record, run_phases, write_record,
)

PHASES = ("preflight", "prepare", "copy", "freeze", "verify", "cutover")
SIDES = ("external", "local")


@dataclass(frozen=True)
class PartKind:
    """One kind of part move, declared by its file (``objects.py``, ``postgres.py``)."""

    part: str  # mlox:part_move.part, --part
    service: str  # the service whose settings hold the external store (services.<service>.external)
    what: str  # "buckets", "databases": how messages name the data
    store: str  # "store", "server": how messages name the external side


def other(side: str) -> str:
    return "local" if side == "external" else "external"


# --------------------------------------------------------------------------- the record


@dataclass
class PartRecord:
    """The persistent state of one part move (no secrets)."""

    stack: str
    part: str
    to: str
    done: dict[str, float] = field(default_factory=dict)
    frozen_at: float | None = None
    downtime_s: float | None = None
    last_error: str | None = None

    @property
    def next_phase(self) -> str | None:
        return next((p for p in PHASES if p not in self.done), None)

    @property
    def cut_over(self) -> bool:
        return "cutover" in self.done

    def next_step(self) -> str:
        command = f"mlox-iac migrate --stack {self.stack} --part {self.part}"
        if self.cut_over:
            return (f"the services use the {self.to} {self.part} now; when you are satisfied run `{command} --finish` "
                    f"to stop the {other(self.to)} side (or `{command} --abort` to go back to it)")
        return f"rerun `{command} --to {self.to}` to resume at {self.next_phase}, or `{command} --abort` to go back"


def record_path(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / RECORD_DIR / f"{stack}.part.json"


def load_record(project_dir: Path, stack: str) -> PartRecord | None:
    return read_record(record_path(project_dir, stack), PartRecord, "part move")


def save_record(project_dir: Path, record: PartRecord) -> None:
    write_record(record_path(project_dir, record.stack), record)


# --------------------------------------------------------------------------- the server seam


class Server(Protocol):
    """The data verbs on the stack's server (see :class:`SshServer`)."""

    def verb(self, verb: str, args: tuple[str, ...] = ()) -> Any: ...

    def ping(self) -> None: ...


@dataclass
class SshServer:
    """:class:`Server` over the system ssh with the user's key, as ``backup`` reaches it."""

    outputs: Mapping[str, Any]
    identity: str | None = None
    options: tuple[str, ...] = ()
    on_progress: Callable[[dict], None] = lambda event: None

    def verb(self, verb: str, args: tuple[str, ...] = ()) -> Any:
        from mlox_iac import connect

        argv = connect.data_argv(self.outputs, verb, args, identity=self.identity, options=self.options)
        try:
            return connect.run_backup_verb(argv, self.on_progress)
        except MloxError as exc:
            raise MigrationError(f"server: {exc}") from None

    def ping(self) -> None:
        import subprocess

        from mlox_iac import connect

        argv = connect.ssh_argv(self.outputs, ["true"], identity=self.identity, options=self.options, batch=True)
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            reason = (done.stderr or "").strip().splitlines()[-1:] or ["no message"]
            raise MigrationError(f"server: {reason[0]}")


def default_server(identity: str | None, options: tuple[str, ...], on_progress: Callable[[dict], None]):
    """The :class:`SshServer` factory the CLI uses."""
    return lambda outputs: SshServer(outputs, identity=identity, options=options, on_progress=on_progress)


# --------------------------------------------------------------------------- the phases


@dataclass
class PartMove:
    """One part move of one stack: the record, the engine, the server and where to report."""

    kind: PartKind
    project_dir: Path
    record: PartRecord
    engine: Engine
    server_for: Callable[[Mapping[str, Any]], Server]
    say: Say = lambda line: None
    config: Any = None
    _server: Server | None = None

    def save(self) -> None:
        save_record(self.project_dir, self.record)

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = self.server_for(self.engine.outputs())
        return self._server

    def _args(self, to: str | None = None) -> tuple[str, ...]:
        return ("--part", self.kind.part, *(("--to", to) if to else ()))

    @property
    def source(self) -> str:
        return other(self.record.to)

    # 1
    def preflight(self) -> None:
        kind, record, config = self.kind, self.record, self.config
        if config.service(kind.service).external is None:
            raise ConfigError([f"{self._file()}: mlox:services.{kind.service}.external: required to move the "
                               f"{kind.what} {'to' if record.to == 'external' else 'back from'} an external {kind.store} "
                               f"(its endpoint and credentials; see the README)"])
        if config.migration is not None:
            raise MigrationError(f"stack {record.stack} is moving to another server (mlox:migration): finish or "
                                 "abort that move first")
        if not config.service_enabled(kind.service):
            raise ConfigError([f"{self._file()}: mlox:services.{kind.service}.enabled: the stack keeps no "
                               f"{kind.what} to move (allowed: true)"])
        outputs = self.engine.outputs()
        if not outputs.get("server_address"):
            raise MigrationError(f"stack {record.stack} is not deployed: there is nothing to move (run mlox-iac up)")
        parts = outputs.get("parts") if isinstance(outputs.get("parts"), Mapping) else {}
        uses = (parts.get(kind.part) or {}).get("uses", "local")
        if uses == record.to:
            raise MigrationError(f"stack {record.stack} already keeps its {kind.what} on the {record.to} side: "
                                 "nothing to move")
        self.server.ping()

    # 2
    def prepare(self) -> None:
        part, to = self.kind.part, self.record.to
        self.engine.set_config({"mlox:part_move.part": part, "mlox:part_move.to": to,
                                "mlox:part_move.state": "copying"})
        target = f"the external {self.kind.store}" if to == "external" else "the server's own store"
        self.say(f"prepare: deploying {target} beside the one in use (the services keep using the old one)")
        self.engine.up()
        self._server = None  # the outputs changed

    # 3
    def copy(self) -> None:
        self.say(f"copy: the {self.kind.what} go to the {self.record.to} side while the stack serves")
        result = self.server.verb("part-copy", self._args(self.record.to))
        self.say(f"copy: done in {result.get('seconds', 0):.0f}s")
        if self.kind.part == "objects":
            # Read both sides back now, while the stack serves: the server keeps each object's
            # SHA-256 by size, modification time and MD5, so the check in the freeze reads only
            # what was written since (the final delta), not every byte again.
            self.say("copy: reading every object on both sides while the stack serves (the freeze then "
                     "re-reads only what changes)")
            checked = self.server.verb("part-verify", self._args(self.record.to))
            waiting = len(checked.get("problems") or [])
            self.say(f"copy: {checked.get('objects', 0)} objects, {checked.get('bytes', 0)} bytes read on both sides"
                     + (f"; {waiting} differ so far (written since the copy: the final delta takes them)"
                        if waiting else ""))

    # 4
    def freeze(self) -> None:
        self.say(f"freeze: the proxy answers 503 (Retry-After) and the writers of the {self.kind.what} stop")
        result = self.server.verb("part-freeze", self._args())
        self.record.frozen_at = float(result.get("frozen_at") or time.time())
        self.save()

    # 5
    def verify(self) -> None:
        self.say("verify: copying the final delta")
        try:
            self.server.verb("part-copy", self._args(self.record.to))
            self.say(f"verify: reading every {'object' if self.kind.part == 'objects' else 'table'} on both sides")
            result = self.server.verb("part-verify", self._args(self.record.to))
            problems = list(result.get("problems") or [])
        except MigrationError as exc:
            problems = [str(exc)]
        else:
            counted = (f"{result.get('objects', 0)} objects, {result.get('bytes', 0)} bytes"
                       if self.kind.part == "objects" else f"{result.get('tables', 0)} tables, {result.get('rows', 0)} rows")
            if not problems:
                self.say(f"verify: both sides hold the same {counted}")
        if problems:
            self.say(f"verify: the {self.record.to} side differs; the stack serves again on its {self.source} "
                     f"{self.kind.what}")
            self.server.verb("part-unfreeze", self._args())
            self.record.frozen_at = None
            for phase in ("freeze", "verify"):
                self.record.done.pop(phase, None)
            self.record.last_error = "; ".join(problems[:5])
            self.save()
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise VerificationFailed(f"no cutover: the {self.record.to} side differs from the {self.source} side: "
                                     f"{'; '.join(problems[:5])}{more}; the stack serves again on its {self.source} "
                                     f"{self.kind.what}")

    # 6
    def cutover(self) -> None:
        self.engine.set_config({"mlox:part_move.state": "cutover"})
        self.say(f"cutover: reconfiguring the services for the {self.record.to} {self.kind.what}")
        self.engine.up()
        self._server = None
        self.server.verb("part-unfreeze", self._args())
        if self.record.frozen_at:
            self.record.downtime_s = time.time() - self.record.frozen_at
        self.record.frozen_at = None

    def _file(self) -> str:
        from mlox_iac.paths import stack_file

        return str(stack_file(self.project_dir, self.record.stack))


# --------------------------------------------------------------------------- the commands


def _validated(stack: str, project_dir: Path):
    from mlox_iac import automation

    return automation.validate_stack(stack, project_dir=project_dir)


def run(kind: PartKind, stack: str, to: str, *, project_dir: Path, engine: Engine,
        server_for: Callable[[Mapping[str, Any]], Server], say: Say = lambda line: None) -> PartRecord:
    """Start or resume the move of ``kind``'s part of ``stack`` to ``to``; returns the record."""
    if to not in SIDES:
        raise ConfigError([f"--to: {to!r} is not a side of a part (allowed: external, local)"])
    config = _validated(stack, project_dir)
    record = load_record(project_dir, stack)
    if record is None:
        if config.part_move is not None:
            raise MigrationError(f"stack {stack} has mlox:part_move set but no record in "
                                 f"{record_path(project_dir, stack)}: run mlox-iac migrate --stack {stack} "
                                 f"--part {config.part_move.part} --abort")
        record = PartRecord(stack, kind.part, to)
    elif (record.part, record.to) != (kind.part, to):
        raise ConfigError([f"--part/--to: stack {stack} is already moving its {record.part} to {record.to} "
                           f"(resume with --part {record.part} --to {record.to}, or --abort first)"])
    if record.cut_over:
        say(record.next_step())
        return record
    move = PartMove(kind, project_dir, record, engine, server_for, say, config)
    save_record(project_dir, record)
    run_phases(PHASES, record, move, say=say, save=lambda: save_record(project_dir, record),
               forget=lambda: record_path(project_dir, stack).unlink(missing_ok=True))
    if record.downtime_s is not None:
        say(f"downtime (freeze until the services served again): {record.downtime_s:.1f}s")
    say(record.next_step())
    return record


def finish(kind: PartKind, stack: str, *, project_dir: Path, engine: Engine, say: Say = lambda line: None) -> None:
    """After the cutover: the moved part stays where it is, the old side stops."""
    record = load_record(project_dir, stack)
    if record is None or record.part != kind.part or not record.cut_over:
        where = ("no part move in progress" if record is None else
                 f"the move of its {record.part} has not cut over yet (next: {record.next_phase})"
                 if record.part == kind.part else f"the move in progress is of its {record.part}")
        raise MigrationError(f"stack {stack}: {where}; --finish runs only after the cutover")
    in_use = "true" if record.to == "external" else "false"
    engine.set_config({f"mlox:services.{kind.service}.external.in_use": in_use}, remove=("mlox:part_move",))
    say(f"finish: stopping the {other(record.to)} side")
    engine.up()
    record_path(project_dir, stack).unlink(missing_ok=True)
    if record.to == "external":
        say(f"finish: the server's own {kind.what} store is stopped; its files stay on the data volume "
            f"(/mnt/mlox-data/volumes/{kind.service}-data) until you remove them")
    else:
        say(f"finish: the {kind.what} on the external {kind.store} are left as they were; remove them there "
            "when you no longer need them")


def abort(kind: PartKind, stack: str, *, project_dir: Path, engine: Engine,
          server_for: Callable[[Mapping[str, Any]], Server], say: Say = lambda line: None) -> None:
    """Go back to the side the services used before the move, nothing lost, from any phase
    before ``finish``: after the cutover the new side's data comes back first, verified."""
    config = _validated(stack, project_dir)
    record = load_record(project_dir, stack)
    if record is None and (config.part_move is None or config.part_move.part != kind.part):
        raise MigrationError(f"stack {stack}: no move of its {kind.part} in progress")
    to = record.to if record is not None else config.part_move.to
    back = other(to)
    server = server_for(engine.outputs())
    if record is not None and record.cut_over:
        # The new side has served since the cutover: its data goes back, verified, first.
        say(f"abort: the {to} side has served since the cutover; bringing its {kind.what} back")
        server.verb("part-freeze", ("--part", kind.part))
        try:
            server.verb("part-copy", ("--part", kind.part, "--to", back))
            result = server.verb("part-verify", ("--part", kind.part, "--to", back))
            problems = list(result.get("problems") or [])
        except MigrationError as exc:
            problems = [str(exc)]
        if problems:
            server.verb("part-unfreeze", ("--part", kind.part))
            raise VerificationFailed(f"not aborted: the {back} side's copy differs: {'; '.join(problems[:5])}; "
                                     f"the stack serves again on its {to} {kind.what}")
        record.frozen_at = time.time()
        record.done.pop("cutover", None)
        save_record(project_dir, record)
    elif record is not None and "prepare" in record.done:
        # Frozen, or perhaps frozen by a run interrupted during its freeze: serve again (harmless if not).
        say("abort: the stack serves again")
        server.verb("part-unfreeze", ("--part", kind.part))
        record.frozen_at = None
    if config.part_move is not None:
        in_use = "true" if back == "external" else "false"
        engine.set_config({f"mlox:services.{kind.service}.external.in_use": in_use}, remove=("mlox:part_move",))
        say(f"abort: the services use the {back} {kind.what} again")
        engine.up()
    if record is not None and record.frozen_at is not None:  # frozen for the copy back
        server_for(engine.outputs()).verb("part-unfreeze", ("--part", kind.part))
        say(f"downtime (freeze until the services served again): {time.time() - record.frozen_at:.1f}s")
    record_path(project_dir, stack).unlink(missing_ok=True)
    say(f"abort: stack {stack} keeps its {kind.what} on the {back} side; the copies on the {to} side are left "
        "as they are")
