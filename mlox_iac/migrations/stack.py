"""Moving a live stack to another server or provider, in named phases that can be resumed.

``mlox-iac migrate`` and scripts call :func:`run`, :func:`finish` and :func:`abort`. Each
phase records in ``<project>/.mlox/migrate/<stack>.json`` that it finished; a rerun starts
at the first unfinished phase. The engine steps go through :mod:`mlox_iac.automation`
(an :class:`Engine`); the data steps run on the servers themselves (``mlox_data move-*``,
see ``mlox_iac/data/move.py``), reached over SSH (a :class:`Servers`).

=============  ==============================================================================
phase          what it does
=============  ==============================================================================
preflight      the stack is deployed and not already moving; the new server's settings are
               valid and big enough; the old server answers over SSH
provision      ``mlox:migration`` is set and ``up`` creates the new server beside the old one,
               bootstrapped, with every service and the same credentials (not serving users)
copy           bulk copy while the old server serves: staged there, sent straight to the new
               server with a key made for this move, restored there and verified
freeze         the old proxy answers 503 with ``Retry-After``; the writers stop
verify         final delta (stage, send, restore) and a full comparison of every database
               table, object and volume file; any difference unfreezes the old server and
               names what differed
cutover        ``up`` points the outputs at the new server; the old one is stopped and protected
=============  ==============================================================================

``finish`` removes the old server; ``abort`` (any time before ``finish``) goes back to it.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

from mlox_iac.errors import ConfigError, MloxError

PHASES = ("preflight", "provision", "copy", "freeze", "verify", "cutover")
RECORD_DIR = Path(".mlox") / "migrate"
Say = Callable[[str], None]


class MigrationError(MloxError):
    """A phase failed; the record says where a rerun starts."""


class VerificationFailed(MigrationError):
    """The new server's data differs from the old server's: no cutover happened."""


# --------------------------------------------------------------------------- the record


@dataclass
class Record:
    """The persistent state of one move (no secrets: names, addresses, times)."""

    stack: str
    source: str  # provider of the old server
    to: str
    old_server: str
    new_server: str
    done: dict[str, float] = field(default_factory=dict)  # phase -> when it finished
    frozen_at: float | None = None
    downtime_s: float | None = None
    key_installed: bool = False
    last_error: str | None = None

    @property
    def next_phase(self) -> str | None:
        return next((p for p in PHASES if p not in self.done), None)

    @property
    def cut_over(self) -> bool:
        return "cutover" in self.done

    def finish_phase(self, phase: str) -> None:
        self.done[phase] = time.time()

    def next_step(self) -> str:
        """What to run next, in words."""
        if self.cut_over:
            return (f"the stack runs on the new server; when you are satisfied run `mlox-iac migrate --stack "
                    f"{self.stack} --finish` to remove the old one (or --abort to go back to it)")
        return (f"rerun `mlox-iac migrate --stack {self.stack} --to {self.to}` to resume at {self.next_phase}, "
                f"or `mlox-iac migrate --stack {self.stack} --abort` to go back to the old server")


def record_path(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / RECORD_DIR / f"{stack}.json"


def read_record(path: Path, cls: type, what: str) -> Any:
    """A record of ``cls`` from its JSON file, or None when there is none."""
    if not path.is_file():
        return None
    try:
        return cls(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise MloxError(f"{path}: not a {what} record ({exc}); move it away to start over") from None


def write_record(path: Path, record: Any) -> None:
    """Write a record (a dataclass) atomically: a crash leaves the old one or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def load_record(project_dir: Path, stack: str) -> Record | None:
    return read_record(record_path(project_dir, stack), Record, "migration")


def save_record(project_dir: Path, record: Record) -> None:
    write_record(record_path(project_dir, record.stack), record)


def next_server_name(current: str) -> str:
    """Two names take turns: a stack has at most two servers at a time."""
    return "b" if current != "b" else "main"


# --------------------------------------------------------------------------- the seams


