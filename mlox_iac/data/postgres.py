"""Postgres databases: transactionally consistent dumps plus roles, verified by per-table checksums.

- capture: one psql session opens a REPEATABLE READ, READ ONLY transaction and exports its
  snapshot; ``pg_dump -Fc -Z0 --snapshot=...`` dumps exactly that snapshot (uncompressed:
  restic compresses and deduplicates, and an unchanged database gives an almost identical
  dump), and the manifest (per table: row count and the sum of its rows' MD5s, see
  :data:`TABLE_SUM`) is computed in the same session, so dump and manifest describe the same
  instant.
  ``pg_dumpall --roles-only`` keeps the login roles.
- restore: roles first (the superuser is left alone; the provisioning step then sets every
  service's password from its env file again), then each database into a scratch database,
  verified against the manifest, and swapped in by rename; the replaced database is kept as
  ``<db>__mlox_before_restore`` until the next restore.
- verify: the manifest of a live database against an expected one.

A manifest is verified the way it was made: tables with ``sum`` (written since manifest
format 2) by :data:`TABLE_SUM`, tables with ``md5`` (format 1, older backups and old servers
that a migration copies from) by :data:`LEGACY_TABLE_MD5`, so such a restore still verifies.
Code older than format 2 compares a ``sum`` manifest with its own ``md5`` one and reports
every table as differing: a server restores a format 2 backup once this code is deployed on it.

Everything runs inside the stack's postgres container (``docker compose exec``), so the
client tools always match the server's version.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from .host import DataError, Host, diff_manifests, last_line

Manifest = dict[str, dict[str, Any]]
SCRATCH = "{}__mlox_restore"
BEFORE = "{}__mlox_before_restore"

# Per table: name, row count, and the sum over its rows of md5(row as text), the MD5's two
# 64-bit halves summed apiece (exact: Postgres sums bigints in 128 bits or numeric). The
# aggregate's state is those three numbers, so memory stays flat however many rows a table
# has (tests/data/test_postgres_checksum.py measures it); the MD5 over the sorted MD5s that
# format 1 used builds one string of them all, about 65 bytes a row at its peak (a backend
# measured 220 MiB on 3 million rows, 410 MiB on 6 million: past the container's 512 MiB
# near 6 million rows, and past 1 GB, the most a Postgres string holds, at 32 million).
# A sum, not an XOR: under XOR two copies of a row cancel, so a table holding row x twice
# equals one holding row y twice; a sum changes with every row added. A changed, missing or
# extra row shifts the sum by a difference of MD5s, zero by chance with odds near 2^-128
# (this guards against accidents; like format 1's MD5, not against forgery).
# OFFSET 0 keeps the subquery apart, so each row's MD5 is computed once, not once per half.
# Throughput on MLflow metrics: about 350,000 rows per second of one core (3 million rows in
# 8 to 9 s of CPU; the rows' text form takes 40% of it, the MD5s 30%); format 1 about
# 300,000 (on 1 million rows).
TABLE_SUM = ("SELECT %L, count(*), coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint), 0), "
             "coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint), 0) "
             "FROM (SELECT md5(t::text) AS h FROM %I.%I t OFFSET 0) s")
# Manifest format 1 (tables with ``md5``): an MD5 over the sorted MD5s of the rows. Kept only
# to verify such manifests; its memory grows with the table, but it ran on the same rows in
# the same container when that manifest was written.
LEGACY_TABLE_MD5 = "SELECT %L, count(*), coalesce(md5(string_agg(md5(t::text), ',' ORDER BY md5(t::text))), '') FROM %I.%I t"


def _every_table(query: str) -> str:
    """A psql script that runs ``query`` (a format() template: %L name, %I schema, %I table)
    on every user table, in name order."""
    template = "'" + query.replace("'", "''") + "'"
    return (f"SELECT format({template}, schemaname || '.' || tablename, schemaname, tablename) "
            "FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1 \\gexec\n")


CHECKSUMS = _every_table(TABLE_SUM)
LEGACY_CHECKSUMS = _every_table(LEGACY_TABLE_MD5)


def checksums_for(manifest: Manifest) -> str:
    """The script that computes a live database's manifest comparably to ``manifest``."""
    return LEGACY_CHECKSUMS if any("md5" in table for table in manifest.values()) else CHECKSUMS


