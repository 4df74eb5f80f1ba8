"""Moving one part of a stack between the server's own store and an external one: the data
verbs composed for ``mlox-iac migrate --part`` (``python3 -m mlox_data part-<verb>``).

A part is ``objects`` (every declared bucket: SeaweedFS <-> an external S3 store) or
``postgres`` (every declared database: the server's Postgres <-> an external server). The
plan's ``parts`` entry (``mlox_iac/render/backup.py``) says which buckets and databases,
which containers write them and how to reach the external side; the keys and passwords are
read from the stores' env files, never from a command line.

- ``part-copy`` (``--part P --to external|local``): the bulk copy while the stack serves, and
  again after the freeze as the final delta. Objects: ``rclone sync`` of every bucket (side
  by side, up to ``PARALLEL`` containers) from the side in use to the other (only new or
  changed objects move; objects it would replace or delete on the destination move to its
  ``mlox-before-restore`` bucket instead).
  Databases: each is dumped in one snapshot (:func:`postgres.capture`), restored into a
  scratch database on the destination, verified against the dump's manifest, and swapped in
  by rename (the database it replaces is kept as ``<db>__mlox_before_restore``). Idempotent:
  an interrupted copy is run again.
- ``part-verify``: recomputes both sides' manifests (per object key, size and SHA-256, read
  back in full, except objects this server already hashed whose size, modification time and
  MD5 are unchanged since; per table row count and content checksum) and lists every
  difference. The move runs it once after the bulk copy while the stack serves, so the one
  in the freeze reads only what was written since.
- ``part-freeze`` / ``part-unfreeze``: the proxy answers 503 with ``Retry-After`` and the
  containers that write the part stop / everything runs again, the proxy as before.

The source is always the side the services use now (``uses`` in the plan): during a move
that is the old side until the cutover. External Postgres is reached from a helper container
of the stack's own Postgres image (``mlox-part-postgres``), so the client tools match the
server's version, with ``PGSSLMODE``/``PGSSLROOTCERT`` as the services use them.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from . import backup, move, objects, postgres
from .host import DataError, Host, read_env_file

PARTS = ("objects", "postgres")
SIDES = ("external", "local")
LOCK_FILE = "/run/mlox-part-move.lock"
HELPER = "mlox-part-postgres"
# A store that stops answering fails the copy within about a minute (rclone's defaults retry
# for many minutes), so a frozen stack is unfrozen on its old data soon.
BOUNDED = ["--retries", "2", "--low-level-retries", "3", "--contimeout", "15s", "--timeout", "60s"]
PARALLEL = 4  # rclone containers at once: the buckets' syncs, both sides' read-backs


def _part(host: Host, part: str) -> dict[str, Any]:
    entry = (host.plan.get("parts") or {}).get(part)
    if part not in PARTS or entry is None:
        raise DataError(f"this server's plan has no external {part} configured (is mlox:part_move set and deployed?)")
    return entry


def _sides(host: Host, part: str, to: str) -> tuple[str, str]:
    """(source, destination): from the side the services use now to ``to``."""
    if to not in SIDES:
        raise DataError(f"--to must be external or local, not {to!r}")
    uses = _part(host, part)["uses"]
    if uses == to:
        raise DataError(f"the services already use the {to} {part}: nothing to copy (the cutover happened)")
    return uses, to


def _root(host: Host) -> Path:
    return host.data_dir / "part-move"


def _lock(host: Host) -> backup.Lock:
    return backup.Lock("part move", host, wait_s=backup.LOCK_WAIT_S, path=LOCK_FILE)


# --------------------------------------------------------------------------- objects


def _store(host: Host, side: str) -> dict[str, Any]:
    """A plan ``s3`` entry for one side (the server's SeaweedFS, or the external store)."""
    return host.plan["s3"] if side == "local" else _part(host, "objects")["external"]


def _bucket(host: Host, side: str, bucket: str) -> str:
    """A bucket's name on one side (an external store prefixes it)."""
    return bucket if side == "local" else _store(host, side)["bucket_prefix"] + bucket


def _store_host(host: Host, side: str) -> Host:
    """The host whose ``s3`` is that side (the filer is SeaweedFS' own: only locally)."""
    return host if side == "local" else host.with_plan(s3=_store(host, side))


def _copy_objects(host: Host, src: str, dst: str) -> dict[str, Any]:
    env: dict[str, str] = {}
    mounts: list[str] = []
    for name, side in (("src", src), ("dst", dst)):
        side_env, side_mounts = objects.store_env(name, _store(host, side))
        env.update(side_env)
        mounts += [m for m in side_mounts if m not in mounts]
    def reach(name: str, side: str) -> None:  # an unreachable store fails here, in seconds
        objects.rclone(host, ["lsd", f"{name}:", "--retries", "1", "--low-level-retries", "1", "--contimeout", "10s",
                              "--timeout", "30s"], env, mounts, what=f"reaching the {side} store")

    _at_once([lambda: reach("src", src), lambda: reach("dst", dst)])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    before = _bucket(host, dst, objects.BEFORE_BUCKET)
    buckets = list(_part(host, "objects")["buckets"])

    def sync(bucket: str) -> None:
        source, target = _bucket(host, src, bucket), _bucket(host, dst, bucket)
        host.progress("copy", f"bucket {bucket}: {src} {source} -> {dst} {target}")
        # --checksum: compare by size and MD5 (both stores list it) rather than modification
        # times, which a copy does not carry over; --s3-disable-checksum: no extra read of
        # large files before their upload (every object is read back by part-verify).
        objects.rclone(host, ["sync", f"src:{source}", f"dst:{target}", "--checksum", "--s3-disable-checksum",
                              "--backup-dir", f"dst:{before}/{stamp}/{target}", "--checkers", "16",
                              "--transfers", "8", *BOUNDED], env, mounts,
                       what=f"copying bucket {bucket} to the {dst} store")

    _at_once([lambda bucket=bucket: sync(bucket) for bucket in buckets])
    return {"buckets": buckets}


def _at_once(steps: list[Callable[[], Any]]) -> list[Any]:
    """Run ``steps`` side by side (each is a container on the server that mostly waits on the
    network); their results in order. Every step ends before the first failure is raised."""
    with ThreadPoolExecutor(max(1, min(len(steps), PARALLEL))) as pool:
        futures = [pool.submit(step) for step in steps]
        wait(futures)
    return [future.result() for future in futures]


def _verify_objects(host: Host, src: str, dst: str) -> tuple[list[str], dict[str, Any]]:
    problems: list[str] = []
    count = size = 0
    cache = _root(host) / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    buckets = list(_part(host, "objects")["buckets"])

    def read(bucket: str, side: str) -> dict:
        host.progress("verify", f"bucket {bucket}: reading every object of the {side} store back")
        return objects.manifest_of(_store_host(host, side), _bucket(host, side, bucket),
                                   cache / f"hashes-{side}-{bucket}.json")

    pairs = [(bucket, side) for bucket in buckets for side in (src, dst)]
    read_back = dict(zip(pairs, _at_once([lambda pair=pair: read(*pair) for pair in pairs])))
    for bucket in buckets:
        manifests = {side: read_back[(bucket, side)] for side in (src, dst)}
        problems += [f"bucket {bucket}: object {p}" for p in _diff_objects(manifests[src], manifests[dst], dst)]
        count += len(manifests[src])
        size += sum(e["size"] for e in manifests[src].values())
    return problems, {"objects": count, "bytes": size}


def _diff_objects(expected: dict, actual: dict, dst: str) -> list[str]:
    from .host import diff_manifests

    def changed(e: dict, a: dict) -> str:
        if e["size"] != a["size"]:
            return f"{a['size']} bytes on the {dst} side (source: {e['size']})"
        return f"SHA-256 differs on the {dst} side"

    return diff_manifests(expected, actual, changed=changed, limit=20)


# --------------------------------------------------------------------------- postgres


@contextmanager
def _postgres_host(host: Host, side: str) -> Iterator[Host]:
    """The host whose Postgres client calls reach one side: the stack's postgres container,
    or, for the external server, a helper container started for the verb and removed after."""
    if side == "local":
        yield host
        return
    entry = _part(host, "postgres")
    ext = entry["external"]
    password = read_env_file(ext["env_file"]).get(ext["password_var"], "")
    env = {"PGHOST": ext["host"], "PGPORT": str(ext["port"]), "PGUSER": ext["user"], "PGPASSWORD": password,
           "PGSSLMODE": ext["sslmode"], "PGSSLROOTCERT": "/mlox-postgres-ca.pem"}
    host.run(["docker", "rm", "-f", HELPER], check=False)
    # Detached, kept alive by sleep: psql, pg_dump and pg_restore run in it by docker exec;
    # the password and settings by name from the environment, never on a command line.
    start = ["docker", "run", "-d", "--name", HELPER, "--network", host.plan["network"], "--entrypoint", "sleep",
             *[arg for key in sorted(env) for arg in ("-e", key)], "-v", f"{ext['ca']}:/mlox-postgres-ca.pem:ro",
             entry["image"], "infinity"]
    host.run(start, env=env, what="starting the Postgres client for the external server")
    other = host.with_plan(postgres={**host.plan["postgres"], "container": HELPER, "superuser": ext["user"],
                                     "admin_database": ext["database"], "restore_as_owner": True})
    try:
        yield other
    finally:
        host.run(["docker", "rm", "-f", HELPER], check=False)


def _copy_postgres(host: Host, src: str, dst: str) -> dict[str, Any]:
    dumps = _root(host) / "postgres"
    dumps.mkdir(parents=True, exist_ok=True)
    copied = {}
    with _postgres_host(host, src) as source, _postgres_host(host, dst) as target:
        for db in _part(host, "postgres")["databases"]:
            host.progress("copy", f"database {db}: dumping it on the {src} side")
            manifest = postgres.capture(source, db, dumps / f"{db}.dump")
            host.progress("copy", f"database {db}: restoring and verifying it on the {dst} side")
            postgres.prepare(target, db, dumps / f"{db}.dump", manifest)
            copied[db] = postgres.swap(target, db, manifest)
    return {"databases": copied}


def _verify_postgres(host: Host, src: str, dst: str) -> tuple[list[str], dict[str, Any]]:
    problems: list[str] = []
    tables = rows = 0
    with _postgres_host(host, src) as source, _postgres_host(host, dst) as target:
        for db in _part(host, "postgres")["databases"]:
            host.progress("verify", f"database {db}: checksums of every table on both sides")
            expected = postgres.manifest_of(source, db)
            problems += [f"database {db}: {p}" for p in postgres.diff(expected, postgres.manifest_of(target, db, expected))]
            tables += len(expected)
            rows += sum(t["rows"] for t in expected.values())
    return problems, {"tables": tables, "rows": rows}


# --------------------------------------------------------------------------- the verbs


def copy(host: Host, part: str, to: str) -> dict[str, Any]:
    """Copy the part from the side in use to ``to`` (bulk, or the final delta)."""
    src, dst = _sides(host, part, to)
    started = time.monotonic()
    with _lock(host):
        result = _copy_objects(host, src, dst) if part == "objects" else _copy_postgres(host, src, dst)
    return {**result, "seconds": round(time.monotonic() - started, 1)}


def verify(host: Host, part: str, to: str) -> dict[str, Any]:
    """Both sides' manifests compared; the differences named."""
    src, dst = _sides(host, part, to)
    with _lock(host):
        problems, counts = (_verify_objects if part == "objects" else _verify_postgres)(host, src, dst)
    return {"ok": not problems, "problems": problems, **counts}


def freeze(host: Host, part: str) -> dict[str, Any]:
    """The proxy answers 503 with Retry-After on every route; the part's writers stop."""
    writers = [w for w in _part(host, part)["writers"] if w != "caddy"]
    move._maintenance(host, True)
    host.compose_stop(writers)
    return {"stopped": writers, "frozen_at": time.time()}


def unfreeze(host: Host, part: str) -> dict[str, Any]:
    """Everything runs again (the containers a cutover recreated included); the proxy serves."""
    _part(host, part)
    host.compose_up()
    move._maintenance(host, False)
    return {"serving": True}


VERBS = {"part-copy": copy, "part-verify": verify, "part-freeze": freeze, "part-unfreeze": unfreeze}


def run_verb(host: Host, verb: str, args: Any) -> Any:
    """Dispatch one ``part-*`` verb (``args``: the parsed command line, ``--part`` and ``--to``)."""
    if args.part not in PARTS:
        raise DataError(f"--part must be one of {', '.join(PARTS)}")
    if verb in ("part-copy", "part-verify"):
        return VERBS[verb](host, args.part, args.to)
    return VERBS[verb](host, args.part)