class Engine(Protocol):
    """The Automation API steps a move needs (see :class:`AutomationEngine`)."""

    def outputs(self) -> dict[str, Any]: ...

    def up(self) -> dict[str, Any]: ...

    def set_config(self, values: Mapping[str, str], remove: tuple[str, ...] = (), secret: tuple[str, ...] = ()) -> None: ...

    def get_config(self, key: str) -> str: ...


class Servers(Protocol):
    """The data steps on the two servers (see :class:`SshServers`)."""

    def verb(self, role: str, verb: str, args: tuple[str, ...] = ()) -> Any: ...

    def authorize(self, role: str, public_key: str, source: str) -> None: ...

    def deauthorize(self, role: str) -> None: ...

    def ping(self, role: str) -> None: ...


@dataclass
class AutomationEngine:
    """:class:`Engine` over :mod:`mlox_iac.automation` for one stack."""

    stack: str
    project_dir: Path
    pulumi_command: Any = None
    passphrase_prompt: Any = None
    on_event: Any = None

    def _kw(self) -> dict[str, Any]:
        return {"project_dir": self.project_dir, "pulumi_command": self.pulumi_command,
                "passphrase_prompt": self.passphrase_prompt}

    def outputs(self) -> dict[str, Any]:
        from mlox_iac import automation

        return automation.outputs(self.stack, **self._kw())

    def up(self) -> dict[str, Any]:
        from mlox_iac import automation

        return automation.up(self.stack, on_event=self.on_event, **self._kw()).outputs

    def set_config(self, values: Mapping[str, str], remove: tuple[str, ...] = (), secret: tuple[str, ...] = ()) -> None:
        from mlox_iac import automation

        automation.set_config(self.stack, values, remove=remove, secret=secret, **self._kw())

    def get_config(self, key: str) -> str:
        from mlox_iac import automation

        return automation.get_config(self.stack, key, **self._kw())


MOVE_KEY_COMMENT = "mlox-move"


@dataclass
class SshServers:
    """:class:`Servers` over the system ssh, with the user's own key (``identity``)."""

    migration: Mapping[str, Any]  # the stack's ``migration`` output: ``old`` and ``new`` ssh targets
    identity: str | None = None
    options: tuple[str, ...] = ()
    on_progress: Callable[[dict], None] = lambda event: None

    def verb(self, role: str, verb: str, args: tuple[str, ...] = ()) -> Any:
        from mlox_iac import connect

        argv = connect.data_argv(self.migration[role], verb, args, identity=self.identity, options=self.options)
        try:
            return connect.run_backup_verb(argv, self.on_progress)
        except MloxError as exc:
            raise MigrationError(f"{role} server: {exc}") from None

    def _run(self, role: str, script: str) -> None:
        import subprocess

        from mlox_iac import connect

        argv = connect.ssh_argv(self.migration[role], ["sh", "-c", script], identity=self.identity,
                                options=self.options, batch=True)
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            reason = (done.stderr or "").strip().splitlines()[-1:] or ["no message"]
            raise MigrationError(f"{role} server: {reason[0]}")

    def authorize(self, role: str, public_key: str, source: str) -> None:
        self._run(role, authorize_script(public_key, source))

    def deauthorize(self, role: str) -> None:
        self._run(role, deauthorize_script())

    def ping(self, role: str) -> None:
        self._run(role, "true")


def authorize_script(public_key: str, source: str) -> str:
    """Append the move's key to the SSH user's authorized_keys, usable only from ``source``."""
    import shlex

    parts = public_key.split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise MigrationError(f"the old server handed out an unexpected key ({parts[0] if parts else 'empty'})")
    line = f'restrict,from="{source}" {parts[0]} {parts[1]} {MOVE_KEY_COMMENT}'
    return (f"{deauthorize_script()}; umask 077; mkdir -p ~/.ssh; "
            f"printf '%s\\n' {shlex.quote(line)} >> ~/.ssh/authorized_keys")


def deauthorize_script() -> str:
    return f"if [ -f ~/.ssh/authorized_keys ]; then sed -i '/ {MOVE_KEY_COMMENT}$/d' ~/.ssh/authorized_keys; fi"


