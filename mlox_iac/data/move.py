"""Moving the stack's data to another server: the data verbs composed for ``mlox-iac migrate``.

Runs on the servers (``python3 -m mlox_data move-<verb>``); ``mlox-iac migrate`` calls the
verbs over SSH, and the data goes from the old server straight to the new one (never
through the user's machine):

- ``move-stage`` (old server): :func:`backup.capture_all` into ``<data>/migrate/staging``
  (database dumps, object copies kept between runs so a second run copies only what
  changed, and the manifest of everything, volumes included).
- ``move-keygen`` (old server): a key pair for this move only; its public half is put in
  the new server's ``authorized_keys`` (restricted to the old server's address) by
  ``mlox-iac migrate`` and removed afterwards with ``move-keydrop``.
- ``move-send`` (old server): asks the new server which files it already holds
  (``move-have``), sends only the missing or different ones with ``tar | ssh``, then has
  the new server delete what the old one no longer has (``move-prune``). Interrupted, it
  resumes: files that arrived whole are not sent again.
- ``move-apply`` (new server): :func:`backup.restore_all` from what arrived; each step
  verifies against the manifest.
- ``move-verify`` (new server): recomputes every manifest of the live stack (per table row
  counts and checksums, per object key, size and SHA-256, per volume file size and SHA-256)
  and lists the differences.
- ``move-freeze`` / ``move-unfreeze`` (old server): the proxy answers 503 with
  ``Retry-After`` and the writers stop / everything runs again.
- ``move-stop`` / ``move-start``: the whole stack stopped after the cutover / started on abort.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from . import backup, objects, postgres, volumes
from .host import DataError, Host, last_line

RETRY_AFTER_S = 60
KEY_NAME = "mlox-move"
# Staging and sending hold this lock (not the backup's: a scheduled backup may run beside
# them). A migrate interrupted on the user's side leaves its stage or send running on the
# server; the rerun's stage or send waits for it instead of writing the same files at once.
COPY_LOCK_FILE = "/run/mlox-move.lock"


def _copy_lock(host: Host) -> backup.Lock:
    return backup.Lock("migration copy", host, wait_s=backup.LOCK_WAIT_S, path=COPY_LOCK_FILE)


def _root(host: Host) -> Path:
    return host.data_dir / "migrate"


def _incoming(host: Host) -> Path:
    return _root(host) / "incoming"


def _cache(host: Host) -> Path:
    return _root(host) / "cache"


def _live_cache(host: Host, bucket: str) -> Path:
    """The hashes of a bucket's live objects, kept between the copy's and the final delta's
    verification (see :func:`objects.manifest_of`)."""
    return _cache(host) / f"hashes-live-{bucket}.json"


def _key(host: Host) -> Path:
    return _root(host) / "key" / "id_ed25519"


# --------------------------------------------------------------------------- old server


def stage(host: Host) -> dict[str, Any]:
    """Capture everything into the staging directory; return the sizes to send."""
    staging = _root(host) / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    with _copy_lock(host):
        manifest = backup.capture_all(host, staging, _cache(host))
        files = _outgoing(host, manifest)
    return {"files": len(files), "bytes": sum(e.get("size", 0) for e in files.values())}


def _outgoing(host: Host, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the new server must hold, relative to its incoming directory."""
    staging = _root(host) / "staging"
    out = {f"staging/{k}": v for k, v in volumes.tree_manifest(staging, _cache(host) / "hashes-staging.json").items()}
    for entry in manifest["services"].values():
        for volume, files in entry["volumes"].items():
            out.update({f"volumes/{volume}/{k}": v for k, v in files.items()})
    return out


def _source_path(host: Host, rel: str) -> Path:
    kind, _, rest = rel.partition("/")
    if kind == "staging":
        return _root(host) / "staging" / rest
    return host.data_dir / "volumes" / rest


def keygen(host: Host) -> dict[str, Any]:
    key = _key(host)
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        host.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", KEY_NAME, "-f", str(key)], what="ssh-keygen")
    return {"public_key": key.with_suffix(".pub").read_text().strip()}


def keydrop(host: Host) -> dict[str, Any]:
    shutil.rmtree(_key(host).parent, ignore_errors=True)
    return {"removed": True}


def _ssh(host: Host, to: str, port: int, user: str, remote: Sequence[str]) -> list[str]:
    sudo = [] if user == "root" else ["sudo", "-n"]
    return ["ssh", "-i", str(_key(host)), "-p", str(port), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={_root(host) / 'key' / 'known_hosts'}",
            "-o", "Compression=no", f"{user}@{to}", "--", shlex.join([*sudo, *remote])]