def _settings(host: Host) -> tuple[str, str]:
    pg = host.plan["postgres"]
    return pg["service"], pg["superuser"]


def _admin_db(host: Host) -> str:
    """The database the admin connects to for CREATE/ALTER DATABASE (``postgres``, or the
    external server's, such as DigitalOcean's ``defaultdb``)."""
    return host.plan["postgres"].get("admin_database", "postgres")


def _psql(host: Host, database: str, sql: str, what: str) -> str:
    _, superuser = _settings(host)
    done = host.run(host.postgres_argv(["psql", "-U", superuser, "-d", database, "-At", "-q", "-F", "\t",
                                        "-v", "ON_ERROR_STOP=1"]), input=sql, what=what)
    return done.stdout


def _parse(out: str) -> Manifest:
    """Rows of :data:`CHECKSUMS` (name, rows, two sums) or :data:`LEGACY_CHECKSUMS` (name,
    rows, md5). The sums are kept modulo 2^64 each, as 32 hex digits: still a sum, in which
    rows cancel only 2^64 copies at a time."""
    manifest: Manifest = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            high, low = (int(p) % 2**64 for p in parts[2:])
            manifest[parts[0]] = {"rows": int(parts[1]), "sum": f"{high:016x}{low:016x}"}
        elif len(parts) == 3:
            manifest[parts[0]] = {"rows": int(parts[1]), "md5": parts[2]}
    return manifest


def manifest_of(host: Host, database: str, like: Manifest | None = None) -> Manifest:
    """The manifest of ``database`` as it is now, computed as ``like`` was (see :func:`checksums_for`)."""
    return _parse(_psql(host, database, checksums_for(like or {}), f"checksums of database {database}"))


def diff(expected: Manifest, actual: Manifest) -> list[str]:
    def changed(e: dict, a: dict) -> str:
        return f"{a['rows']} rows (backup: {e['rows']})" if e["rows"] != a["rows"] else "content differs"

    return diff_manifests(expected, actual, changed=changed, name=lambda table: f"table {table}")