# --------------------------------------------------------------------------- the phases


@dataclass
class Move:
    """One move of one stack: the record, the engine, the servers and where to report."""

    project_dir: Path
    record: Record
    engine: Engine
    servers_for: Callable[[Mapping[str, Any]], Servers]
    say: Say = lambda line: None
    config: Any = None  # the validated StackConfig
    _servers: Servers | None = None
    _migration: Mapping[str, Any] | None = None

    def save(self) -> None:
        save_record(self.project_dir, self.record)

    @property
    def servers(self) -> Servers:
        if self._servers is None:
            migration = self._migration or self.engine.outputs().get("migration")
            if not isinstance(migration, Mapping):
                raise MigrationError("the stack has no second server yet (the provision phase has not finished)")
            self._servers = self.servers_for(migration)
        return self._servers

    # 1
    def preflight(self) -> None:
        config, record = self.config, self.record
        try:
            config.for_target(record.to)
        except ValueError as exc:  # _FieldError: a key of the stack file
            key = getattr(exc, "key", record.to)
            raise ConfigError([f"{self._file()}: mlox:{key}: {getattr(exc, 'message', exc)}"]) from None
        outputs = self.engine.outputs()
        if not outputs.get("server_address"):
            raise MigrationError(f"stack {record.stack} is not deployed: there is nothing to move (run mlox-iac up)")
        if outputs.get("provider") != config.provider:
            raise MigrationError(f"stack {record.stack} runs on {outputs.get('provider')} but its file says "
                                 f"mlox:provider {config.provider}: put mlox:provider back to {outputs.get('provider')}")
        # With its recorded host keys: checked against them, never trusted on first use through
        # the user's ~/.ssh/known_hosts (a sandbox's address is given again to the next sandbox).
        old = {k: outputs.get(k) for k in ("server_address", "ssh_user", "ssh_port", "ssh_host_keys")}
        self.servers_for({"old": old}).ping("old")

    # 2
    def provision(self) -> None:
        record = self.record
        outputs = self.engine.outputs()
        values = {"mlox:migration.to": record.to, "mlox:migration.server": record.new_server,
                  "mlox:migration.state": "provisioning",
                  "mlox:migration.source_address": _ip_of(str(outputs["server_address"]))}
        self.engine.set_config(values)
        self.say(f"provision: creating the {record.to} server and deploying the services on it")
        after = self.engine.up()
        self._migration = after.get("migration")

    # 3
    def copy(self) -> None:
        self._send_delta("copy")
        self.say("copy: restoring on the new server")
        self.servers.verb("new", "move-apply")

    def _key_source(self, src_address: str, dst_address: str) -> str:
        """Where the move's key may be used from: the sending server's address, or for a
        sandbox sending to a server outside its network, the addresses its traffic leaves
        this machine with (NAT): the user's own, in mlox:ssh.admin_cidrs."""
        cidrs = self.config.ssh.admin_cidrs if self.config is not None else ()
        return key_source(_ip_of(src_address), _ip_of(dst_address), _sandbox_subnet(self.project_dir, self.record.stack),
                          cidrs)

    def _send_delta(self, phase: str, src: str = "old", dst: str = "new") -> None:
        """Stage on ``src``, send to ``dst`` what it lacks (the move's key allowed only from ``src``)."""
        servers, migration = self.servers, self._migration or self.engine.outputs()["migration"]
        self._migration = migration
        if not self.record.key_installed:
            key = servers.verb(src, "move-keygen")["public_key"]
            servers.authorize(dst, key, self._key_source(str(migration[src]["server_address"]),
                                                         str(migration[dst]["server_address"])))
            self.record.key_installed = True
            self.save()
        self.say(f"{phase}: staging the data on the {src} server")
        staged = servers.verb(src, "move-stage")
        self.say(f"{phase}: {staged['files']} files, {_size(staged['bytes'])} staged; sending what the {dst} server lacks")
        target = migration[dst]
        sent = servers.verb(src, "move-send", ("--to", str(target["server_address"]), "--port", str(target["ssh_port"]),
                                               "--user", str(target["ssh_user"])))
        self.say(f"{phase}: sent {sent['files']} files, {_size(sent['bytes'])}")

    # 4
    def freeze(self) -> None:
        self.say("freeze: the old server answers 503 (Retry-After) and its writers stop")
        self.servers.verb("old", "move-freeze")
        self.record.frozen_at = time.time()
        self.save()

    # 5
    def verify(self) -> None:
        self._send_delta("final delta")
        self.say("verify: restoring the final delta on the new server")
        try:
            self.servers.verb("new", "move-apply")
            result = self.servers.verb("new", "move-verify")
            problems = list(result.get("problems") or [])
        except MigrationError as exc:
            problems = [str(exc)]
        if problems:
            self.say("verify: the new server differs; unfreezing the old server")
            self.servers.verb("old", "move-unfreeze")
            self.record.frozen_at = None
            for phase in ("freeze", "verify"):
                self.record.done.pop(phase, None)
            self.record.last_error = "; ".join(problems[:5])
            self.save()
            raise VerificationFailed(
                f"no cutover: the new server's data differs from the old server's: {'; '.join(problems[:5])}"
                f"{f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''}; the old server serves again")

    # 6
    def cutover(self) -> None:
        record = self.record
        self.engine.set_config({"mlox:migration.state": "cutover"})
        self.say("cutover: pointing the stack's outputs at the new server")
        after = self.engine.up()
        record.downtime_s = time.time() - record.frozen_at if record.frozen_at else None
        self.say("cutover: stopping the old server (kept, protected, until --finish)")
        self.servers.verb("old", "move-stop")
        self._drop_key()
        if self.config.domain:
            self.say(f"DNS: point these records at {after.get('server_address')}: {', '.join(dns_names(after))}")

    def _drop_key(self, src: str = "old", dst: str = "new") -> None:
        if self.record.key_installed:
            self.servers.deauthorize(dst)
            self.servers.verb(src, "move-keydrop")
            self.record.key_installed = False
            self.save()

    def copy_back(self) -> None:
        """After the cutover: bring the new server's data back to the old one, verified, and
        point the outputs at the old one again (``--abort`` then removes the new server)."""
        migration = self._migration or self.engine.outputs()["migration"]
        self._migration = migration
        self.say("abort: the old server admits the new one over SSH")
        self.engine.set_config({"mlox:migration.return_address": _ip_of(str(migration["new"]["server_address"]))})
        self._migration = self.engine.up()["migration"]
        self._servers = None
        servers = self.servers
        self.say("abort: the new server answers 503 (Retry-After) and its writers stop")
        servers.verb("new", "move-freeze")
        frozen = time.time()
        servers.verb("old", "move-start")
        servers.verb("old", "move-freeze")  # running, not serving until its data is back
        self._send_delta("copy back", src="new", dst="old")
        servers.verb("old", "move-apply")
        problems = list((servers.verb("old", "move-verify") or {}).get("problems") or [])
        if problems:
            servers.verb("old", "move-stop")
            servers.verb("new", "move-unfreeze")
            self._drop_key(src="new", dst="old")
            raise VerificationFailed(f"not aborted: the old server's copy differs from the new server's: "
                                     f"{'; '.join(problems[:5])}; the new server serves again")
        self.engine.set_config({"mlox:migration.state": "provisioning"})
        self.say("abort: pointing the stack's outputs at the old server again")
        self.engine.up()
        servers.verb("old", "move-unfreeze")
        self.record.downtime_s = time.time() - frozen
        self._drop_key(src="new", dst="old")
        self.record.done.pop("cutover", None)
        self.record.frozen_at = None
        self.save()

    def _file(self) -> str:
        from mlox_iac.paths import stack_file

        return str(stack_file(self.project_dir, self.record.stack))


