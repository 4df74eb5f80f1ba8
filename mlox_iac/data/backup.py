"""Backup, snapshot list, restore and status on the server: the data verbs composed with restic.

A backup is one restic snapshot (``--host <stack> --tag mlox --tag service:<name>...``) of::

    /mlox/staging/manifest.json            what every service keeps, with its manifests
    /mlox/staging/postgres/<db>.dump       pg_dump -Fc -Z0 of each declared database
    /mlox/staging/postgres/roles.sql       pg_dumpall --roles-only
    /mlox/staging/objects/<bucket>/...     every object of each declared bucket
    /mlox/volumes/<volume>/...             the files of each kept volume

Order, and what it guarantees across services: databases are dumped first (each in one
snapshot of its own), then objects are copied, then volume files. So everything a database
references that was completely written before its dump started is in the backup (an MLflow
run's artifacts uploaded before the backup began, a model version's files); an object
written during the backup may be in it without a database row pointing to it (harmless,
never the reverse). An artifact still being uploaded when the dump started belongs to a run
the restored MLflow shows as it was at that moment.

After every backup ``restic check`` verifies the repository's structure; every
``check_every_s`` ``restic check --read-data-subset=N%`` also reads a sample of the data
back. Old snapshots are removed by ``restic forget`` with the ``keep`` policy on every run,
beside the copy (so on the snapshots before the new one); ``restic prune`` frees the space
only they held on the deep check's cadence (it reads the whole repository index, the
costliest step of an unchanged backup).
The result goes to ``/var/lib/mlox-backup/status.json`` (read by ``mlox-iac status``); a
failure makes the run exit 1 (the systemd unit fails, its journal says why).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Callable

from . import objects, postgres, volumes
from .host import DataError, Host, last_line, read_env_file

STATE_DIR = Path(os.environ.get("MLOX_BACKUP_STATE", "/var/lib/mlox-backup"))
# node-exporter's textfile collector reads *.prom here (monitoring.py's TEXTFILE_DIR).
METRICS_DIR = Path(os.environ.get("MLOX_METRICS_DIR", "/opt/mlox/metrics"))
LOCK_FILE = "/run/mlox-backup.lock"
LOCK_WAIT_S = 3600  # a backup or restore waits this long for the one running before it
ROOT = "/mlox"
REPO_ENV = ("RESTIC_REPOSITORY", "RESTIC_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


# --------------------------------------------------------------------------- restic


# restic talks only to the repository, and from the server's own network namespace: where
# reachable() probes it from, and without a bridge endpoint to set up and tear down for each
# run (0.8 s per restic run instead of 1.1 on a 2-core server; a backup makes four or more).
NETWORK = "host"


class Repository:
    """restic, as the pinned image, against the stack's repository."""

    def __init__(self, host: Host):
        self.host = host
        backup = host.plan["backup"]
        values = read_env_file(backup["env_file"])
        self.env = {k: values[k] for k in REPO_ENV if values.get(k)}
        if "RESTIC_REPOSITORY" not in self.env or "RESTIC_PASSWORD" not in self.env:
            raise DataError(f"{backup['env_file']} lacks the repository or its password (run mlox-iac up)")
        self.location = self.env["RESTIC_REPOSITORY"]
        self.cache = host.data_dir / "backup" / "cache"

    def mounts(self, extra: list[str] = ()) -> list[str]:
        self.cache.mkdir(parents=True, exist_ok=True)
        mounts = [f"{self.cache}/restic:/root/.cache/restic", *extra]
        if self.location.startswith("local:"):
            path = self.location[len("local:"):]
            Path(path).mkdir(parents=True, exist_ok=True)
            mounts.append(f"{path}:{path}")
        return mounts

    def run(self, args: list[str], extra_mounts: list[str] = (), stdout=None, what: str = "") -> subprocess.CompletedProcess:
        done = self.host.docker_run(self.host.plan["images"]["restic"], args, env=self.env,
                                    mounts=self.mounts(list(extra_mounts)), network=NETWORK, check=False, stdout=stdout,
                                    what=what or f"restic {args[0]}")
        if done.returncode != 0:
            raise self.error(done, what or f"restic {args[0]}")
        return done

    def error(self, done: subprocess.CompletedProcess, what: str) -> DataError:
        text = done.stderr if isinstance(done.stderr, str) else (done.stderr or b"").decode(errors="replace")
        reason = last_line(text).removeprefix("Fatal: ")
        if done.returncode == 12 or "wrong password" in text:
            return DataError(f"the backup repository's password is wrong ({self.location}): restic says "
                             f"'{reason}'; the password is the stack's backup_password output")
        if done.returncode == 10:
            return DataError(f"there is no backup repository at {self.location}")
        if done.returncode == 11:
            return DataError(f"the backup repository is locked by another run: {reason}")
        if any(s in text for s in ("connection refused", "no such host", "i/o timeout", "dial tcp", "no route to host")):
            return DataError(f"the backup repository is unreachable ({self.location}): {reason}")
        return DataError(f"{what} failed (exit {done.returncode}): {reason or 'no message'}")

    def reachable(self, attempts: int = 3) -> None:
        """Fail at once when an S3 repository's endpoint does not answer.

        restic itself retries a refused connection for 15 minutes before it gives up; a
        backup whose repository is gone should say so now.
        """
        if not self.location.startswith("s3:"):
            return
        parts = urlsplit(self.location[len("s3:"):])
        port = parts.port or (443 if parts.scheme == "https" else 80)
        reason = ""
        for attempt in range(attempts):
            try:
                socket.create_connection((parts.hostname, port), timeout=5).close()
                return
            except OSError as exc:
                reason = exc.strerror or str(exc) or type(exc).__name__
                if attempt + 1 < attempts:
                    time.sleep(2)
        raise DataError(f"the backup repository is unreachable ({self.location}): "
                        f"{parts.hostname}:{port}: {reason}")

    def watched(self, argv: list[str], mounts: list[str] = (), on_line=None) -> tuple[int, str, bool]:
        """Run restic ``argv``, stopping it at its first "bucket does not exist".

        restic (0.19) treats an S3 bucket that does not exist as a passing error and retries
        it for many minutes before it exits 1; a repository that was never created (or a
        mistyped bucket) should be reported at once. Its messages are watched as they come and
        its container removed on the first such line. ``on_line`` gets each stdout line.
        Returns the exit code, the stderr text and whether there is no repository (the bucket
        is missing, or restic exited 10: no repository in it).
        """
        name = f"mlox-restic-{argv[0]}-{os.getpid()}"
        cmd = self.host.docker_argv(self.host.plan["images"]["restic"], argv, env=self.env,
                                    mounts=self.mounts(list(mounts)), network=NETWORK, name=name)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, **self.env})
        assert proc.stdout is not None and proc.stderr is not None
        lines: list[str] = []
        missing = threading.Event()

        def watch_stderr() -> None:
            for line in proc.stderr:
                lines.append(line)
                if "bucket does not exist" in line and not missing.is_set():
                    missing.set()
                    subprocess.run(["docker", "rm", "-f", name], capture_output=True)

        watcher = threading.Thread(target=watch_stderr, daemon=True)
        watcher.start()
        for line in proc.stdout:
            if on_line is not None:
                on_line(line)
        code = proc.wait()
        watcher.join()
        return code, "".join(lines), missing.is_set() or code == 10

    def exists(self) -> bool:
        """Whether the repository exists: ``restic cat config``, stopped early on a missing bucket."""
        self.reachable()
        code, stderr, missing = self.watched(["cat", "config"])
        if missing:
            return False
        if code == 0:
            return True
        raise self.error(subprocess.CompletedProcess([], code, "", stderr), "opening the backup repository")

    def ensure(self) -> bool:
        """Open the repository, creating it (and its bucket) only when there is none."""
        if self.exists():
            return False
        self.run(["init"], what="creating the backup repository")
        return True

    def open(self) -> None:
        """Open an existing repository; fail at once with a clear reason when there is none."""
        if not self.exists():
            raise DataError(f"there is no backup repository at {self.location} (the first `mlox-iac backup` "
                            "creates it; check mlox:backup.repository)")