def capture(host: Host, database: str, dest: Path) -> Manifest:
    """Dump ``database`` to ``dest`` and return its manifest, both from one snapshot."""
    _, superuser = _settings(host)
    marker = f"/tmp/mlox-snapshot-{database}"
    session = subprocess.Popen(
        host.postgres_argv(["psql", "-U", superuser, "-d", database, "-At", "-q", "-F", "\t", "-v", "ON_ERROR_STOP=1"]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert session.stdin is not None
    try:
        # The snapshot id reaches us through a file in the container: psql's stdout is
        # block-buffered on a pipe, and the session must stay open while pg_dump runs.
        session.stdin.write(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\n"
            "SELECT pg_export_snapshot() AS mlox_snapshot \\gset\n"
            "\\setenv MLOX_SNAPSHOT :mlox_snapshot\n"
            f"\\! echo \"$MLOX_SNAPSHOT\" > {marker}.tmp && mv {marker}.tmp {marker}\n"
        )
        session.stdin.flush()
        snapshot = ""
        deadline = time.monotonic() + 60
        while not snapshot:
            if session.poll() is not None or time.monotonic() > deadline:
                raise DataError(f"database {database}: could not open a snapshot: {last_line(session.stderr.read())}")
            done = host.run(host.postgres_argv(["cat", marker]), check=False)
            snapshot = done.stdout.strip() if done.returncode == 0 else ""
            if not snapshot:
                time.sleep(0.2)
        host.run(host.postgres_argv(["rm", "-f", marker]), check=False)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_suffix(".partial")
        with open(partial, "wb") as out:
            host.run(host.postgres_argv(["pg_dump", "-U", superuser, "-Fc", "-Z0", f"--snapshot={snapshot}", database]),
                     stdout=out, text=False, what=f"pg_dump of {database}")
        partial.replace(dest)
        stdout, stderr = session.communicate(CHECKSUMS + "COMMIT;\n", timeout=3600)
        if session.returncode != 0:
            raise DataError(f"database {database}: checksums failed: {last_line(stderr)}")
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    return _parse(stdout)


def capture_roles(host: Host, dest: Path) -> None:
    service, superuser = _settings(host)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        host.run([*host.compose, "exec", "-T", service, "pg_dumpall", "-U", superuser, "--roles-only"],
                 stdout=out, text=False, what="pg_dumpall --roles-only")


def restore_roles(host: Host, src: Path) -> None:
    """Create the roles of the backup (not the superuser), then let provisioning set passwords."""
    _, superuser = _settings(host)
    lines = [line for line in src.read_text().splitlines()
             if f"ROLE {superuser};" not in line and f"ROLE {superuser} " not in line]
    # "CREATE ROLE x" fails where the role exists; the ALTER ROLE after it still applies.
    service, _ = _settings(host)
    host.compose_exec(service, ["psql", "-U", superuser, "-d", "postgres", "-q", "-v", "ON_ERROR_STOP=0"],
                      input="\n".join(lines) + "\n", what="restoring roles")
    provision = host.plan["postgres"].get("provision")
    if provision:
        host.compose_up(provision, recreate=True)  # re-provisions the database roles


def prepare(host: Host, database: str, dump: Path, manifest: Manifest) -> None:
    """Restore the dump into a scratch database and verify it; the live database keeps
    serving meanwhile (:func:`swap` puts the copy in its place). Three commands in the
    container: each ``docker compose exec`` costs a few tenths of a second."""
    _, superuser = _settings(host)
    scratch = SCRATCH.format(database)
    # The scratch database belongs to the database's own role where there is one.
    _psql(host, _admin_db(host),
          f"SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{database}') AS mlox_has_owner \\gset\n"
          f'DROP DATABASE IF EXISTS "{scratch}";\n'
          f'\\if :mlox_has_owner\nCREATE DATABASE "{scratch}" OWNER "{database}";\n'
          f'\\else\nCREATE DATABASE "{scratch}" OWNER "{superuser}";\n\\endif\n',
          f"creating {scratch}")
    # On a server where the admin is not a superuser (a managed one), the objects are created
    # as the database's own role, which the admin is a member of (see postgres.py's provisioning).
    as_owner = ["--no-owner", f"--role={database}"] if host.plan["postgres"].get("restore_as_owner") else []
    with open(dump, "rb") as src:
        host.run(host.postgres_argv(["pg_restore", "-U", superuser, "-d", scratch, "--exit-on-error", *as_owner]),
                 stdin=src, text=False, what=f"pg_restore of {database}")
    problems = diff(manifest, manifest_of(host, scratch, like=manifest))
    if problems:
        raise DataError(f"database {database}: the restored copy does not match the backup: {problems[0]} "
                        f"(the live database is untouched; the copy is {scratch})")


def swap(host: Host, database: str, manifest: Manifest) -> dict[str, Any]:
    """Put the copy :func:`prepare` verified in place of the live database, which stays as
    ``<db>__mlox_before_restore``; then the checksums under its own name, in one session."""
    scratch, before = SCRATCH.format(database), BEFORE.format(database)
    swap = (f"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{database}') AS mlox_has_live \\gset\n"
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN ('{database}', '{scratch}') "
            "AND pid <> pg_backend_pid() \\g /dev/null\n"
            f'DROP DATABASE IF EXISTS "{before}";\n'
            f'\\if :mlox_has_live\nALTER DATABASE "{database}" RENAME TO "{before}";\n\\endif\n'
            f'ALTER DATABASE "{scratch}" RENAME TO "{database}";\n'
            f'\\c "{database}"\n' + checksums_for(manifest))
    problems = diff(manifest, _parse(_psql(host, _admin_db(host), swap, f"swapping in the restored {database}")))
    if problems:
        raise DataError(f"database {database}: differs after the swap: {problems[0]}")
    return {"tables": len(manifest), "rows": sum(t["rows"] for t in manifest.values())}


def verify(host: Host, database: str, manifest: Manifest) -> list[str]:
    return diff(manifest, manifest_of(host, database, like=manifest))