def dns_names(outputs: Mapping[str, Any]) -> list[str]:
    """The host names of the stack's URLs (with ``mlox:domain``), which DNS must point at the server."""
    import ipaddress
    from urllib.parse import urlsplit

    names = set()
    for url in (outputs.get("urls") or {}).values():
        host = urlsplit(str(url)).hostname
        if host:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                names.add(host)
    return sorted(names)


def _record(ip: str) -> tuple[str, str]:
    """(record type, address) of a resolved address; an IPv4-mapped IPv6 answer is its IPv4."""
    import ipaddress

    try:
        parsed = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return "A", ip
    if parsed.version == 6 and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return ("A" if parsed.version == 4 else "AAAA"), parsed.compressed


def dns_pending(answers: Mapping[str, set[str]], address: str) -> dict[str, str]:
    """The names whose A and AAAA records are not ``address`` alone, each with its records by
    type (``A 203.0.113.20, AAAA 2001:db8::10``). The stack announces one address: an AAAA
    record left pointing elsewhere (at the old server, say) sends IPv6 clients there, so it
    keeps a name pending as a wrong A record does."""
    want = {_record(address)}
    pending = {}
    for name, found in sorted(answers.items()):
        records = {_record(ip) for ip in found}
        if records != want:
            pending[name] = ", ".join(f"{kind} {ip}" for kind, ip in sorted(records)) or "nothing"
    return pending