# --------------------------------------------------------------------------- state


def _state_path() -> Path:
    return STATE_DIR / "status.json"


def _read_json(path: Path) -> Any:
    """A state file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: Any) -> None:
    """A state file written whole, then renamed: a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def read_state() -> dict[str, Any]:
    return _read_json(_state_path()) or {}


def write_state(state: dict[str, Any]) -> None:
    _write_json(_state_path(), state)


def _reason(exc: Exception) -> str:
    """A failure as recorded for status: a DataError's own line, else the exception's type too."""
    return str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"


def write_metrics(state: dict[str, Any], interval_s: int) -> None:
    """The last backup's result as Prometheus metrics, for the BackupFailed and BackupStale
    alerts (written whole, then renamed, as the textfile collector requires)."""
    last, last_ok = state.get("last") or {}, state.get("last_ok") or {}
    metrics = [
        ("last_status", "1 when the last backup succeeded, 0 when it failed", 1 if last.get("ok") else 0),
        ("last_run_timestamp_seconds", "when the last backup finished", last.get("finished_at")),
        ("last_success_timestamp_seconds", "when the last successful backup finished", last_ok.get("finished_at")),
        ("interval_seconds", "the backup schedule's interval", interval_s),
    ]
    lines = []
    for name, help_text, value in metrics:
        if value is not None:
            lines += [f"# HELP mlox_backup_{name} {help_text}.", f"# TYPE mlox_backup_{name} gauge",
                      f"mlox_backup_{name} {value}"]
    METRICS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = METRICS_DIR / ".mlox_backup.prom.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o644)
    tmp.replace(METRICS_DIR / "mlox_backup.prom")


