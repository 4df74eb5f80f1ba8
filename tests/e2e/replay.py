"""Replay the pulumi-command resources of a mocked Pulumi run on real hosts over SSH.

The end-to-end tests run the real program under Pulumi mocks and record every resource
(type, name, urn, parent, inputs, dependencies).  This module executes the recorded
``command:remote:Command`` and ``command:remote:CopyToRemote``
resources the way pulumi-command v1.2.1 and the Pulumi engine would, over real SSH
(paramiko), and keeps a small state file between runs so that a second replay behaves like
a second ``pulumi up``: unchanged resources are skipped, changed ones are updated or
replaced, removed ones are deleted.

It stands in for the engine in one place only: ``test_migrate_cloud.py``, whose cloud
servers are mocked because no cloud API is reachable here; every on-prem stack is deployed
by the real engine. So it covers what mlox-iac's program uses (``create``, ``delete``,
``stdin``, ``triggers``, ``CopyToRemote``, a direct SSH connection) and refuses the rest
(``update``, ``environment``, ``addPreviousOutputInEnv``, ``logging``, ``CopyFile``, a proxy
connection) with a ReplayError naming it, rather than imitate what nothing exercises.

The semantics mirrored here, with upstream file/line references, are written up in
``docs/pulumi-command-semantics.md``; its last section lists where this replay differs.

Secrets: nothing secret is ever logged or written to the state file.  Logs carry resource
names, actions and durations only (never command output); the state file stores salted
hashes of inputs plus the plaintext of a few non-secret inputs needed to run a ``delete``
later.  Error messages (which, like upstream, carry the command and its output) have every
known secret value replaced by ``[secret]``.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import io
import json
import os
import posixpath
import secrets as _secrets
import socket
import stat as _stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import paramiko

__all__ = [
    "RecordedResource",
    "ReplayError",
    "ReplayResult",
    "ReplayState",
    "ReplayStep",
    "go_quote",
    "replay",
]

# --- wire constants (pulumi/runtime/rpc.py) ------------------------------------------------
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
ASSET_SIG = "c44067f5952c0a294b673a41bacd8c17"
ARCHIVE_SIG = "0def7320c3a5731c473e5ecbe6d01bc7"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

COMMAND = "command:remote:Command"
COPY_TO_REMOTE = "command:remote:CopyToRemote"
REPLAYED_TYPES = (COMMAND, COPY_TO_REMOTE)
# What pulumi-command offers and mlox-iac's program does not use: refused, not imitated.
_UNSUPPORTED_INPUTS = {COMMAND: ("update", "environment", "addPreviousOutputInEnv", "logging")}

# Inputs whose change forces replacement (provider:"replaceOnChanges" in
# provider/pkg/provider/common/inputs.go:10 and remote/copy.go:38; the SDKs also pass
# replace_on_changes=["triggers[*]"]).
_REPLACE_PROPS = {COMMAND: {"triggers"}, COPY_TO_REMOTE: {"triggers"}}

# Connection defaults applied by the provider's Check (remote/connection.go:57-78).
_CONN_DEFAULTS = {"user": "root", "port": 22, "dialErrorLimit": 10, "perDialTimeout": 15}

_REDACTED = "[secret]"
_KIND = "__pulumi_asset_kind"  # marks a normalised asset/archive (see _asset_to_wire)
_MIN_REDACT_LEN = 4


# --- public data types ---------------------------------------------------------------------
@dataclass
class RecordedResource:
    """One resource as the mock monitor received it (compatible with mlox_iac.plan)."""

    type: str
    name: str
    urn: str
    parent: Optional[str] = None
    inputs: dict = field(default_factory=dict)
    dependencies: list = field(default_factory=list)
    # Optional resource options (the mock monitor sees them on the RegisterResourceRequest):
    delete_before_replace: bool = False
    replace_on_changes: list = field(default_factory=list)
    ignore_changes: list = field(default_factory=list)


class ReplayError(Exception):
    """A replayed resource failed.  ``result`` holds the steps done before the failure."""

    def __init__(self, message: str, *, resource: str = "", result: "ReplayResult | None" = None):
        super().__init__(message)
        self.resource = resource
        self.result = result


@dataclass
class ReplayStep:
    name: str
    urn: str
    type: str
    action: str  # created | updated | replaced | deleted | unchanged
    seconds: float


@dataclass
class ReplayResult:
    steps: list = field(default_factory=list)

    def action(self, name: str) -> str:
        """The action of the (single) step for resource ``name``."""
        found = [s.action for s in self.steps if s.name == name]
        if not found:
            raise KeyError(name)
        if len(found) > 1:
            raise KeyError(f"{name} is ambiguous: {found}")
        return found[0]

    def actions(self) -> dict:
        return {s.name: s.action for s in self.steps}

    def changed(self) -> list:
        return [s for s in self.steps if s.action != "unchanged"]


class ReplayState:
    """Pulumi's state between replays, persisted as JSON at ``path`` (or in memory if None).

    Per resource it keeps salted hashes of every input (to decide unchanged / update /
    replace), the connection's host/port/user and hashes of its credentials, the
    dependencies, and the plaintext of non-secret inputs a later ``delete`` needs
    (``delete``, ``stdin``).  Secret inputs are stored only as hashes.
    """

    VERSION = 1

    def __init__(self, path: "str | os.PathLike | None" = None):
        self.path = Path(path) if path is not None else None
        self.salt = _secrets.token_hex(16)
        self.resources: dict = {}
        self.pending_deletes: list = []
        if self.path is not None and self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("version") != self.VERSION:
                raise ValueError(f"{self.path}: unsupported replay state version {data.get('version')!r}")
            self.salt = data["salt"]
            self.resources = data.get("resources", {})
            self.pending_deletes = data.get("pending_deletes", [])

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "version": self.VERSION,
            "salt": self.salt,
            "resources": self.resources,
            "pending_deletes": self.pending_deletes,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def hash(self, value: Any) -> str:
        blob = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
        return hashlib.sha256((self.salt + "\0" + blob).encode()).hexdigest()


# --- Go formatting helpers -----------------------------------------------------------------
_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v",
               '"': r"\"", "\\": r"\\"}


def go_quote(s: str) -> str:
    """Approximate Go's ``strconv.Quote`` (the ``%q`` verb)."""
    out = ['"']
    for ch in s:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch == " " or ch.isprintable():
            out.append(ch)
        else:
            cp = ord(ch)
            if cp < 0x80:
                out.append(f"\\x{cp:02x}")
            elif cp <= 0xFFFF:
                out.append(f"\\u{cp:04x}")
            else:
                out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