def resolve_a_and_aaaa(name: str) -> set[str]:
    """Every address ``name`` resolves to, IPv4 (A) and IPv6 (AAAA)."""
    found: set[str] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            found |= {info[4][0] for info in socket.getaddrinfo(name, None, family)}
        except OSError:
            pass  # no record of this type
    return found


def wait_for_dns(names: list[str], address: str, *, timeout_s: float, say: Say = lambda line: None,
                 resolve: Callable[[str], set[str]] = resolve_a_and_aaaa, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, every_s: float = 15) -> None:
    """Wait until every name resolves to ``address`` only, by A and AAAA records; raise after
    ``timeout_s`` naming the records that do not yet (the move itself is done: this only tells
    when clients follow)."""
    deadline = clock() + timeout_s
    while True:
        pending = dns_pending({name: resolve(name) for name in names}, address)
        if not pending:
            say(f"DNS: {', '.join(names)} resolve to {address}")
            return
        detail = "; ".join(f"{name} -> {records}" for name, records in pending.items())
        if clock() >= deadline:
            aaaa = any("AAAA " in records for records in pending.values()) and _record(address)[0] == "A"
            change = ("change these records and remove the AAAA ones, as the stack announces its IPv4 address only"
                      if aaaa else "change these records")
            raise MigrationError(f"DNS does not point at the new server {address} yet after {timeout_s:.0f}s: {detail} "
                                 f"(the move is done; {change}; clients follow once they resolve)")
        say(f"DNS: waiting for {len(pending)} of {len(names)} records: {detail}")
        sleep(every_s)


def _sandbox_subnet(project_dir: Path, stack: str) -> str | None:
    """The network of the sandbox the stack was made on (``mlox-iac sandbox``), None for others."""
    from mlox_iac.sandbox import manage

    sandbox = manage.load_record(project_dir, stack)
    return sandbox.subnet if sandbox is not None else None


def behind_nat(src: str, dst: str, sandbox_subnet: str | None) -> bool:
    """Whether ``src`` is on the sandbox's network and ``dst`` outside it: ``src``'s connections
    reach ``dst`` through this machine's NAT, and ``dst`` cannot open one to ``src``."""
    import ipaddress

    if sandbox_subnet is None:
        return False
    own = ipaddress.ip_network(sandbox_subnet)
    return ipaddress.ip_address(src) in own and ipaddress.ip_address(dst) not in own