class Lock:
    """One backup, restore or migration restore at a time on a server.

    ``wait_s``: how long to wait for the one running, said once as progress. A scheduled
    backup that fires during a restore waits for it instead of failing (which would turn
    ``status`` red until the next day's run). ``path``: another lock file, for work that
    must not run twice at once but may run beside a backup (a migration's copy)."""

    def __init__(self, what: str = "backup", host: Host | None = None, wait_s: float = 0, path: str | None = None):
        self.what, self.host, self.wait_s, self.path = what, host, wait_s, path

    def __enter__(self):
        self.fd = os.open(self.path or LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        deadline = time.monotonic() + self.wait_s
        said = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(self.fd, 64, 0).decode(errors="replace").rpartition(" ")[0] or "backup or restore"
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise DataError(f"another {holder} is running on this server"
                                    + (f" (waited {self.wait_s / 60:.0f} min)" if self.wait_s else "")) from None
                if not said and self.host is not None:
                    self.host.progress("waiting", f"waiting for the {holder} running on this server")
                    said = True
                time.sleep(1)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{self.what} {os.getpid()}".encode(), 0)  # who holds it, for the next one's message
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


# --------------------------------------------------------------------------- backup


def _services(host: Host) -> dict[str, dict]:
    return host.plan["services"]


def _staging(host: Host) -> Path:
    return host.data_dir / "backup" / "staging"


def capture_all(host: Host, staging: Path, cache: Path) -> dict[str, Any]:
    """Run every capture verb into ``staging``; return the manifest of everything."""
    services = _services(host)
    # Format 2: a database's tables carry "sum" (format 1: "md5"; postgres.py verifies both).
    manifest: dict[str, Any] = {"format": 2, "stack": host.plan["stack"], "created_at": time.time(), "services": {}}
    entries = manifest["services"]
    for name, data in services.items():
        entries[name] = {"databases": {}, "buckets": {}, "volumes": {}, "writers": data["writers"]}
    # Databases first: see the module docstring for what this order guarantees.
    dbs = [(n, db) for n, d in services.items() for db in d["databases"]]
    if dbs:
        host.progress("dump", "roles")
        postgres.capture_roles(host, staging / "postgres" / "roles.sql")
    for name, db in dbs:
        host.progress("dump", f"database {db} ({name})")
        entries[name]["databases"][db] = postgres.capture(host, db, staging / "postgres" / f"{db}.dump")
    wanted_buckets = set()
    for name, data in services.items():
        for bucket in data["buckets"]:
            host.progress("objects", f"bucket {bucket} ({name})")
            wanted_buckets.add(bucket)
            entries[name]["buckets"][bucket] = objects.capture(host, bucket, staging / "objects" / bucket,
                                                               cache / f"hashes-bucket-{bucket}.json")
    for stale in (staging / "objects").glob("*") if (staging / "objects").is_dir() else []:
        if stale.name not in wanted_buckets:  # a bucket no longer declared
            shutil.rmtree(stale)
    for name, data in services.items():
        for volume in data["volumes"]:
            host.progress("volumes", f"volume {volume} ({name})")
            entries[name]["volumes"][volume] = volumes.capture(host, volume, cache / f"hashes-volume-{volume}.json")
    (staging / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    return manifest


def _kept_volumes(host: Host) -> list[str]:
    return sorted(v for d in _services(host).values() for v in d["volumes"])


def backup(host: Host) -> dict[str, Any]:
    """One backup: forget beside the capture, restic backup, check; the result is recorded either way."""
    state = read_state()
    started = time.time()
    record: dict[str, Any] = {"started_at": started, "ok": False}
    try:
        with Lock("backup", host, wait_s=LOCK_WAIT_S):
            repo = Repository(host)
            host.progress("repository", f"opening {repo.location}")
            # Where the last backup succeeded into this same repository, restic backup itself
            # opens it (a separate probe costs a restic run: 0.9 s of a 6 s unchanged backup);
            # otherwise it is probed first, so a wrong password or a missing repository is
            # reported before anything is copied.
            known = state.get("repository") == repo.location
            if known:
                repo.reachable()
            elif repo.ensure():
                host.progress("repository", "created a new repository")
            # forget (the keep policy) runs beside the copy, on the snapshots before this one:
            # it takes restic's exclusive lock, which the copy does not need, and mostly waits
            # on restic opening the repository (0.9 s of an unchanged backup's 4.7 s). So the
            # repository holds at most one snapshot more than the policy keeps.
            host.progress("forget", "restic forget, beside the copy")
            with ThreadPoolExecutor(1) as beside:  # leaving it waits for the forget, whatever the copy did
                forgetting = beside.submit(_forget, host, repo)
                staging = _staging(host)
                cache = repo.cache
                manifest = capture_all(host, staging, cache)
            forgetting.result()  # a failed forget fails the backup, loudly
            services = sorted(n for n, e in manifest["services"].items() if any(e[k] for k in ("databases", "buckets", "volumes")))
            mounts = [f"{staging}:{ROOT}/staging:ro"]
            mounts += [f"{host.data_dir}/volumes/{v}:{ROOT}/volumes/{v}:ro" for v in _kept_volumes(host)]
            tags = ["--tag", "mlox", *[a for s in services for a in ("--tag", f"service:{s}")]]
            host.progress("upload", "restic backup")
            try:
                summary = _restic_backup(host, repo, mounts, tags)
            except MissingRepository:
                if not known:
                    raise
                host.progress("repository", f"the repository at {repo.location} is gone (the last backup went "
                              "there): creating a new one; the snapshots it held are not in it")
                repo.run(["init"], what="creating the backup repository")
                summary = _restic_backup(host, repo, mounts, tags)
            record.update(snapshot=summary.get("snapshot_id"), data_added=summary.get("data_added", 0),
                          total_bytes=summary.get("total_bytes_processed", 0), services=services)
            host.progress("check", "restic check")
            repo.run(["check"], what="restic check")
            record["check"] = "ok"
            deep = host.plan["backup"]
            if started - state.get("deep_check_at", 0) >= deep["check_every_s"]:
                host.progress("check", f"restic check --read-data-subset={deep['check_read_data']}%")
                repo.run(["check", f"--read-data-subset={deep['check_read_data']}%"], what="restic deep check")
                state["deep_check_at"] = time.time()
                record["check"] = f"ok (read back {deep['check_read_data']}% of the data)"
            # prune reads the whole repository's index to free what forgotten snapshots
            # alone held: on the deep check's cadence, not on every run.
            if started - state.get("prune_at", 0) >= deep["check_every_s"]:
                host.progress("prune", "restic prune")
                repo.run(["prune"], what="restic prune")
                state["prune_at"] = time.time()
            record["ok"] = True
            state["repository"] = repo.location
    except Exception as exc:  # recorded as a failure, then reported by the caller
        record["error"] = _reason(exc)
        raise
    finally:
        record["finished_at"] = time.time()
        state["last"] = record
        if not record.get("ok"):
            state.pop("repository", None)  # the next run probes the repository before it copies anything
        else:
            state["last_ok"] = record
            checks = state.setdefault("checks", {})
            checks[record["snapshot"]] = record["check"]
            while len(checks) > 100:
                checks.pop(next(iter(checks)))
        write_state(state)
        write_metrics(state, host.plan["backup"]["interval_s"])
    return record


def _forget(host: Host, repo: Repository) -> None:
    """``restic forget`` with the ``keep`` policy; a missing repository is left to the backup."""
    keep = host.plan["backup"]["keep"]
    argv = ["forget", "--host", host.plan["stack"], "--tag", "mlox"]
    for period in ("last", "hourly", "daily", "weekly", "monthly"):
        if keep.get(period):
            argv += [f"--keep-{period}", str(keep[period])]
    code, stderr, missing = repo.watched(argv)
    if code != 0 and not missing:
        raise repo.error(subprocess.CompletedProcess(argv, code, "", stderr), "restic forget")


class MissingRepository(DataError):
    """restic found no repository (or no bucket) at the location."""


def _restic_backup(host: Host, repo: Repository, mounts: list[str], tags: list[str]) -> dict[str, Any]:
    """``restic backup --json``, turning its status lines into progress events."""
    summary: dict[str, Any] = {}
    last = 0.0

    def on_line(line: str) -> None:
        nonlocal summary, last
        try:
            event = json.loads(line)
        except ValueError:
            return
        if event.get("message_type") == "summary":
            summary = event
        elif event.get("message_type") == "status" and time.monotonic() - last > 2:
            last = time.monotonic()
            host.progress("upload", f"{event.get('percent_done', 0) * 100:.0f}% of "
                          f"{event.get('total_bytes', 0) / 1e6:.0f} MB", percent=event.get("percent_done", 0))

    argv = ["backup", ROOT, "--json", "--host", host.plan["stack"], *tags]
    code, stderr, missing = repo.watched(argv, mounts, on_line)
    if missing:
        raise MissingRepository(f"there is no backup repository at {repo.location}")
    if code != 0 or not summary:
        raise repo.error(subprocess.CompletedProcess(argv, code or 1, "", stderr), "restic backup")
    return summary


# --------------------------------------------------------------------------- list


def snapshots(host: Host) -> list[dict[str, Any]]:
    repo = Repository(host)
    repo.open()
    found = json.loads(repo.run(["snapshots", "--json", "--host", host.plan["stack"], "--tag", "mlox"],
                                what="listing snapshots").stdout or "[]")
    checks = read_state().get("checks", {})
    out = []
    for snap in found:
        summary = snap.get("summary") or {}
        out.append({
            "id": snap["short_id"], "full_id": snap["id"], "time": snap["time"],
            "services": sorted(t.split(":", 1)[1] for t in snap.get("tags", []) if t.startswith("service:")),
            "size": summary.get("total_bytes_processed"), "added": summary.get("data_added"),
            "check": checks.get(snap["id"], "-"),
        })
    return sorted(out, key=lambda s: s["time"])


# --------------------------------------------------------------------------- restore


def restore(host: Host, snapshot: str = "latest", service: str | None = None) -> dict[str, Any]:
    """Restore a snapshot's data (all of it, or one service's) into the running stack."""
    with Lock("restore", host, wait_s=LOCK_WAIT_S):
        repo = Repository(host)
        host.progress("repository", f"opening {repo.location}")
        repo.open()
        host.progress("snapshot", f"reading {snapshot}")
        base = ["--host", host.plan["stack"], "--tag", "mlox"]
        listed = json.loads(repo.run(["snapshots", "--json", *base, snapshot], what=f"finding snapshot {snapshot}").stdout or "[]")
        if not listed:
            raise DataError(f"no snapshot {snapshot!r} of stack {host.plan['stack']} in {repo.location} "
                            "(mlox-iac backups lists them)")
        snap = listed[-1]
        manifest = json.loads(repo.run(["dump", snap["id"], f"{ROOT}/staging/manifest.json"],
                                       what="reading the snapshot's manifest").stdout)
        entries = manifest["services"]
        chosen = {n: e for n, e in entries.items() if any(e[k] for k in ("databases", "buckets", "volumes"))}
        if service is not None:
            if service not in chosen:
                raise DataError(f"service {service!r} has no data in snapshot {snap['short_id']} "
                                f"(it has: {', '.join(sorted(chosen)) or 'nothing'})")
            chosen = {service: chosen[service]}
        target = host.data_dir / "backup" / "restore"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        includes = [f"{ROOT}/staging/manifest.json"]
        for e in chosen.values():
            if e["databases"]:
                includes.append(f"{ROOT}/staging/postgres")
            includes += [f"{ROOT}/staging/objects/{b}" for b in e["buckets"]]
            includes += [f"{ROOT}/volumes/{v}" for v in e["volumes"]]
        host.progress("download", f"restic restore {snap['short_id']}")
        repo.run(["restore", snap["id"], "--target", "/restore", *[a for i in sorted(set(includes)) for a in ("--include", i)]],
                 extra_mounts=[f"{target}:/restore"], what="restic restore")
        src = target / ROOT.lstrip("/")
        # From here on, how this restore ends is recorded for status: that is where the user
        # learns it when the ssh connection dropped meanwhile.
        record = {"snapshot": snap["short_id"], "services": sorted(chosen), "started_at": time.time(),
                  "pid": os.getpid(), "boot_id": _boot_id(), "changed": False}
        _write_restore_record(record)

        def changing() -> None:
            record["changed"] = True
            _write_restore_record(record)

        try:
            restored = restore_all(host, chosen, src / "staging", src / "volumes", changing=changing)
        except Exception as exc:
            _write_restore_record({**record, "finished_at": time.time(), "ok": False, "error": _reason(exc)})
            raise
        _write_restore_record({**record, "finished_at": time.time(), "ok": True})
        shutil.rmtree(target, ignore_errors=True)
        # The next backup re-syncs its object copies from the restored buckets.
        return {"snapshot": snap["short_id"], "time": snap["time"], "restored": restored, "verified": True}


def restore_all(host: Host, chosen: dict[str, Any], staging: Path, volume_copies: Path,
                cache_dir: Path | None = None, changing: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """Restore the services in ``chosen`` (manifest entries) from a staging directory laid out
    as :func:`capture_all` writes it and a directory of volume copies; every step verifies
    against the manifest, the copies before anything stops. Their writers are stopped
    meanwhile; the stack is started again whatever happens. ``changing`` is called before the
    first change. Used by restore (from a snapshot) and by migration (from the old server,
    with ``cache_dir``: objects hashed by an earlier run and unchanged since are not read again)."""
    # Before anything stops, every copy is checked against the manifest: each database is
    # restored into a scratch database and verified there (beside the hashing of the object
    # and volume copies). A bad copy leaves the stack as it was, serving; and the writers
    # stay stopped only for the swaps and the object writes.
    databases = [(name, db, m) for name, e in chosen.items() for db, m in e["databases"].items()]
    with ThreadPoolExecutor(1) as beside:  # leaving it waits for the databases, whatever the checks did
        preparing = beside.submit(_prepare_databases, host, databases, staging) if databases else None
        for name, e in chosen.items():
            for bucket, m in e["buckets"].items():
                host.progress("objects", f"bucket {bucket}: checking the restored copy against the manifest")
                objects.check_copy(bucket, staging / "objects" / bucket, m, cache_dir)
            for volume, m in e["volumes"].items():
                volumes.check_copy(volume, volume_copies / volume, m)
        buckets = sorted({b for e in chosen.values() for b in e["buckets"]})
        if buckets:
            objects.make_buckets(host, buckets)
    if preparing is not None:
        preparing.result()
    writers = sorted({w for e in chosen.values() for w in e["writers"]})
    restored: list[dict[str, Any]] = []
    changing()
    try:
        if writers:
            host.progress("stop", "stopping " + ", ".join(writers))
            host.compose_stop(writers)
        for name, e in chosen.items():
            for db, m in e["databases"].items():
                host.progress("databases", f"database {db} ({name}): swapping in the verified copy")
                restored.append({"service": name, "kind": "database", "name": db, **postgres.swap(host, db, m)})
            for bucket, m in e["buckets"].items():
                host.progress("objects", f"bucket {bucket} ({name})")
                restored.append({"service": name, "kind": "bucket", "name": bucket,
                                 **objects.restore(host, bucket, staging / "objects" / bucket, m, cache_dir)})
            for volume, m in e["volumes"].items():
                host.progress("volumes", f"volume {volume} ({name})")
                restored.append({"service": name, "kind": "volume", "name": volume,
                                 **volumes.restore(host, volume, volume_copies / volume, m)})
    finally:
        host.progress("start", "starting the stack")
        host.compose_up()
    return restored


def _prepare_databases(host: Host, databases: list[tuple[str, str, Any]], staging: Path) -> None:
    """The backup's roles, then each database restored into its scratch copy and verified."""
    host.progress("databases", "roles")
    postgres.restore_roles(host, staging / "postgres" / "roles.sql")
    for name, db, m in databases:
        host.progress("databases", f"database {db} ({name}): restoring a copy beside the live one")
        postgres.prepare(host, db, staging / "postgres" / f"{db}.dump", m)


# --------------------------------------------------------------------------- status


def status(host: Host) -> dict[str, Any]:
    """The last backup's age and result, judged against the schedule; the last restore's outcome."""
    state = read_state()
    interval = host.plan["backup"]["interval_s"]
    now = time.time()
    last, last_ok = state.get("last"), state.get("last_ok")
    installed = state.get("installed_at") or _installed_at()
    out: dict[str, Any] = {"interval_s": interval, "now": now, "last": last, "last_ok_at": (last_ok or {}).get("finished_at")}
    out.update(_backup_age(last, last_ok, installed, interval, now))
    restoring = restore_status()
    out["restore"] = restoring
    if restoring is None or restoring["state"] == "done":
        return out
    since = f"snapshot {restoring.get('snapshot')}, started {(now - restoring.get('started_at', now)) / 60:.0f} min ago"
    ended = f"failed: {restoring.get('error')}" if restoring["state"] == "failed" else "was cut off"
    if restoring["state"] == "running":
        said = f"a restore is running ({since})"
    elif not restoring.get("changed"):
        said = f"the last restore ({since}) changed nothing: it {ended}"
    else:
        # The stack may hold part of the snapshot and part of what it held before: not ok
        # until a restore runs through.
        out["ok"] = False
        if restoring["state"] == "cut off":
            ended += " (its process ended without a result: killed, or the server restarted)"
        said = f"the last restore ({since}) {ended}; run mlox-iac restore again"
    out["detail"] = f"{said}; {out['detail']}"
    return out


def _backup_age(last: dict | None, last_ok: dict | None, installed: float | None, interval: float,
                now: float) -> dict[str, Any]:
    """ok and detail of the backups alone: the last one's result and the last good one's age."""
    out: dict[str, Any] = {}
    if last is None:
        waited = now - installed if installed else 0
        out["ok"] = waited <= 2 * interval
        out["detail"] = "no backup yet" + ("" if out["ok"] else f" although the schedule was installed {waited / 3600:.1f}h ago")
        return out
    age = now - (last_ok or {}).get("finished_at", 0) if last_ok else None
    out["age_s"] = age
    if not last.get("ok"):
        out["ok"], out["detail"] = False, f"last backup failed: {last.get('error', 'unknown error')}"
    elif age is not None and age > 2 * interval:
        out["ok"], out["detail"] = False, f"last successful backup is {age / 3600:.1f}h old (schedule: every {interval / 3600:.1f}h)"
    else:
        out["ok"], out["detail"] = True, "ok"
    return out


def _restore_path() -> Path:
    return STATE_DIR / "restore.json"


def _write_restore_record(record: dict[str, Any]) -> None:
    _write_json(_restore_path(), record)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def restore_status() -> dict[str, Any] | None:
    """The last restore: running, done, failed, or cut off (its process is gone without a result:
    killed, or the server restarted). None when this server never restored."""
    record = _read_json(_restore_path())
    if not isinstance(record, dict):
        return None
    if "ok" in record:
        return {**record, "state": "done" if record["ok"] else "failed"}
    alive = record.get("boot_id") == _boot_id() and Path(f"/proc/{record.get('pid')}").exists()
    return {**record, "state": "running" if alive else "cut off"}


def _installed_at() -> float | None:
    try:
        return float((STATE_DIR / "installed_at").read_text().strip())
    except (OSError, ValueError):
        return None