# --- input normalisation -------------------------------------------------------------------
class _Secrets:
    """Collects secret plaintexts so that they can be redacted from messages."""

    def __init__(self) -> None:
        self.values: set = set()

    def add(self, value: Any) -> None:
        if isinstance(value, str):
            if len(value) >= _MIN_REDACT_LEN:
                self.values.add(value)
                for line in value.splitlines():
                    if len(line.strip()) >= 8:
                        self.values.add(line)
        elif isinstance(value, Mapping):
            for v in value.values():
                self.add(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                self.add(v)

    def redact(self, text: str) -> str:
        for value in sorted(self.values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, _REDACTED)
        return text


def _asset_to_wire(value: Any) -> "dict | None":
    """pulumi.asset objects -> a normalised dict, or None if ``value`` is not an asset."""
    try:
        from pulumi import asset as pa  # imported lazily: pulumi is only needed for these types
    except ImportError:  # pragma: no cover
        pa = None
    if pa is not None:
        if isinstance(value, pa.FileAsset):
            return {_KIND: "asset", "path": str(value.path)}
        if isinstance(value, pa.StringAsset):
            return {_KIND: "asset", "text": value.text}
        if isinstance(value, pa.RemoteAsset):
            return {_KIND: "asset", "uri": value.uri}
        if isinstance(value, pa.FileArchive):
            return {_KIND: "archive", "path": str(value.path)}
        if isinstance(value, pa.RemoteArchive):
            return {_KIND: "archive", "uri": value.uri}
        if isinstance(value, pa.AssetArchive):
            return {_KIND: "archive", "assets": dict(value.assets)}
    if isinstance(value, Mapping) and value.get(SECRET_SIG_KEY) in (ASSET_SIG, ARCHIVE_SIG):
        kind = "asset" if value[SECRET_SIG_KEY] == ASSET_SIG else "archive"
        out = {_KIND: kind}
        for key in ("path", "text", "uri", "assets"):
            if key in value and value[key] is not None:
                out[key] = value[key]
        return out
    return None


def _unwrap(value: Any, secrets: _Secrets) -> "tuple[Any, bool]":
    """Unwrap secrets (recursively) and normalise assets and numbers.

    Returns (plain value, whether anything inside was secret)."""
    if isinstance(value, Mapping) and value.get(SECRET_SIG_KEY) == SECRET_SIG:
        inner, _ = _unwrap(value.get("value"), secrets)
        secrets.add(inner)
        return inner, True
    wire = _asset_to_wire(value)
    if wire is not None:
        if "assets" in wire:
            assets = {}
            secret = False
            for k, v in wire["assets"].items():
                assets[k], s = _unwrap(v, secrets)
                secret = secret or s
            wire["assets"] = assets
            return wire, secret
        return wire, False
    if isinstance(value, Mapping):
        out, secret = {}, False
        for k, v in value.items():
            if v is None:
                continue
            out[k], s = _unwrap(v, secrets)
            secret = secret or s
        return out, secret
    if isinstance(value, (list, tuple)):
        out_l, secret = [], False
        for v in value:
            u, s = _unwrap(v, secrets)
            out_l.append(u)
            secret = secret or s
        return out_l, secret
    if isinstance(value, float) and value.is_integer():
        return int(value), False
    return value, False


def _contains_unknown(value: Any) -> bool:
    if isinstance(value, str):
        return value == UNKNOWN
    if type(value).__name__ == "Unknown" and type(value).__module__.startswith("pulumi"):
        return True  # pulumi.output.Unknown (deserialize_properties(..., keep_unknowns=True))
    if isinstance(value, Mapping):
        return any(_contains_unknown(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_unknown(v) for v in value)
    return False


def _apply_conn_defaults(conn: dict) -> dict:
    conn = dict(conn)
    for k, v in _CONN_DEFAULTS.items():
        conn.setdefault(k, v)
    return conn


def _resolve_path(path: str, workdir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else workdir / p


def _content_digest(path: Path) -> str:
    """Content hash of a file or (recursively) a directory; mirrors what the engine hashes."""
    h = hashlib.sha256()
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            rel_root = os.path.relpath(root, path)
            h.update(b"D" + rel_root.encode() + b"\0")
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(b"F" + os.path.join(rel_root, name).encode() + b"\0")
                h.update(_content_digest(Path(full)).encode())
        return h.hexdigest()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(value: Any, workdir: Path) -> Any:
    """A JSON-able form of an input for hashing; assets are represented by their content hash."""
    if isinstance(value, Mapping) and value.get(_KIND) in ("asset", "archive"):
        out = {"__" + value[_KIND]: True}
        if "path" in value:
            p = _resolve_path(value["path"], workdir)
            out["path"] = value["path"]
            out["hash"] = _content_digest(p) if p.exists() else "missing"
        if "text" in value:
            out["text_hash"] = hashlib.sha256(value["text"].encode()).hexdigest()
        if "uri" in value:
            out["uri"] = value["uri"]
        if "assets" in value:
            out["assets"] = {k: _canonical(v, workdir) for k, v in value["assets"].items()}
        return out
    if isinstance(value, Mapping):
        return {k: _canonical(v, workdir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, workdir) for v in value]
    return value


def _source_hash(source: Any, workdir: Path) -> str:
    """The asset/archive hash CopyToRemote.Update compares (remote/copy.go:77-82)."""
    canon = _canonical(source, workdir)
    canon = {k: v for k, v in canon.items() if k != "path"} if isinstance(canon, dict) else canon
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


@dataclass
class _Node:
    type: str
    name: str
    urn: str
    parent: Optional[str]
    inputs: dict  # plain (unwrapped, defaults applied)
    secret_props: set
    dependencies: list
    delete_before_replace: bool = False
    replace_on_changes: tuple = ()
    ignore_changes: tuple = ()
    effective_deps: list = field(default_factory=list)


def _normalise(resources: Iterable[Any], secrets: _Secrets) -> list:
    nodes, seen = [], set()
    for r in resources:
        urn = _get(r, "urn")
        if urn in seen:
            raise ReplayError(f"duplicate resource urn {urn}")
        seen.add(urn)
        typ = _get(r, "type")
        raw_inputs = _get(r, "inputs") or {}
        inputs, secret_props = {}, set()
        for k, v in raw_inputs.items():
            if v is None:
                continue
            # The SDK always marks `connection` secret; only its credentials are secret in
            # substance (added below), host/user/port must stay readable in messages.
            plain, is_secret = _unwrap(v, _Secrets() if k == "connection" else secrets)
            inputs[k] = plain
            if is_secret:
                secret_props.add(k)
        unsupported = [k for k in _UNSUPPORTED_INPUTS.get(typ, ()) if k in inputs]
        if typ in REPLAYED_TYPES and isinstance(inputs.get("connection"), Mapping):
            inputs["connection"] = _apply_conn_defaults(inputs["connection"])
            conn = inputs["connection"]
            for key in ("password", "privateKey", "privateKeyPassword"):
                secrets.add(conn.get(key))
            unsupported += ["connection.proxy"] if "proxy" in conn else []
        if unsupported:
            raise ReplayError(f"{typ} ({_get(r, 'name')}): the replay does not support {', '.join(unsupported)} "
                              "(mlox-iac's program uses none of them)", resource=_get(r, "name"))
        opts = _get(r, "options") or {}
        nodes.append(_Node(
            type=typ,
            name=_get(r, "name"),
            urn=urn,
            parent=_get(r, "parent"),
            inputs=inputs,
            secret_props=secret_props,
            dependencies=list(_get(r, "dependencies") or []),
            delete_before_replace=bool(_get(r, "delete_before_replace", False) or opts.get("deleteBeforeReplace")),
            replace_on_changes=tuple(_get(r, "replace_on_changes", None) or opts.get("replaceOnChanges") or ()),
            ignore_changes=tuple(_get(r, "ignore_changes", None) or opts.get("ignoreChanges") or ()),
        ))
    return nodes


def _order(nodes: list) -> list:
    """Topological order: after every dependency (a dependency on a resource with children
    means all its descendants, as the SDKs expand component dependencies) and after the
    parent (so children also follow their parent's dependencies).  Ties break by urn."""
    by_urn = {n.urn: n for n in nodes}
    children: dict = {}
    for n in nodes:
        if n.parent in by_urn:
            children.setdefault(n.parent, []).append(n.urn)

    def descendants(urn: str) -> set:
        out, stack = set(), list(children.get(urn, ()))
        while stack:
            u = stack.pop()
            if u not in out:
                out.add(u)
                stack.extend(children.get(u, ()))
        return out

    edges: dict = {n.urn: set() for n in nodes}
    for n in nodes:
        deps = set()
        if n.parent in by_urn:
            deps.add(n.parent)
        for d in n.dependencies:
            if d not in by_urn:
                continue
            deps.add(d)
            deps |= descendants(d)
        edges[n.urn] = deps - {n.urn} - descendants(n.urn)
    indegree = {u: len(d) for u, d in edges.items()}
    rdeps: dict = {u: [] for u in edges}
    for u, ds in edges.items():
        for d in ds:
            rdeps[d].append(u)
    ready = [u for u, k in indegree.items() if k == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        u = heapq.heappop(ready)
        out.append(by_urn[u])
        for v in rdeps[u]:
            indegree[v] -= 1
            if indegree[v] == 0:
                heapq.heappush(ready, v)
    if len(out) != len(nodes):
        stuck = sorted(u for u, k in indegree.items() if k > 0)
        raise ReplayError(f"dependency cycle among: {', '.join(stuck)}")
    # transitive replayed dependencies, kept in the state for delete ordering
    replayed = {n.urn for n in nodes if n.type in REPLAYED_TYPES}
    closure: dict = {}
    for n in out:
        acc = set()
        for d in edges[n.urn]:
            acc |= closure[d]
            if d in replayed:
                acc.add(d)
        closure[n.urn] = acc
        n.effective_deps = sorted(acc)
    return out


# --- SSH -----------------------------------------------------------------------------------
class _DialError(Exception):
    """Dialing failed for good (retries exhausted, or a configuration error)."""


def _load_pkey(text: str, password: Optional[str]) -> paramiko.PKey:
    last: Exception = paramiko.SSHException("ssh: no key found")
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text), password=password)
        except paramiko.PasswordRequiredException:
            raise
        except (paramiko.SSHException, ValueError) as e:
            last = e
    raise last


class _FixedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, expected: Optional[str]):
        self.expected = expected

    def missing_host_key(self, client, hostname, key):
        if self.expected is None:
            return  # ssh.InsecureIgnoreHostKey() (remote/connection.go:95-98)
        parts = self.expected.split()
        if len(parts) < 2 or parts[0] != key.get_name() or parts[1] != key.get_base64():
            raise paramiko.SSHException("ssh: host key mismatch")


def _connect_once(conn: dict, sock: Any = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_FixedHostKeyPolicy(conn.get("hostKey")))
    if conn.get("hostKey"):
        parts = conn["hostKey"].split()
        host_id = conn["host"] if int(conn["port"]) == 22 else f"[{conn['host']}]:{int(conn['port'])}"
        try:
            client.get_host_keys().add(
                host_id, parts[0], paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1])))
        except Exception as e:  # noqa: BLE001
            raise _DialError(f"failed to parse host key: {e}") from None
    pkey = None
    if conn.get("privateKey"):
        try:
            pkey = _load_pkey(conn["privateKey"], conn.get("privateKeyPassword"))
        except Exception as e:  # noqa: BLE001
            raise _DialError(f"ssh: {e}") from None
    agent_path = conn.get("agentSocketPath") or os.environ.get("SSH_AUTH_SOCK")
    timeout = conn.get("perDialTimeout")
    timeout = None if not timeout else float(timeout)
    old_sock = os.environ.get("SSH_AUTH_SOCK")
    try:
        if conn.get("agentSocketPath"):
            os.environ["SSH_AUTH_SOCK"] = conn["agentSocketPath"]
        client.connect(
            hostname=conn["host"], port=int(conn["port"]), username=conn["user"],
            pkey=pkey, password=conn.get("password"),
            allow_agent=bool(agent_path), look_for_keys=False,
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, sock=sock,
        )
    except BaseException:
        client.close()
        raise
    finally:
        if conn.get("agentSocketPath"):
            if old_sock is None:
                os.environ.pop("SSH_AUTH_SOCK", None)
            else:
                os.environ["SSH_AUTH_SOCK"] = old_sock
    return client