def key_source(src: str, dst: str, sandbox_subnet: str | None, admin_cidrs: Sequence[str]) -> str:
    """The ``from=`` of the move's key on the receiving server (see ``Move._key_source``)."""
    import ipaddress

    if not behind_nat(src, dst, sandbox_subnet):
        return src  # not a sandbox, or the receiver is on the sandbox's network
    own = ipaddress.ip_network(str(sandbox_subnet))
    outside = [c for c in admin_cidrs if not (ipaddress.ip_network(c, strict=False).version == own.version
                                              and ipaddress.ip_network(c, strict=False).subnet_of(own))]
    if not outside:
        raise MigrationError(f"the sandbox's traffic reaches {dst} from this machine's address, which "
                             "mlox:ssh.admin_cidrs does not name: add it, then run migrate again")
    return ",".join(outside)


def _ip_of(address: str) -> str:
    """An IP address for ``address`` (a host name is resolved: firewalls take addresses)."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        try:
            return socket.gethostbyname(address)
        except OSError as exc:
            raise MigrationError(f"cannot resolve the old server's address {address}: {exc}") from None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# --------------------------------------------------------------------------- the commands


def run_phases(phases: tuple[str, ...], record: Any, move: Any, *, say: Say, save: Callable[[], None],
               forget: Callable[[], None], after: Callable[[str], None] = lambda phase: None) -> None:
    """Run ``move``'s method of each phase from the record's next one, recording each as done.

    A failure is recorded with the way on in words (a rerun resumes there); a failed
    preflight changed nothing, so its record is dropped (``forget``); a verification failure
    has recorded its own state and passes through."""
    if record.next_phase not in (None, phases[0]):
        say(f"resuming at {record.next_phase} (phases done: {', '.join(p for p in phases if p in record.done)})")
    while record.next_phase is not None:
        phase = record.next_phase
        say(f"[{phases.index(phase) + 1}/{len(phases)}] {phase}")
        try:
            getattr(move, phase)()
        except VerificationFailed:
            raise
        except MloxError as exc:
            if phase == phases[0]:  # nothing changed yet: no record to resume from
                forget()
                raise
            record.last_error = str(exc)
            save()
            raise MigrationError(f"{phase} failed: {exc} ({record.next_step()})") from None
        record.done[phase] = time.time()
        record.last_error = None
        save()
        after(phase)


def run(
    stack: str,
    to: str,
    *,
    project_dir: Path,
    engine: Engine,
    servers_for: Callable[[Mapping[str, Any]], Servers],
    say: Say = lambda line: None,
) -> Record:
    """Start or resume the move of ``stack`` to provider ``to``; returns the finished record."""
    from mlox_iac import automation

    config = automation.validate_stack(stack, project_dir=project_dir)
    record = load_record(project_dir, stack)
    if record is None:
        if config.migration is not None:
            raise MigrationError(f"stack {stack} has mlox:migration set but no record in "
                                 f"{record_path(project_dir, stack)}: run mlox-iac migrate --stack {stack} --abort")
        record = Record(stack, config.provider, to, config.server, next_server_name(config.server))
    elif record.to != to:
        raise ConfigError([f"--to: {to!r}: stack {stack} is already moving to {record.to} "
                           f"(resume with --to {record.to}, or --abort first)"])
    if record.cut_over:
        say(record.next_step())
        return record
    move = Move(project_dir, record, engine, servers_for, say, config)
    save_record(project_dir, record)
    def after(phase: str) -> None:
        if phase == "provision":  # later phases need the new server's outputs
            move._migration = None

    run_phases(PHASES, record, move, say=say, save=lambda: save_record(project_dir, record),
               forget=lambda: record_path(project_dir, stack).unlink(missing_ok=True), after=after)
    if record.downtime_s is not None:
        say(f"downtime (freeze until the new server served): {record.downtime_s:.0f}s")
    say(record.next_step())
    return record


def finish(stack: str, *, project_dir: Path, engine: Engine, say: Say = lambda line: None) -> None:
    """After the cutover: remove the old server; the stack file then names only the new one."""
    record = load_record(project_dir, stack)
    if record is None or not record.cut_over:
        where = "no move in progress" if record is None else f"the move has not cut over yet (next: {record.next_phase})"
        raise MigrationError(f"stack {stack}: {where}; --finish runs only after the cutover")
    config_values = {"mlox:migration.state": "finishing"}
    engine.set_config(config_values)
    say("finish: lifting the old server's protection")
    engine.up()
    values = {"mlox:provider": record.to, "mlox:server": record.new_server}
    secret: tuple[str, ...] = ()
    remove = ["mlox:migration"]
    from mlox_iac import automation

    config = automation.validate_stack(stack, project_dir=project_dir)
    if config.target is not None and getattr(config.target, record.to) is not None:
        # A move within one provider: the new settings replace the provider's block.
        settings = getattr(config.target, record.to).model_dump(exclude_none=True)
        if any(k == "private_key" for k in settings):
            settings["private_key"] = engine.get_config(f"mlox:target.{record.to}.private_key")
        engine.set_config({}, remove=(f"mlox:{record.to}",))
        for key, value in settings.items():
            path = f"mlox:{record.to}.{key}"
            if key == "private_key":
                secret = (*secret, path)
            values[path] = value if isinstance(value, str) else json.dumps(value)
        remove.append("mlox:target")
    engine.set_config(values, remove=tuple(remove), secret=secret)
    say("finish: removing the old server")
    engine.up()
    record_path(project_dir, stack).unlink(missing_ok=True)


def abort(
    stack: str,
    *,
    project_dir: Path,
    engine: Engine,
    servers_for: Callable[[Mapping[str, Any]], Servers],
    say: Say = lambda line: None,
) -> None:
    """Go back to the old server with nothing lost, from any phase before ``finish``."""
    from mlox_iac import automation

    record = load_record(project_dir, stack)
    config = automation.validate_stack(stack, project_dir=project_dir)
    if record is None and config.migration is None:
        raise MigrationError(f"stack {stack}: no move in progress")
    if record is not None and record.cut_over:
        # The new server has served users since the cutover: its data goes back first, sent
        # by the new server, which cannot reach a sandbox behind this machine's NAT.
        moved = engine.outputs().get("migration")
        old, new = ((_ip_of(str(moved[role]["server_address"])) for role in ("old", "new"))
                    if isinstance(moved, Mapping) else ("", ""))
        if old and behind_nat(old, new, _sandbox_subnet(project_dir, stack)):
            raise MigrationError(f"stack {stack} runs on its new server {new} since the cutover, and that server cannot "
                                 f"send its data back into the sandbox (nothing outside this machine can connect into "
                                 f"a sandbox): nothing was changed; keep the new server (mlox-iac migrate --stack "
                                 f"{stack} --finish)")
        move = Move(project_dir, record, engine, servers_for, say, config)
        move.copy_back()
        record.frozen_at = None
    outputs = engine.outputs()
    migration = outputs.get("migration")
    if isinstance(migration, Mapping):
        servers = servers_for(migration)
        if record is not None and record.frozen_at is not None:
            say("abort: the old server serves again")
            servers.verb("old", "move-unfreeze")
            record.frozen_at = None
            save_record(project_dir, record)
        if record is not None and record.key_installed:
            servers.deauthorize("new")
        servers.verb("old", "move-clean")
    if config.migration is not None:
        say("abort: removing the new server")
        engine.set_config({}, remove=("mlox:migration",))
        engine.up()
    record_path(project_dir, stack).unlink(missing_ok=True)
    say(f"abort: stack {stack} runs on its old server only")


def default_servers(identity: str | None, options: tuple[str, ...], on_progress: Callable[[dict], None]):
    """The :class:`SshServers` factory the CLI uses."""
    return lambda migration: SshServers(migration, identity=identity, options=options, on_progress=on_progress)


def project_record_summary(project_dir: Path, stack: str) -> Optional[dict[str, Any]]:
    record = load_record(project_dir, stack)
    return None if record is None else {**asdict(record), "next_phase": record.next_phase, "next_step": record.next_step()}


__all__ = ["PHASES", "Record", "Move", "run", "finish", "abort", "AutomationEngine", "SshServers",
           "MigrationError", "VerificationFailed", "record_path", "load_record", "dns_names", "wait_for_dns"]