def _remote_verb(host: Host, to: str, port: int, user: str, verb: str, stdin: str | None = None) -> Any:
    script = f"cd {shlex.quote(str(Path(__file__).resolve().parent.parent))} && exec python3 -m mlox_data {verb}"
    done = host.run(_ssh(host, to, port, user, ["sh", "-c", script]), input=stdin, check=False, what=verb)
    result = None
    for line in (done.stdout or "").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "error":
            raise DataError(f"new server: {event.get('message')}")
        if event.get("event") == "result":
            result = event.get("result")
    if done.returncode != 0 or result is None:
        raise DataError(f"new server: {verb} failed: {last_line(done.stderr) or 'no answer'}")
    return result


def send(host: Host, to: str, port: int, user: str) -> dict[str, Any]:
    """Send the staged data and volume files the new server does not hold yet."""
    with _copy_lock(host):
        return _send(host, to, port, user)


def _send(host: Host, to: str, port: int, user: str) -> dict[str, Any]:
    manifest = json.loads((_root(host) / "staging" / "manifest.json").read_text())
    wanted = _outgoing(host, manifest)
    have = _remote_verb(host, to, port, user, "move-have")
    missing = sorted(rel for rel, entry in wanted.items() if have.get(rel) != entry and rel != "staging/manifest.json")
    total = sum(wanted[rel].get("size", 0) for rel in missing)
    host.progress("send", f"{len(missing)} of {len(wanted)} files, {total} bytes")
    groups = {"staging": [r for r in missing if r.startswith("staging/")],
              "volumes": [r for r in missing if r.startswith("volumes/")]}
    for kind, rels in groups.items():
        if not rels:
            continue
        base = _root(host) / "staging" if kind == "staging" else host.data_dir / "volumes"
        # The list goes through a file: on a pipe it could fill while tar's output is not read yet.
        listing = _root(host) / f"send-{kind}.list"
        listing.write_bytes(("\0".join(r.partition("/")[2] for r in rels) + "\0").encode())
        dest = f"{_incoming_path(host)}/{kind}"
        tar = subprocess.Popen(["tar", "-C", str(base), "--null", "-T", str(listing), "-cf", "-"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        receive = host.run(_ssh(host, to, port, user, ["sh", "-c", f"mkdir -p {shlex.quote(dest)} && "
                                                       f"tar -C {shlex.quote(dest)} -xf -"]),
                           stdin=tar.stdout, check=False, text=False, what="receiving")
        # Our copy of the pipe's read end closed: if the receiver died midway, tar now gets
        # EPIPE instead of blocking forever on a pipe nobody reads.
        tar.stdout.close()  # type: ignore[union-attr]
        tar.wait()
        if receive.returncode != 0:
            raise DataError(f"the new server did not take the {kind} files: "
                            f"{last_line(receive.stderr.decode(errors='replace')) or f'exit {receive.returncode}'}")
        if tar.returncode != 0:
            raise DataError(f"tar of the {kind} files failed: {last_line(tar.stderr.read().decode(errors='replace'))}")
    stale = sorted(set(have) - set(wanted) - {"staging/manifest.json"})
    if stale:
        _remote_verb(host, to, port, user, "move-prune", stdin="\n".join(stale) + "\n")
    # The manifest last: its arrival means everything it lists arrived.
    _remote_verb(host, to, port, user, "move-manifest", stdin=json.dumps(manifest))
    return {"files": len(missing), "bytes": total, "pruned": len(stale)}


def _incoming_path(host: Host) -> str:
    return str(_incoming(host))


def freeze(host: Host) -> dict[str, Any]:
    """The proxy answers 503 with Retry-After on every route; then the writers stop."""
    _maintenance(host, True)
    writers = sorted({w for s in host.plan["services"].values() for w in s["writers"] if w != "caddy"})
    host.compose_stop(writers)
    return {"stopped": writers}


def unfreeze(host: Host) -> dict[str, Any]:
    host.compose_up()
    _maintenance(host, False)
    return {"serving": True}


def _maintenance(host: Host, on: bool) -> None:
    if not on:
        host.compose_exec("caddy", ["caddy", "reload", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile",
                                    "--force"], what="restoring the proxy's routes")
        return
    adapted = host.compose_exec("caddy", ["caddy", "adapt", "--config", "/etc/caddy/Caddyfile", "--adapter",
                                          "caddyfile"], what="reading the proxy's config").stdout
    config = maintenance_config(json.loads(adapted))
    host.compose_exec("caddy", ["sh", "-c", "cat > /tmp/mlox-maintenance.json"], input=json.dumps(config),
                      what="writing the maintenance config")
    host.compose_exec("caddy", ["caddy", "reload", "--config", "/tmp/mlox-maintenance.json", "--force"],
                      what="switching the proxy to maintenance")


def maintenance_config(config: dict[str, Any], retry_after: int = RETRY_AFTER_S) -> dict[str, Any]:
    """The proxy's config with every route answering 503 and ``Retry-After`` (same sites, same TLS)."""
    answer = [{"handler": "static_response", "status_code": 503,
               "headers": {"Retry-After": [str(retry_after)], "Content-Type": ["text/plain; charset=utf-8"]},
               "body": "This MLOps stack is moving to another server. Please retry shortly.\n"}]
    for server in config.get("apps", {}).get("http", {}).get("servers", {}).values():
        for route in server.get("routes", []):
            route["handle"] = answer
    return config


def stop_all(host: Host) -> dict[str, Any]:
    host.compose_run("stop", what="stopping the stack")
    return {"stopped": True}


def start_all(host: Host) -> dict[str, Any]:
    host.compose_up()
    _maintenance(host, False)
    return {"serving": True}


# --------------------------------------------------------------------------- new server


def have(host: Host) -> dict[str, Any]:
    """What arrived so far. Asked first by every send: a restore of what arrived that is
    still running here (an apply whose caller was interrupted) is waited for, so a send
    never writes or prunes files while an apply reads them."""
    with backup.Lock("migration receive", host, wait_s=backup.LOCK_WAIT_S):
        pass
    root = _incoming(host)
    return volumes.tree_manifest(root, _cache(host) / "hashes-incoming.json")


def prune(host: Host, rels: list[str]) -> dict[str, Any]:
    root = _incoming(host).resolve()
    for rel in rels:
        path = (root / rel).resolve()
        if path.is_relative_to(root) and path.is_file():
            path.unlink()
    return {"pruned": len(rels)}


def take_manifest(host: Host, text: str) -> dict[str, Any]:
    manifest = json.loads(text)
    path = _incoming(host) / "staging" / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(manifest, sort_keys=True))
    path.with_suffix(".tmp").replace(path)
    return {"services": sorted(manifest["services"])}


def _chosen(host: Host) -> dict[str, Any]:
    path = _incoming(host) / "staging" / "manifest.json"
    if not path.is_file():
        raise DataError("no data has arrived from the old server yet (the copy did not finish)")
    entries = json.loads(path.read_text())["services"]
    return {n: e for n, e in entries.items() if any(e[k] for k in ("databases", "buckets", "volumes"))}


def apply(host: Host) -> dict[str, Any]:
    """Restore what arrived into the running stack (each step verified against the manifest).

    Volume copies are moved into place by the restore, so the next send brings them again.
    Like a restore it holds the server's backup lock: an apply still running after its
    caller's connection dropped is waited for, not run twice at once, nor beside a
    scheduled backup."""
    incoming = _incoming(host)
    with backup.Lock("migration restore", host, wait_s=backup.LOCK_WAIT_S):
        restored = backup.restore_all(host, _chosen(host), incoming / "staging", incoming / "volumes", _cache(host))
    return {"restored": restored}


def verify(host: Host) -> dict[str, Any]:
    """Every manifest of the live stack against the old server's; the differences, named.

    Databases and buckets must match exactly. A volume must hold every file of the old
    server's, unchanged; files that only the new server has were written by its own running
    services since the restore (Caddy's certificate for the new server's address), not
    taken from the old server, so they are counted, not reported as differences."""
    problems: list[str] = []
    own = 0
    for name, entry in _chosen(host).items():
        for db, m in entry["databases"].items():
            problems += [f"database {db}: {p}" for p in postgres.verify(host, db, m)]
        for bucket, m in entry["buckets"].items():
            problems += [f"bucket {bucket}: object {p}" for p in objects.verify(host, bucket, m, _live_cache(host, bucket))]
        for volume, m in entry["volumes"].items():
            live = volumes.tree_manifest(volumes.live_dir(host, volume))
            own += len(set(live) - set(m))
            kept = {k: v for k, v in live.items() if k in m}
            problems += [f"volume {volume}: file {p}" for p in volumes.diff(m, kept)]
    return {"ok": not problems, "problems": problems, "new_server_files": own}


def clean(host: Host) -> dict[str, Any]:
    """Remove the move's working files (staging copies, arrived files, the key)."""
    shutil.rmtree(_root(host), ignore_errors=True)
    return {"removed": str(_root(host))}


VERBS = {
    "move-stage": stage, "move-keygen": keygen, "move-keydrop": keydrop, "move-freeze": freeze,
    "move-unfreeze": unfreeze, "move-stop": stop_all, "move-start": start_all, "move-have": have,
    "move-apply": apply, "move-verify": verify, "move-clean": clean,
}


def run_verb(host: Host, verb: str, args: Any) -> Any:
    """Dispatch one ``move-*`` verb (``args``: the parsed command line)."""
    if verb == "move-send":
        return send(host, args.to, args.port, args.user)
    if verb == "move-prune":
        return prune(host, [line for line in sys.stdin.read().splitlines() if line])
    if verb == "move-manifest":
        return take_manifest(host, sys.stdin.read())
    return VERBS[verb](host)