def _describe_dial_error(conn: dict, e: BaseException) -> str:
    endpoint = f"{conn['host']}:{int(conn['port'])}"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"dial tcp {endpoint}: i/o timeout"
    if isinstance(e, paramiko.AuthenticationException):
        return f"ssh: handshake failed: ssh: unable to authenticate ({e})"
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError) and e.errors:
        e = next(iter(e.errors.values()))
    if isinstance(e, (ConnectionError, OSError)) and not isinstance(e, paramiko.SSHException):
        return f"dial tcp {endpoint}: connect: {(e.strerror or str(e)).lower()}"
    return f"ssh: handshake failed: {e}"


def _dial_with_retry(msg: str, limit: int, f: Callable[[], Any], log: Callable[[str], None]) -> Any:
    """remote/connection.go:150-187 with pulumi sdk retry.Until's defaults (100 ms, x1.5, <= 5 s)."""
    delay, tries = 0.1, 0
    while True:
        delay = min(delay, 5.0)
        try:
            return f()
        except (ReplayError, _DialError):
            raise
        except Exception as e:  # noqa: BLE001
            dials = tries + 1
            if limit > -1 and dials > limit:
                raise _DialError(f"after {tries} failed attempts: {e}") from None
            log(f"{msg} {dials}/{'inf' if limit == -1 else limit} failed: retrying")
            time.sleep(delay)
            delay *= 1.5
            tries += 1


