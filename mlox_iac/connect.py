"""Connecting to a deployed stack: shell exports, endpoint probes, SSH command lines.

Everything here works on a stack's outputs as a plain dict (secrets in clear), from
``mlox_iac.automation.outputs(stack, show_secrets=True)`` or from a JSON file with the same
content (``pulumi stack output --json --show-secrets``), so the end-to-end suite calls it
against a real host without the Pulumi CLI. The keys used are the ones
``mlox_iac.components.stack`` exports: ``server_address``, ``ssh_user``, ``ssh_port``,
``services``, ``urls``, ``tls``, ``ui_user``, ``ui_passwords``, ``s3_endpoint``,
``s3_access_key``, ``s3_secret_key``, ``s3_buckets``, ``mlflow_tracking_uri``, and for the
exports the sources the services' client faces name (``login_passwords``, ``api_tokens``,
``client_secrets``: see ``mlox_iac/faces.py``).

The builders (:func:`env_exports`, :func:`render_exports`, :func:`ssh_argv`,
:func:`logs_argv`, :func:`fetch_ca_argv`) are pure; :func:`probe` and :func:`fetch_ca` do I/O.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shlex
import ssl
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from mlox_iac import faces
from mlox_iac.components.services.base import SECRET_SOURCES
from mlox_iac.errors import ConfigError, MloxError

SECRET = "[secret]"
# Outputs that are secrets (the stack marks them so; a JSON outputs file has them in clear).
SECRET_OUTPUTS = SECRET_SOURCES | {"backup_password"}
# Where Caddy keeps the root certificate of its internal CA on every server.
CA_PATH_ON_SERVER = "/mnt/mlox-data/volumes/caddy-data/caddy/pki/authorities/local/root.crt"
# The compose project on every server (see mlox_iac.render.commands.COMPOSE).
COMPOSE_ARGS = ("docker", "compose", "--project-name", "mlox", "--project-directory", "/opt/mlox/bundle",
                "-f", "/opt/mlox/bundle/compose.yaml")
SHELLS = ("sh", "fish", "powershell")
# Exports that carry a secret (masked unless asked for): what the services' faces say.
SECRET_EXPORTS = faces.secret_variables()


def is_secret_export(key: str) -> bool:
    """A credential among the exports (the faces' fixed ones, and each served model's password)."""
    return faces.is_secret_variable(key)


# ----- outputs ------------------------------------------------------------------------

# The shape of each output the commands read: (type check, what is allowed).
_OUTPUT_SHAPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{key: (lambda v: isinstance(v, str), "a string") for key in (
        "server_address", "ssh_user", "provider", "tls", "ui_user", "bundle_hash", "mlflow_tracking_uri",
        "s3_endpoint", "s3_access_key", "s3_secret_key")},
    "ssh_port": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536, "a port number"),
    **{key: (lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v), "a list of strings")
       for key in ("services", "s3_buckets")},
    **{key: (lambda v: isinstance(v, dict) and all(isinstance(i, str) for i in v.values()), "an object of strings")
       for key in ("urls", "ui_passwords")},
}


def load_outputs_file(path: Path) -> dict[str, Any]:
    """A stack's outputs from a JSON file (``pulumi stack output --json --show-secrets``)."""
    from mlox_iac.files import read_text

    text = read_text(path, str(path), "JSON outputs file")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError([f"{path}: not valid JSON: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: not valid JSON: nested too deeply"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: must be a JSON object of stack outputs (from pulumi stack output --json)"])
    problems = [
        f"{path}: {key}: must be {allowed} (found {json.dumps(data[key])[:40]})"
        for key, (fits, allowed) in _OUTPUT_SHAPES.items()
        if data.get(key) is not None and data[key] != SECRET and not fits(data[key])
    ]
    if problems:
        raise ConfigError(problems)
    return data


def check_ca_file(path: Path) -> Path:
    """``path`` if it holds at least one PEM certificate (the server's internal root), else
    one error line: a CA file that is empty, a key, or not PEM would only surface later as
    an SSL error deep inside a probe."""
    from cryptography import x509

    from mlox_iac.files import read_text

    text = read_text(path, str(path), "PEM certificate file")
    allowed = f"allowed: the server's root certificate, fetched from {CA_PATH_ON_SERVER}"
    if not text.strip():
        raise ConfigError([f"{path}: is empty ({allowed})"])
    try:
        x509.load_pem_x509_certificates(text.encode())
    except ValueError:
        raise ConfigError([f"{path}: holds no PEM certificate ({allowed})"]) from None
    return Path(path)


def mask_outputs(outputs: Mapping[str, Any], secret_keys: Sequence[str] = ()) -> dict[str, Any]:
    """The outputs with every secret value replaced by ``[secret]``."""
    hidden = SECRET_OUTPUTS | set(secret_keys)
    return {k: (SECRET if k in hidden else v) for k, v in outputs.items()}


def _need(outputs: Mapping[str, Any], key: str, why: str) -> Any:
    value = outputs.get(key)
    if value in (None, "", SECRET):
        state = "masked" if value == SECRET else "missing"
        raise MloxError(f"stack output {key} is {state}: {why} needs it")
    return value


# ----- env ----------------------------------------------------------------------------

def env_exports(outputs: Mapping[str, Any], ca_path: str | Path | None = None,
                stack: str | None = None) -> dict[str, str]:
    """Environment variables that let MLflow, boto3, the AWS CLI, notebooks and mlox-client connect.

    Each service's face (``mlox_iac/faces.py``) says which variables it needs and where their
    values are in the outputs: MLflow's tracking URI and basic auth (artifacts go through the
    tracking server, so MLflow needs no S3 settings); S3's endpoint (``AWS_ENDPOINT_URL_S3``,
    read by boto3 >= 1.28 and the AWS CLI, for S3 only) and keys; Feast's feature server and
    what a FeatureStore needs; each served model's URL, user and password
    (``MLOX_MODEL_<NAME>_*``); Postgres, Airflow and Label Studio for mlox-client. Besides:
    ``MLOX_STACK`` (``stack``), the services, and the SSH target (mlox-client's tunnels).
    With ``ca_path`` (the root that issued the server's certificates: the internal CA's
    without a domain, a custom ACME CA's with one): ``MLOX_CA_FILE``,
    ``MLFLOW_TRACKING_SERVER_CERT_PATH`` and ``AWS_CA_BUNDLE`` point at it, and
    ``REQUESTS_CA_BUNDLE`` at :func:`ca_bundle_path` (the system's roots plus it: MLflow
    downloads artifacts from presigned S3 URLs with plain requests, which honours only that
    variable). With an external S3 store, ``AWS_CA_BUNDLE`` is that bundle too (written by
    :func:`write_ca_bundle` with the store's own CA, if it has one).
    """
    env: dict[str, str] = {}
    if stack:
        env[faces.STACK_SETTINGS["name"][0]] = stack
    env.update(faces.env_exports(outputs))
    if ca_path is not None:
        env[faces.STACK_SETTINGS["ca_file"][0]] = str(ca_path)
        env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(ca_path)
        env["AWS_CA_BUNDLE"] = str(ca_path)
        env["REQUESTS_CA_BUNDLE"] = str(ca_bundle_path(ca_path))
        if external_s3(outputs):
            # boto3 talks to the external store: the public roots and its own CA, in the bundle.
            env["AWS_CA_BUNDLE"] = str(ca_bundle_path(ca_path))
    return env


PROFILE_FORMAT = 1


def profile_dir() -> Path:
    """Where mlox-client looks for profiles: ``$XDG_CONFIG_HOME/mlox`` (default ``~/.config/mlox``;
    on Windows ``%APPDATA%/mlox``). The client package has the same rule (mlox_client.profile)."""
    if os.name == "nt" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "mlox"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "mlox"


def write_profile(stack: str, env: Mapping[str, str], directory: Path | None = None) -> Path:
    """Write ``<profile_dir>/<stack>.json``: the exports, secrets included, for mlox-client.

    Mode 0600 from the start (created so, never widened), in a 0700 directory; written to a
    temporary file and renamed, so a reader never sees half a profile.
    """
    directory = Path(directory) if directory is not None else profile_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{stack}.json"
    tmp = directory / f".{stack}.json.tmp"
    tmp.unlink(missing_ok=True)
    document = {"format": PROFILE_FORMAT, "stack": stack, "env": dict(env)}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        if hasattr(os, "fchmod"):  # not on Windows, where the mode means little
            os.fchmod(handle.fileno(), 0o600)  # whatever the umask
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.write("\n")
    tmp.replace(path)
    return path


def ca_bundle_path(ca_path: str | Path) -> Path:
    """Where :func:`write_ca_bundle` puts the combined bundle for ``ca_path``."""
    return Path(f"{ca_path}.bundle.pem")


def external_s3_ca(outputs: Mapping[str, Any]) -> str | None:
    """The private CA of the external S3 store the stack uses (its ``parts`` output), if any."""
    parts = outputs.get("parts") if isinstance(outputs.get("parts"), Mapping) else {}
    objects = parts.get("objects") or {}
    return objects.get("ca") if objects.get("uses") == "external" else None


def external_s3(outputs: Mapping[str, Any]) -> bool:
    parts = outputs.get("parts") if isinstance(outputs.get("parts"), Mapping) else {}
    return (parts.get("objects") or {}).get("uses") == "external"


def write_ca_bundle(ca_path: str | Path, extra: str | None = None) -> Path:
    """The system's trusted roots plus the server's internal CA in one file (and ``extra``:
    an external S3 store's private CA).

    ``REQUESTS_CA_BUNDLE`` replaces the trust store of every ``requests`` call in the
    shell, so it must keep the public roots too (pip, model hubs).
    """
    system = ssl.get_default_verify_paths()
    roots = ""
    for candidate in (system.cafile, system.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            roots = Path(candidate).read_text()
            break
    bundle = ca_bundle_path(ca_path)
    bundle.write_text(roots.rstrip("\n") + "\n" + Path(ca_path).read_text() + (("\n" + extra) if extra else ""))
    return bundle


def _quote(value: str, shell: str) -> str:
    if shell == "sh":
        return shlex.quote(value)
    if shell == "fish":  # in fish single quotes only \\ and \' are escapes
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "'" + value.replace("'", "''") + "'"  # powershell


def render_exports(env: Mapping[str, str], shell: str = "sh", *, show_secrets: bool = True) -> str:
    """Lines a shell evaluates to set ``env``: ``sh`` (bash, zsh, dash), ``fish`` or
    ``powershell``. Without ``show_secrets`` secret values become comment lines, so
    evaluating the output never sets a wrong value."""
    if shell not in SHELLS:
        raise ConfigError([f"--shell: {shell!r} is not allowed (allowed: {', '.join(SHELLS)})"])
    lines = []
    for key, value in env.items():
        if is_secret_export(key) and (not show_secrets or value == SECRET):
            lines.append(f"# {key}: {SECRET} (add --show-secrets to print it)")
        elif shell == "sh":
            lines.append(f"export {key}={_quote(value, shell)}")
        elif shell == "fish":
            lines.append(f"set -gx {key} {_quote(value, shell)}")
        else:
            lines.append(f"$env:{key} = {_quote(value, shell)}")
    return "\n".join(lines) + ("\n" if lines else "")


# ----- ssh ----------------------------------------------------------------------------

def ssh_target(outputs: Mapping[str, Any]) -> tuple[str, str, int]:
    """(user, address, port) of the stack's server."""
    address = str(_need(outputs, "server_address", "ssh"))
    return str(outputs.get("ssh_user") or "root"), address, int(outputs.get("ssh_port") or 22)


def known_hosts_lines(outputs: Mapping[str, Any]) -> list[str]:
    """The server's host keys (its ``ssh_host_keys`` output, read on the server right after
    its bootstrap) as ``known_hosts`` lines for its address and port."""
    _, address, port = ssh_target(outputs)
    host = address if port == 22 else f"[{address}]:{port}"
    lines = []
    for key in outputs.get("ssh_host_keys") or []:
        parts = str(key).split()
        if len(parts) >= 2:
            lines.append(f"{host} {parts[0]} {parts[1]}")
    return lines


def known_hosts_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the recorded host keys go: the project's ``.mlox/known_hosts`` (the user's cache
    outside a project; ``MLOX_KNOWN_HOSTS_DIR`` overrides)."""
    env = os.environ if env is None else env
    if env.get("MLOX_KNOWN_HOSTS_DIR"):
        return Path(env["MLOX_KNOWN_HOSTS_DIR"])
    from mlox_iac.automation import find_project_dir

    try:
        return find_project_dir(env=env) / ".mlox" / "known_hosts"
    except MloxError:
        return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlox-iac" / "known_hosts"


def write_known_hosts(outputs: Mapping[str, Any], folder: Path | None = None) -> Path | None:
    """The known-hosts file of the stack's server, written from its outputs (None when the
    stack predates recorded host keys). Rewritten each time, so a new ``up`` that recorded a
    rebuilt server's keys is trusted and nothing else is."""
    lines = known_hosts_lines(outputs)
    if not lines:
        return None
    _, address, port = ssh_target(outputs)
    folder = known_hosts_dir() if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{address.replace(':', '_')}_{port}"
    text = "\n".join(lines) + "\n"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


HOST_KEY_CHANGED = ("the server's SSH host key is not the one recorded when it was bootstrapped ({file}): if the "
                    "server was rebuilt, record its new key with mlox-iac up --replace main-host-keys; otherwise do "
                    "not connect, someone may be intercepting the connection")


def host_key_problem(stderr: str) -> str | None:
    """The one line for an ssh that refused the server's host key, else None."""
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "Host key verification failed" in stderr:
        return HOST_KEY_CHANGED.format(file=known_hosts_dir())
    return None


def ssh_argv(
    outputs: Mapping[str, Any],
    remote: Sequence[str] | None = None,
    *,
    identity: str | Path | None = None,
    options: Sequence[str] = (),
    batch: bool = False,
    tty: bool = False,
) -> list[str]:
    """The system ``ssh`` command line to the stack's server, optionally running ``remote``
    (an argv, quoted here for the remote shell). ``batch`` never prompts (for scripts).

    A stack that recorded its server's host keys is reached through its own known-hosts
    file with strict checking (nothing is accepted blindly; the user's ``~/.ssh`` plays no
    part); an older one accepts a new key on first use. ``options`` (``MLOX_SSH_OPTS``) come
    first, so a user's own choice wins."""
    user, address, port = ssh_target(outputs)
    argv = ["ssh", "-p", str(port), *options]
    known_hosts = write_known_hosts(outputs)
    if known_hosts is not None:
        argv += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"]
    else:
        argv += ["-o", "StrictHostKeyChecking=accept-new"]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    if tty:
        argv.append("-t")
    if identity is not None:
        argv += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    argv.append(f"{user}@{address}")
    if remote:
        argv += ["--", shlex.join(remote)]
    return argv


def _as_root(outputs: Mapping[str, Any], argv: Sequence[str]) -> list[str]:
    user = str(outputs.get("ssh_user") or "root")
    return list(argv) if user == "root" else ["sudo", "-n", *argv]


def logs_argv(
    outputs: Mapping[str, Any],
    service: str,
    *,
    allowed: Sequence[str],
    tail: int = 200,
    follow: bool = False,
    tty: bool = False,
    identity: str | Path | None = None,
    options: Sequence[str] = (),
) -> list[str]:
    """``ssh ... docker compose ... logs --tail N [-f] SERVICE`` for one compose service.

    ``allowed`` are the compose services of the stack; anything else is a
    :class:`ConfigError` naming them (exit 2).
    """
    if service not in allowed:
        raise ConfigError([f"SERVICE: {service!r} is not a service of this stack (allowed: {', '.join(allowed)})"])
    if tail < 0:
        raise ConfigError([f"--tail: {tail} is too small (allowed: 0 or more)"])
    remote = [*COMPOSE_ARGS, "logs", "--tail", str(tail), *(["-f"] if follow else []), service]
    return ssh_argv(outputs, _as_root(outputs, remote), identity=identity, options=options, batch=not follow, tty=tty)


def fetch_ca_argv(outputs: Mapping[str, Any], *, identity: str | Path | None = None, options: Sequence[str] = ()) -> list[str]:
    """``ssh ... cat <Caddy's internal root certificate>``."""
    return ssh_argv(outputs, _as_root(outputs, ["cat", CA_PATH_ON_SERVER]), identity=identity, options=options, batch=True)


def fetch_ca(
    outputs: Mapping[str, Any],
    dest: Path,
    *,
    identity: str | Path | None = None,
    options: Sequence[str] = (),
    refresh: bool = False,
    run: Callable[..., subprocess.CompletedProcess] | None = None,
    timeout: float = 30,
) -> Path:
    """The server's internal root CA certificate, fetched once over SSH into ``dest``.

    An existing ``dest`` is reused unless ``refresh`` (a rebuilt server has a new CA).
    """
    dest = Path(dest)
    if dest.is_file() and not refresh:
        return dest
    argv = fetch_ca_argv(outputs, identity=identity, options=options)
    try:
        done = (run or subprocess.run)(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise MloxError("ssh is not installed: install the OpenSSH client, or pass --ca PATH") from None
    except subprocess.TimeoutExpired:
        raise MloxError(f"fetching the server's CA certificate timed out after {timeout:.0f}s (pass --ca PATH)") from None
    pem = done.stdout or ""
    if done.returncode != 0 or "-----BEGIN CERTIFICATE-----" not in pem:
        problem = host_key_problem(done.stderr or "")
        if problem:
            raise MloxError(problem)
        reason = (done.stderr or "").strip().splitlines()[-1:] or ["no certificate in the answer"]
        raise MloxError(
            f"could not fetch the server's CA certificate over ssh ({reason[0]}): "
            "pass --identity KEY (or MLOX_SSH_IDENTITY), or --ca PATH"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(pem)
    os.chmod(tmp, 0o644)  # a public certificate
    tmp.replace(dest)
    return dest


# ----- drift ---------------------------------------------------------------------------

_DRIFT_SPLIT = "@@mlox-drift@@"


def drift_argv(outputs: Mapping[str, Any], *, identity: str | Path | None = None,
               options: Sequence[str] = ()) -> list[str]:
    """``ssh ...`` printing the compose project's configured services and its containers."""
    compose = shlex.join(COMPOSE_ARGS)
    script = f"{compose} config --format json && echo {_DRIFT_SPLIT} && {compose} ps --all --format json"
    return ssh_argv(outputs, _as_root(outputs, ["sh", "-c", script]), identity=identity, options=options, batch=True)


def parse_drift(stdout: str) -> list[str]:
    """What differs on the server from what the stack deployed, one line a service: a
    long-running service (restart policy other than ``no``) without a running container."""
    config_text, _, ps_text = stdout.partition(_DRIFT_SPLIT)
    services = (json.loads(config_text or "{}").get("services") or {})
    rows = []
    for line in ps_text.splitlines():
        line = line.strip()
        if line.startswith("["):
            rows.extend(json.loads(line))
        elif line.startswith("{"):
            rows.append(json.loads(line))
    state = {row.get("Service"): row.get("State") for row in rows}
    problems = []
    for name, spec in sorted(services.items()):
        if str(spec.get("restart") or "no") == "no":
            continue
        if name not in state:
            problems.append(f"{name}: no container (removed by hand?)")
        elif state[name] not in ("running", "restarting"):
            problems.append(f"{name}: container {state[name]}")
    return problems


DRIFT_RETRY_PAUSES = (5, 15)  # before the 2nd and 3rd try, when the ssh connection itself failed


def check_drift(outputs: Mapping[str, Any], *, identity: str | Path | None = None, options: Sequence[str] = (),
                run: Callable[..., subprocess.CompletedProcess] | None = None, timeout: float = 60,
                sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """:func:`parse_drift` of the server; :class:`MloxError` when the server cannot be asked.

    ssh exits 255 when the connection fails (a busy server's sshd drops it, a network blip):
    that is tried again after a pause, twice; a refused host key is not (it will not change).
    The command only reads, so running it again is safe.
    """
    for pause in (*DRIFT_RETRY_PAUSES, None):
        try:
            done = (run or subprocess.run)(drift_argv(outputs, identity=identity, options=options),
                                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise MloxError("ssh is not installed: install the OpenSSH client") from None
        except subprocess.TimeoutExpired:
            raise MloxError(f"the server did not answer within {timeout:.0f}s") from None
        if done.returncode != 255 or host_key_problem(done.stderr or "") or pause is None:
            break
        sleep(pause)
    if done.returncode != 0:
        problem = host_key_problem(done.stderr or "")
        reason = (done.stderr or "").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise MloxError(problem or f"cannot ask the server over ssh ({reason[0]})")
    try:
        return parse_drift(done.stdout)
    except ValueError as exc:
        raise MloxError(f"the server's compose project did not answer as expected ({exc})") from None


# ----- status -------------------------------------------------------------------------

@dataclass
class ProbeResult:
    """One service endpoint, as seen from here through the proxy."""

    name: str
    url: str
    up: bool
    status: int | None  # HTTP status, None when no answer
    detail: str
    cert_expires_in_s: float | None = None  # seconds until the peer certificate's notAfter
    cert_not_after: str | None = None
    elapsed_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ca_is_current(outputs: Mapping[str, Any], ca_path: str | Path, timeout: float = 5) -> bool:
    """Whether the server's certificate still chains to ``ca_path``.

    False only on a verification failure (a rebuilt server has a new internal CA, so a
    cached root goes stale); an unreachable server says nothing and counts as current.
    """
    import socket

    url = next((str(u) for u in (outputs.get("urls") or {}).values()), "")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return True
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout) as sock:
            with _ssl_context(ca_path).wrap_socket(sock, server_hostname=parts.hostname):
                return True
    except ssl.SSLCertVerificationError:
        return False
    except OSError:
        return True


def _ssl_context(ca_path: str | Path | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_path) if ca_path else None)


def _probe_one(
    name: str, url: str, path: str, auth: tuple[str, str] | None, *, ca_path, timeout: float, now: float
) -> ProbeResult:
    parts = urlsplit(url)
    target = parts.path.rstrip("/") + path
    full = f"{parts.scheme}://{parts.netloc}{target}"
    host = parts.hostname or ""
    started = time.monotonic()
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, parts.port or 443, timeout=timeout, context=_ssl_context(ca_path)
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
    expires_in = not_after = None
    try:
        conn.connect()
        if isinstance(conn.sock, ssl.SSLSocket):
            cert = conn.sock.getpeercert() or {}
            if cert.get("notAfter"):
                not_after = cert["notAfter"]
                expires_in = ssl.cert_time_to_seconds(not_after) - now
        headers = {"User-Agent": "mlox-iac-status"}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        response.read(65536)
        status = response.status
    except ssl.SSLCertVerificationError as exc:
        hint = "" if ca_path else " (pass --ca with the root of the CA that issued it)"
        return ProbeResult(name, full, False, None, f"TLS certificate not trusted: {exc.verify_message or exc}{hint}",
                           elapsed_ms=(time.monotonic() - started) * 1000)
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ProbeResult(name, full, False, None, f"no answer: {reason}", expires_in, not_after,
                           (time.monotonic() - started) * 1000)
    finally:
        conn.close()
    elapsed = (time.monotonic() - started) * 1000
    if auth is not None:
        # Behind basic auth: only a success means the service and the credentials work.
        up = 200 <= status < 400
        detail = "ok" if up else ("credentials rejected" if status == 401 else f"HTTP {status}")
    else:
        # The service authenticates itself (S3): any answer from it means it is up; the
        # proxy answers 502/503/504 when it cannot reach the service.
        up = status < 500
        detail = "ok" if up else f"HTTP {status}"
    if expires_in is not None and expires_in <= 0:
        up, detail = False, "TLS certificate expired"
    return ProbeResult(name, full, up, status, detail, expires_in, not_after, elapsed)


def probe(
    outputs: Mapping[str, Any],
    ca_path: str | Path | None = None,
    timeout: float = 5,
    *,
    now: float | None = None,
) -> list[ProbeResult]:
    """Probe every route in ``outputs["urls"]`` through the proxy.

    A route behind basic auth (it has a password in ``ui_passwords``) gets a GET of its
    health path (its face's: MLflow's ``<url>/health``) with those credentials and is up on 2xx/3xx. A
    route that authenticates itself (S3) gets a GET of ``<url>/`` and is up on any answer
    below 500 (anonymous S3 answers 403). For HTTPS, the peer certificate is verified
    (against ``ca_path`` when given, else the system store) and its expiry reported.
    """
    now = time.time() if now is None else now
    urls = outputs.get("urls") or {}
    if not isinstance(urls, Mapping) or not urls:
        raise MloxError("stack output urls is missing: is the stack deployed?")
    if outputs.get("ui_passwords") == SECRET:
        raise MloxError("stack output ui_passwords is masked: status needs it")
    passwords = outputs.get("ui_passwords") if isinstance(outputs.get("ui_passwords"), Mapping) else {}
    user = str(outputs.get("ui_user") or "admin")
    results = []
    for name, url in urls.items():
        auth = (user, str(passwords[name])) if name in passwords else None
        path = faces.health_path(name)
        results.append(_probe_one(name, str(url), path, auth, ca_path=ca_path, timeout=timeout, now=now))
    return results


# Postgres' SSLRequest: length 8, then the code 1234 5679 (the protocol's "TLS, please").
_PG_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


def _pinned_context(ca_pem: str | None, check_hostname: bool = True) -> ssl.SSLContext:
    """Verification against the part's own CA (PEM from the outputs), else the system's roots."""
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    context.check_hostname = check_hostname
    return context


def probe_postgres_tls(host: str, port: int, *, ca_pem: str | None, check_hostname: bool = True,
                       timeout: float = 5, now: float | None = None, name: str = "postgres (external)") -> ProbeResult:
    """Reach an external Postgres and check its TLS as the services do (verify-full: the name
    too; verify-ca: the chain only): up when it accepts TLS with a certificate that verifies."""
    import socket

    now = time.time() if now is None else now
    url = f"postgres://{host}:{port}"
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_PG_SSL_REQUEST)
            answer = sock.recv(1)
            if answer != b"S":
                return ProbeResult(name, url, False, None, "the server does not offer TLS (answered "
                                   f"{answer!r} to SSLRequest)", elapsed_ms=(time.monotonic() - started) * 1000)
            with _pinned_context(ca_pem, check_hostname).wrap_socket(sock, server_hostname=host) as tls:
                cert = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        return ProbeResult(name, url, False, None, f"TLS certificate not trusted: {exc.verify_message or exc}",
                           elapsed_ms=(time.monotonic() - started) * 1000)
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ProbeResult(name, url, False, None, f"no answer: {reason}", elapsed_ms=(time.monotonic() - started) * 1000)
    not_after = cert.get("notAfter")
    expires_in = ssl.cert_time_to_seconds(not_after) - now if not_after else None
    up, detail = True, "ok (TLS verified)"
    if expires_in is not None and expires_in <= 0:
        up, detail = False, "TLS certificate expired"
    return ProbeResult(name, url, up, None, detail, expires_in, not_after, (time.monotonic() - started) * 1000)


def probe_parts(outputs: Mapping[str, Any], timeout: float = 5, *, now: float | None = None) -> list[ProbeResult]:
    """Probe the external stores the stack uses (its ``parts`` output), from here: the S3
    endpoint by an HTTPS GET (any answer below 500 is up; anonymous S3 answers 403), Postgres by
    its TLS handshake. Each is verified against its configured CA, else the system's roots."""
    import tempfile

    now = time.time() if now is None else now
    parts = outputs.get("parts") if isinstance(outputs.get("parts"), Mapping) else {}
    results = []
    objects = parts.get("objects") or {}
    if objects.get("uses") == "external":
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as ca:
            if objects.get("ca"):
                ca.write(objects["ca"])
                ca.flush()
            results.append(_probe_one("s3 (external)", str(objects["endpoint"]), "/", None,
                                      ca_path=ca.name if objects.get("ca") else None, timeout=timeout, now=now))
    server = parts.get("postgres") or {}
    if server.get("uses") == "external":
        results.append(probe_postgres_tls(str(server["host"]), int(server["port"]), ca_pem=server.get("ca"),
                                          check_hostname=server.get("sslmode") != "verify-ca", timeout=timeout, now=now))
    return results


def format_duration(seconds: float | None) -> str:
    """``83d``, ``11h``, ``25m``, ``expired`` (for certificate lifetimes)."""
    if seconds is None:
        return "-"
    if seconds <= 0:
        return "expired"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


# ----- backup -------------------------------------------------------------------------

BACKUP_DIR_ON_SERVER = "/opt/mlox/bundle/backup"
BACKUP_VERBS = ("backup", "snapshots", "restore", "status")


def backup_argv(
    outputs: Mapping[str, Any],
    verb: str,
    args: Sequence[str] = (),
    *,
    identity: str | Path | None = None,
    options: Sequence[str] = (),
) -> list[str]:
    """``ssh ... python3 -m mlox_data VERB ARGS`` on the server, as root (the backup tooling
    the bundle ships; see ``mlox_iac/data``)."""
    if verb not in BACKUP_VERBS:
        raise ValueError(verb)
    if not outputs.get("backup_repository"):
        raise ConfigError(["mlox:backup: the stack has no backup repository (add an mlox:backup block and run up)"])
    return data_argv(outputs, verb, args, identity=identity, options=options)


def data_argv(
    outputs: Mapping[str, Any],
    verb: str,
    args: Sequence[str] = (),
    *,
    identity: str | Path | None = None,
    options: Sequence[str] = (),
) -> list[str]:
    """``ssh ... python3 -m mlox_data VERB ARGS`` on a server, as root, unchecked (backup and
    migrate build on it; ``outputs`` needs ``server_address``, ``ssh_user``, ``ssh_port``)."""
    script = f"cd {BACKUP_DIR_ON_SERVER} && exec python3 -m mlox_data {shlex.join([verb, *args])}"
    return ssh_argv(outputs, _as_root(outputs, ["sh", "-c", script]), identity=identity, options=options, batch=True)


class LeftRunning(MloxError):
    """mlox-iac stopped following a backup or restore that goes on on the server."""

    exit_code = 130


def run_backup_verb(
    argv: Sequence[str],
    on_progress: Callable[[dict], None] = lambda event: None,
    *,
    popen: Callable[..., subprocess.Popen] | None = None,
    goes_on: str | None = None,
) -> Any:
    """Run a :func:`backup_argv` command, passing progress events on; return its result.

    The server prints one JSON object per line (``progress``, then ``result`` or ``error``);
    an ``error`` or a missing result becomes a :class:`MloxError` with the server's one line.
    ``goes_on`` names work that the server finishes by itself when the connection drops or
    the user interrupts here (``backup``, ``restore``: see ``mlox_iac/data/host.emit_json``);
    the error then says so and where to see how it ended.
    """
    try:
        proc = (popen or subprocess.Popen)(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise MloxError("ssh is not installed: install the OpenSSH client") from None
    result: Any = None
    error: str | None = None
    done = False
    started = False  # the server answered: from here the work runs there
    after = "mlox-iac status shows how it ended"
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event") if isinstance(event, dict) else None
            started = started or kind is not None
            if kind == "progress":
                on_progress(event)
            elif kind == "result":
                result, done = event.get("result"), True
            elif kind == "error":
                error = str(event.get("message"))
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        if goes_on and started:
            raise LeftRunning(f"interrupted here; the {goes_on} goes on on the server by itself: {after}") from None
        raise
    stderr = proc.stderr.read() if proc.stderr else ""
    code = proc.wait()
    if error is not None:
        raise MloxError(error)
    if code != 0 or not done:
        reason = [line for line in (stderr or "").splitlines() if line.strip()][-1:] or [f"exit {code}"]
        if code == 255 and goes_on and started:
            raise MloxError(f"the connection to the server dropped ({reason[0]}); the {goes_on} goes on there by "
                            f"itself: {after}")
        if code == 255 and host_key_problem(stderr or ""):
            raise MloxError(host_key_problem(stderr or ""))
        if code == 255:
            raise MloxError(f"cannot reach the server over ssh ({reason[0]}): pass --identity KEY (or MLOX_SSH_IDENTITY)")
        raise MloxError(f"the server's backup tooling failed ({reason[0]}): is the stack deployed with mlox:backup?")
    return result


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n}"