def _dial(conn: dict, log: Callable[[str], None]) -> paramiko.SSHClient:
    """Connection.Dial (remote/connection.go:189-243), without a proxy."""

    class _Err(Exception):
        pass

    def attempt() -> paramiko.SSHClient:
        try:
            return _connect_once(conn)
        except (ReplayError, _DialError):
            raise
        except Exception as e:  # noqa: BLE001
            raise _Err(_describe_dial_error(conn, e)) from None

    return _dial_with_retry("Dial", int(conn.get("dialErrorLimit", 10)), attempt, log)


class _CommandFailed(Exception):
    pass


def _run_command(client: paramiko.SSHClient, cmd: str, stdin: Optional[str]) -> None:
    """CommandOutputs.run (remote/commandOutputs.go:30-108) without environment variables
    (the program sets none; upstream's optional PULUMI_COMMAND_STDOUT/STDERR of an update or
    delete are not sent: no command of the program reads them). The output is kept only
    for the error message, as upstream's (stdout and stderr interleaved)."""
    chan = client.get_transport().open_session()
    chan.exec_command(cmd)
    combined: list = []
    lock = threading.Lock()

    def reader(recv: Callable[[int], bytes]) -> None:
        while True:
            data = recv(32768)
            if not data:
                return
            with lock:
                combined.append(data)

    def writer() -> None:
        try:
            if stdin:
                chan.sendall(stdin.encode())
        except OSError:
            pass
        finally:
            try:
                chan.shutdown_write()  # Go's session always sends EOF after Stdin
            except OSError:
                pass

    threads = [threading.Thread(target=reader, args=(chan.recv,), daemon=True),
               threading.Thread(target=reader, args=(chan.recv_stderr,), daemon=True),
               threading.Thread(target=writer, daemon=True)]
    for t in threads:
        t.start()
    status = chan.recv_exit_status()
    for t in threads:
        t.join()
    chan.close()
    if status != 0:
        if status == -1:
            head = "wait: remote command exited without exit status or exit signal"
        else:
            head = f"Process exited with status {status}"
        both = b"".join(combined).decode(errors="replace")
        raise _CommandFailed(f"{head}: running {go_quote(cmd)}:\n{both}")


# --- SFTP copies (remote/copyController.go) ------------------------------------------------
def _remote_stat(sftp: paramiko.SFTPClient, path: str):
    try:
        return sftp.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        if getattr(e, "errno", None) == 2:
            return None
        raise _CommandFailed(f"failed to stat remote path {path}: {e}") from None


def _is_dir(st) -> bool:
    return st is not None and _stat.S_ISDIR(st.st_mode)


def _go_join(*parts: str) -> str:
    return _go_clean(posixpath.join(*parts))


def _go_clean(p: str) -> str:
    if p == "":
        return "."
    cleaned = posixpath.normpath(p)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def _go_dir(p: str) -> str:
    return _go_clean(posixpath.dirname(p) or ".")


def _mkdir_all(sftp: paramiko.SFTPClient, path: str) -> None:
    st = _remote_stat(sftp, path)
    if st is not None:
        if _is_dir(st):
            return
        raise OSError(f"mkdir {path}: not a directory")
    parent = _go_dir(path)
    if parent not in (path, ".", "/"):
        _mkdir_all(sftp, parent)
    try:
        sftp.mkdir(path)
    except OSError:
        if not _is_dir(_remote_stat(sftp, path)):
            raise


def _copy_file(sftp: paramiko.SFTPClient, src: Path, dst: str) -> None:
    try:
        remote = sftp.open(dst, "wb")
    except OSError as e:
        raise _CommandFailed(f"failed to create remote file {dst}: {e}") from None
    try:
        with open(src, "rb") as local:
            remote.set_pipelined(True)
            for chunk in iter(lambda: local.read(32768), b""):
                remote.write(chunk)
    except OSError as e:
        raise _CommandFailed(f"failed to copy file {src} to remote path {dst}: {e}") from None
    finally:
        remote.close()


def _copy_dir(sftp: paramiko.SFTPClient, src: Path, dst: str) -> None:
    """copyDir: fs.WalkDir order (lexical, directories before their contents)."""

    def walk(rel: str) -> None:
        local = src if rel == "." else src / rel
        remote = _go_join(dst, rel)
        if local.is_dir() and not local.is_symlink():
            st = _remote_stat(sftp, remote)
            if st is None:
                try:
                    sftp.mkdir(remote)
                except OSError as e:
                    raise _CommandFailed(f"failed to create remote directory {remote}: {e}") from None
            elif not _is_dir(st):
                raise _CommandFailed(f"remote path {remote} exists but is not a directory")
            for name in sorted(os.listdir(local)):
                walk(name if rel == "." else f"{rel}/{name}")
        else:
            _copy_file(sftp, local, remote)

    walk(".")


def _sftp_copy(sftp: paramiko.SFTPClient, source_path: str, local: Path, dest_path: str) -> None:
    """sftpCopy (remote/copyController.go:203-269)."""
    if not local.exists():
        raise _CommandFailed(f"open {source_path}: no such file or directory")
    dest_stat = _remote_stat(sftp, dest_path)
    dest = dest_path
    if local.is_dir():
        if dest_stat is None:
            try:
                _mkdir_all(sftp, dest)
            except OSError as e:
                raise _CommandFailed(f"failed to create remote directory {dest}: {e}") from None
        elif not _is_dir(dest_stat):
            raise _CommandFailed(f"remote path {dest} exists but is not a directory")
        if not source_path.endswith("/"):
            dest = _go_join(dest, posixpath.basename(_go_clean(source_path)))
            st = _remote_stat(sftp, dest)
            if st is not None and not _is_dir(st):
                raise _CommandFailed(f"remote path {dest} exists but is not a directory")
            if st is None:
                try:
                    sftp.mkdir(dest)
                except OSError as e:
                    raise _CommandFailed(f"failed to create remote directory {dest}: {e}") from None
        _copy_dir(sftp, local, dest)
    else:
        if _is_dir(dest_stat):
            dest = _go_join(dest, posixpath.basename(_go_clean(source_path)))
        elif dest_stat is None:
            try:
                _mkdir_all(sftp, _go_dir(dest))
            except OSError as e:
                raise _CommandFailed(f"failed to create parent directories for {dest}: {e}") from None
        _copy_file(sftp, local, dest)


def _copy_text(sftp: paramiko.SFTPClient, content: str, dest: str) -> None:
    """copyTextContent (remote/copyController.go:34-62)."""
    if _is_dir(_remote_stat(sftp, dest)):
        raise _CommandFailed(f"remote path {dest} is a directory; when using a text asset, remotePath must be a file path")
    try:
        _mkdir_all(sftp, _go_dir(dest))
    except OSError as e:
        raise _CommandFailed(f"failed to create parent directories for {dest}: {e}") from None
    try:
        with sftp.open(dest, "wb") as fh:
            fh.write(content.encode())
    except OSError as e:
        raise _CommandFailed(f"failed to write text content to remote path {dest}: {e}") from None


def _check_copy_source(node: _Node) -> None:
    """CopyToRemote.Check (remote/copyController.go:72-115, v1.2.1)."""
    src = node.inputs.get("source")
    problems = []
    if not isinstance(src, Mapping) or src.get(_KIND) not in ("asset", "archive"):
        problems.append(("asset", "either asset or archive must be set"))
    elif src[_KIND] == "asset" and "path" not in src and "text" not in src:
        problems.append(("asset", "asset must be a path-based file asset or a text asset"))
    elif src[_KIND] == "archive" and "path" not in src:
        problems.append(("archive", "archive must be a path to a file or directory"))
    if "remotePath" not in node.inputs:
        problems.append(("remotePath", "missing required property 'remotePath'"))
    if problems:
        raise _CommandFailed("\n".join(
            f"{node.type} resource '{node.name}': property {p} has a problem: {why}" for p, why in problems))


# --- the engine ----------------------------------------------------------------------------
class _Engine:
    def __init__(self, state: ReplayState, log: Callable[[str], None], secrets: _Secrets,
                 workdir: Path, credentials: dict):
        self.state = state
        self._log = log
        self.secrets = secrets
        self.workdir = workdir
        self.credentials = credentials  # hash -> plaintext (private keys / passwords)
        self.result = ReplayResult()

    def log(self, msg: str) -> None:
        self._log(self.secrets.redact(msg))

    def fail(self, node_type: str, name: str, urn: str, msg: str) -> ReplayError:
        text = self.secrets.redact(f"{node_type} ({name}):\n  error: {msg}")
        return ReplayError(text, resource=name, result=self.result)

    # state entries ---------------------------------------------------------------------
    def _prop_hashes(self, node: _Node) -> dict:
        return {k: self.state.hash(_canonical(v, self.workdir)) for k, v in node.inputs.items()}

    def _conn_record(self, conn: Mapping) -> dict:
        rec = {k: conn.get(k) for k in ("host", "port", "user", "dialErrorLimit", "perDialTimeout",
                                        "hostKey", "agentSocketPath") if conn.get(k) is not None}
        for k in ("privateKey", "password", "privateKeyPassword"):
            if conn.get(k):
                rec[k + "Hash"] = self.state.hash(conn[k])
        return rec

    def _entry(self, node: _Node, prev: Optional[dict] = None) -> dict:
        entry = {
            "type": node.type,
            "name": node.name,
            "props": self._prop_hashes(node),
            "secret_props": sorted(node.secret_props),
            "deps": node.effective_deps,
            "connection": self._conn_record(node.inputs.get("connection") or {}),
            "plain": {},
            "delete_before_replace": node.delete_before_replace,
        }
        if prev is not None and node.ignore_changes:
            # ignoreChanges: the engine keeps the old value of an ignored property
            for k in node.ignore_changes:
                if k in prev.get("props", {}):
                    entry["props"][k] = prev["props"][k]
                else:
                    entry["props"].pop(k, None)
        for k in ("delete", "stdin"):
            if k in node.inputs and k not in node.secret_props:
                entry["plain"][k] = node.inputs[k]
        if node.type == COPY_TO_REMOTE and isinstance(node.inputs.get("source"), Mapping):
            entry["source_hash"] = _source_hash(node.inputs["source"], self.workdir)
            entry["remotePath"] = node.inputs.get("remotePath")
        return entry

    def _connection_for(self, rec: Mapping, label: str, node_type: str, name: str, urn: str) -> dict:
        conn = {k: v for k, v in rec.items() if not k.endswith("Hash")}
        for k in ("privateKey", "password", "privateKeyPassword"):
            h = rec.get(k + "Hash")
            if h is None:
                continue
            if h not in self.credentials:
                raise self.fail(node_type, name, urn,
                                f"cannot {label}: the {k} of its last connection ({rec.get('user')}@{rec.get('host')}:"
                                f"{rec.get('port')}) is not used by any resource being replayed; pass it via "
                                f"replay(..., credentials=[...])")
            conn[k] = self.credentials[h]
        return conn

    # operations -------------------------------------------------------------------------
    def _timed(self, fn: Callable[[], Any]) -> "tuple[Any, float]":
        t0 = time.monotonic()
        out = fn()
        return out, time.monotonic() - t0

    def _exec(self, node_type: str, name: str, urn: str, conn: dict, cmd: str, stdin: Optional[str]) -> None:
        try:
            client = _dial(conn, self.log)
        except _DialError as e:
            raise self.fail(node_type, name, urn, str(e)) from None
        try:
            _run_command(client, cmd, stdin)
        except _CommandFailed as e:
            raise self.fail(node_type, name, urn, str(e)) from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise self.fail(node_type, name, urn, f"ssh: {e}") from None
        finally:
            client.close()

    def _copy(self, node: _Node) -> None:
        try:
            _check_copy_source(node)
            client = _dial(node.inputs["connection"], self.log)
        except (_DialError, _CommandFailed) as e:
            raise self.fail(node.type, node.name, node.urn, str(e)) from None
        try:
            sftp = client.open_sftp()
            try:
                src = node.inputs["source"]
                dest = node.inputs["remotePath"]
                if "text" in src:
                    _copy_text(sftp, src["text"], dest)
                else:
                    _sftp_copy(sftp, src["path"], _resolve_path(src["path"], self.workdir), dest)
            finally:
                sftp.close()
        except _CommandFailed as e:
            raise self.fail(node.type, node.name, node.urn, str(e)) from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise self.fail(node.type, node.name, node.urn, f"sftp: {e}") from None
        finally:
            client.close()

    def create(self, node: _Node) -> dict:
        """Create (remote/commandController.go:31-60, remote/copyController.go:118-135)."""
        if node.type == COMMAND:
            if node.inputs.get("create") is not None:
                self._exec(node.type, node.name, node.urn, node.inputs["connection"], node.inputs["create"],
                           node.inputs.get("stdin"))
            return self._entry(node)
        self._copy(node)
        return self._entry(node)

    def update(self, node: _Node, prev: dict) -> dict:
        """Update (remote/commandController.go:63-83, remote/copyController.go:137-154): with
        no ``update`` command (the program sets none), a Command runs its ``create`` again."""
        if node.type == COMMAND:
            if node.inputs.get("create") is not None:
                self._exec(node.type, node.name, node.urn, node.inputs["connection"], node.inputs["create"],
                           node.inputs.get("stdin"))
            return self._entry(node, prev=prev)
        new_hash = _source_hash(node.inputs["source"], self.workdir) if isinstance(
            node.inputs.get("source"), Mapping) else None
        if new_hash != prev.get("source_hash") or node.inputs.get("remotePath") != prev.get("remotePath"):
            self._copy(node)
        return self._entry(node, prev=prev)

    def delete(self, urn: str, entry: dict, current: Optional[_Node]) -> None:
        """Delete (remote/commandController.go:86-92): the *old* state's delete, connection and
        stdin. CopyToRemote has no Delete: nothing happens on the host."""
        if entry["type"] != COMMAND:
            return
        name = entry["name"]
        plain = dict(entry.get("plain", {}))
        props = entry.get("props", {})

        def recover(key: str) -> "tuple[bool, Any]":
            if key in plain:
                return True, plain[key]
            if key not in props:
                return True, None
            # secret (or from an older state): usable only if the current program has the same value
            if current is not None and key in current.inputs and \
                    self.state.hash(_canonical(current.inputs[key], self.workdir)) == props[key]:
                return True, current.inputs[key]
            return False, None

        ok, cmd = recover("delete")
        if not ok:
            raise self.fail(entry["type"], name, urn,
                            "cannot run the delete command: it was secret, so the replay state holds only its hash")
        if cmd is None:
            return
        ok_in, stdin = recover("stdin")
        if not ok_in:
            self.log(f"warning: {entry['type']} ({name}): secret stdin of the deleted resource is not known "
                     "any more; delete runs without it")
            stdin = None
        conn = self._connection_for(entry.get("connection", {}), "run the delete command", entry["type"], name, urn)
        self._exec(entry["type"], name, urn, conn, cmd, stdin)

    # bookkeeping --------------------------------------------------------------------------
    def record(self, node_or_entry: Any, urn: str, action: str, seconds: float) -> ReplayStep:
        step = ReplayStep(name=_get(node_or_entry, "name"), urn=urn, type=_get(node_or_entry, "type"),
                          action=action, seconds=round(seconds, 3))
        self.result.steps.append(step)
        if action != "unchanged":
            self.log(f"replay: {step.name}: {action} in {seconds:.2f}s")
        return step


def _changed_props(engine: _Engine, node: _Node, prev: dict) -> set:
    new = engine._prop_hashes(node)
    old = prev.get("props", {})
    changed = {k for k in set(new) | set(old) if new.get(k) != old.get(k)}
    return changed - set(node.ignore_changes)


def _delete_order(entries: "list[tuple[str, dict]]") -> list:
    """Reverse dependency order of the old graph (dependents first); ties by urn."""
    urns = [u for u, _ in entries]
    idx = {u: i for i, u in enumerate(urns)}
    dependents: dict = {u: set() for u in urns}
    for u, e in entries:
        for d in e.get("deps", []):
            if d in dependents and d != u:
                dependents[d].add(u)
    remaining = {u: len(dependents[u]) for u in urns}
    ready = [(u, idx[u]) for u in urns if remaining[u] == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        u, i = heapq.heappop(ready)
        out.append(entries[i])
        for d in entries[i][1].get("deps", []):
            if d in remaining and d != u:
                remaining[d] -= 1
                if remaining[d] == 0:
                    heapq.heappush(ready, (d, idx[d]))
    if len(out) != len(entries):  # cycle in old state: fall back to urn order
        done = {id(e) for e in out}
        out.extend(e for e in sorted(entries, key=lambda x: x[0]) if id(e) not in done)
    return out


def replay(resources: Iterable[Any], state: ReplayState, *, log: Callable[[str], None] = print,
           workdir: "str | os.PathLike | None" = None, credentials: Iterable[str] = ()) -> ReplayResult:
    """Replay the recorded pulumi-command resources over SSH like ``pulumi up`` would.

    ``resources``: RecordedResource-like objects (attributes or mapping keys ``type``,
    ``name``, ``urn``, ``parent``, ``inputs``, ``dependencies``; optional
    ``delete_before_replace``, ``replace_on_changes``, ``ignore_changes``).
    ``state``: the ReplayState of the previous replays (saved after every step).
    ``log``: receives one line per changed resource (name, action, seconds) and warnings.
    ``workdir``: what relative asset paths are relative to (the Pulumi project dir); cwd by default.
    ``credentials``: extra private keys/passwords, needed only to delete resources whose
    connection no current resource uses any more.

    Raises ReplayError on the first failure (after saving the state; ``.result`` holds
    the steps completed so far)."""
    secrets = _Secrets()
    nodes = _order(_normalise(resources, secrets))
    wd = Path(workdir) if workdir is not None else Path.cwd()
    creds: dict = {}
    for n in nodes:
        conn = n.inputs.get("connection") if n.type in REPLAYED_TYPES else None
        if isinstance(conn, Mapping):
            for k in ("privateKey", "password", "privateKeyPassword"):
                if conn.get(k):
                    creds[state.hash(conn[k])] = conn[k]
    for c in credentials:
        creds[state.hash(c)] = c
        secrets.add(c)
    engine = _Engine(state, log, secrets, wd, creds)
    replayed = [n for n in nodes if n.type in REPLAYED_TYPES]
    current = {n.urn: n for n in replayed}
    for n in nodes:
        if n.type.startswith("command:") and n.type not in REPLAYED_TYPES:
            raise engine.fail(n.type, n.name, n.urn, f"the replay does not support {n.type}; filter it out first")

    # 0. deletes left pending by an earlier, interrupted replace (the engine drains them first)
    while state.pending_deletes:
        pending = state.pending_deletes[0]
        (_, secs) = engine._timed(lambda: engine.delete(pending["urn"], pending["entry"], current.get(pending["urn"])))
        engine.record(pending["entry"], pending["urn"], "deleted", secs)
        state.pending_deletes.pop(0)
        state.save()

    deferred: list = []  # (urn, old entry, step) for create-before-delete replacements
    for node in replayed:
        if _contains_unknown(node.inputs):
            raise engine.fail(node.type, node.name, node.urn,
                              "an input is unknown (the mocks did not resolve it); cannot replay")
        prev = state.resources.get(node.urn)
        if prev is None:
            entry, secs = engine._timed(lambda: engine.create(node))
            state.resources[node.urn] = entry
            state.save()
            engine.record(node, node.urn, "created", secs)
            continue
        changed = _changed_props(engine, node, prev)
        if not changed:
            # Same step: nothing runs; keep dependencies current for later delete ordering
            if prev.get("deps") != node.effective_deps:
                prev["deps"] = node.effective_deps
                state.save()
            engine.record(node, node.urn, "unchanged", 0.0)
            continue
        replace_props = set(_REPLACE_PROPS.get(node.type, set())) | set(node.replace_on_changes)
        replace = bool(changed & replace_props)
        if not replace:
            entry, secs = engine._timed(lambda: engine.update(node, prev))
            state.resources[node.urn] = entry
            state.save()
            engine.record(node, node.urn, "updated", secs)
            continue
        if node.delete_before_replace:
            _, secs1 = engine._timed(lambda: engine.delete(node.urn, prev, node))
            del state.resources[node.urn]
            state.save()
            entry, secs2 = engine._timed(lambda: engine.create(node))
            state.resources[node.urn] = entry
            state.save()
            engine.record(node, node.urn, "replaced", secs1 + secs2)
            continue
        # create-before-delete (the default): create the replacement now, delete the old one
        # after the program has finished registering (with the other deletes).
        entry, secs = engine._timed(lambda: engine.create(node))
        state.resources[node.urn] = entry
        state.pending_deletes.append({"urn": node.urn, "entry": prev})
        state.save()
        step = engine.record(node, node.urn, "replaced", secs)
        deferred.append((node.urn, prev, step))

    # deletes: removed resources and replaced originals, dependents first
    removed = [(u, e) for u, e in state.resources.items() if u not in current]
    to_delete = [(u, e) for u, e in removed] + [(u, e) for u, e, _ in deferred]
    steps_by_urn = {u: s for u, _, s in deferred}
    for urn, entry in _delete_order(to_delete):
        (_, secs) = engine._timed(lambda: engine.delete(urn, entry, current.get(urn)))
        if urn in steps_by_urn and state.resources.get(urn) is not entry:
            step = steps_by_urn[urn]
            step.seconds = round(step.seconds + secs, 3)
            state.pending_deletes = [p for p in state.pending_deletes if p["entry"] is not entry]
            engine.log(f"replay: {entry['name']}: deleted the replaced original in {secs:.2f}s")
        else:
            del state.resources[urn]
            engine.record(entry, urn, "deleted", secs)
        state.save()
    return engine.result
