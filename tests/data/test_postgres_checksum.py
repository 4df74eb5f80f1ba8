"""The Postgres checksum on a real PostgreSQL, run on this machine (not end-to-end).

The server is the pinned image's major version from Debian (``apt-get install postgresql``;
``scripts/setup --e2e`` installs it): a throwaway cluster of this module's own in a temporary
directory, reached on a unix socket there, stopped and removed at the end. The product's
functions run against it unchanged through a :class:`Host` whose ``docker compose exec -T
postgres CMD`` runs CMD here, so the SQL under test is the text the product sends.

What they show: on a table of millions of rows the checksum's memory stays flat (where the
MD5 over sorted MD5s it replaced grows with the table), it tells apart the tables it must,
and a backup (format 2, ``sum``) and an older backup (format 1, ``md5``) both restore
verified.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from mlox_iac.components.services.postgres import IMAGE, SUPERUSER
from mlox_iac.data import postgres
from mlox_iac.data.host import DataError, Host

MAJOR = re.match(r"postgres:(\d+)\.", IMAGE).group(1)
BIN = Path(f"/usr/lib/postgresql/{MAJOR}/bin")
MILLIONS = 3_000_000
# The bound the sum's peak stays under and the old checksum's exceeds. Any scan of a big
# table peaks near 30 MiB here (14 MiB of the backend's own, 16 MiB of shared buffers).
# Measured (2 cores, Debian 12, PostgreSQL 15.18): the sum 30 MiB on 1 and on 3 million rows,
# as much as a bare count(*); the MD5 over sorted MD5s 79 to 93 MiB on 1 million, 220 MiB
# on 3 million, 410 MiB on 6 million.
BOUND_KB = 48 * 1024
# The throwaway cluster: the container's defaults (work_mem 4MB among them) except for
#   shared_buffers=16MB: VmHWM counts the shared pages a backend touches, up to all of
#     shared_buffers (128MB by default), the same for any query; small, they blur nothing;
#   jit=off: JIT maps about 50 MB of libLLVM file pages into a backend whose query is costly
#     enough, shared and reclaimable, again the same for both checksums;
#   max_parallel_workers_per_gather=0: the whole aggregate runs in the backend whose peak is
#     read (neither checksum's plan has a Gather: an ordered aggregate, an OFFSET 0 subquery);
#   fsync, WAL and autovacuum off: loading millions of rows takes seconds, not a minute.
SETTINGS = {"listen_addresses": "''", "shared_buffers": "16MB", "jit": "off", "max_parallel_workers_per_gather": "0",
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "wal_level": "minimal",
            "max_wal_senders": "0", "autovacuum": "off"}
# An MLflow metrics table (mlflow/store/tracking/dbmodels/models.py: SqlMetric), without its
# primary key: the checksum reads the heap only, and the index would double the load time.
METRICS = ("CREATE TABLE {name} (key varchar(250) NOT NULL, value double precision NOT NULL, "
           '"timestamp" bigint NOT NULL, run_uuid varchar(32) NOT NULL, step bigint NOT NULL DEFAULT 0, '
           "is_nan boolean NOT NULL DEFAULT false);\n")
ROWS = ("SELECT 'loss_' || (i % 20), sin(i) * 1000, 1700000000000 + i * 10, lpad(to_hex(i / 10000), 32, '0'), "
        "i / 20, false FROM generate_series({first}, {last}) i")
# The session's backend, read at its end: peak RSS (kB), and CPU time (utime + stime, ticks).
PEAK = ("SELECT 'VmHWM', substring(pg_read_file('/proc/self/status') from 'VmHWM:\\s*(\\d+) kB');\n"
        "SELECT 'CPU', split_part(s, ' ', 14)::int + split_part(s, ' ', 15)::int FROM pg_read_file('/proc/self/stat') s;\n")
TICKS = os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def host():
    """A :class:`Host` on a throwaway cluster; its compose runs ``exec -T postgres CMD`` as CMD here."""
    assert (BIN / "initdb").exists(), (f"PostgreSQL {MAJOR} is not installed "
                                       "(apt-get install postgresql; scripts/setup --e2e installs it)")
    owner = "postgres" if os.geteuid() == 0 else None  # initdb refuses to run as root
    root = Path(tempfile.mkdtemp(prefix="mlox-pg-"))  # short: a socket's path has at most 107 bytes
    if owner:
        shutil.chown(root, owner)

    def pg(*argv) -> None:
        subprocess.run([str(a) for a in argv], check=True, user=owner, capture_output=True, text=True)

    pg(BIN / "initdb", "-D", root / "data", "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8")
    options = " ".join(f"-c {k}={v}" for k, v in SETTINGS.items())
    pg(BIN / "pg_ctl", "-D", root / "data", "-l", root / "log", "-w", "-o", f"-k {root} {options}", "start")
    compose = ["env", f"PGHOST={root}", f"PATH={BIN}:{os.environ['PATH']}", "sh", "-c", 'shift 3; exec "$@"', "compose"]
    try:
        yield Host({"compose": compose, "data_dir": str(root / "mlox"), "stack": "test",
                    "postgres": {"service": "postgres", "superuser": SUPERUSER}})
    finally:
        try:
            pg(BIN / "pg_ctl", "-D", root / "data", "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)


def sql(host: Host, database: str, script: str) -> str:
    return postgres._psql(host, database, script, f"psql on {database}")


def new_database(host: Host, name: str, script: str) -> None:
    """``name`` created afresh, then ``script`` run in it in one transaction."""
    sql(host, "postgres", f'DROP DATABASE IF EXISTS "{name}";\nCREATE DATABASE "{name}";\n')
    sql(host, name, "BEGIN;\n" + script + "COMMIT;\n")


class Measured(NamedTuple):
    manifest: postgres.Manifest
    peak_kb: int  # the backend's peak RSS
    seconds: float  # wall time
    cpu_s: float  # the backend's CPU time


def measured(host: Host, database: str, checksums: str) -> Measured:
    """What ``checksums`` computes, in a session of its own: its backend's peak is its alone."""
    start = time.monotonic()
    out = sql(host, database, checksums + PEAK)
    seconds = time.monotonic() - start
    peak, ticks = (int(re.search(rf"^{key}\t(\d+)$", out, re.M).group(1)) for key in ("VmHWM", "CPU"))
    return Measured(postgres._parse(out), peak, seconds, ticks / TICKS)


def test_checksum_memory_stays_flat_on_millions_of_rows(host):
    """The sum's peak on 3 million MLflow metrics is its peak on 1 million, under BOUND_KB;
    the old MD5 over sorted MD5s (every row's MD5 sorted, then one string of them all) is
    above it on 1 million already. Both count alike.

    A peak is the backend's VmHWM (its peak RSS), which the backend reads from its own
    /proc/self/status at the end of the checksum's session; every checksum gets a session,
    so a backend, of its own. VmHWM counts the shared pages a backend touched too, hence the
    cluster's small shared_buffers (see SETTINGS): what remains is the query's own memory."""
    def grow(first: int, last: int) -> None:
        sql(host, "metrics", f"INSERT INTO metrics {ROWS.format(first=first, last=last)};\n"
                             "SELECT count(*) FROM metrics;\n")  # sets the hint bits: no checksum pays for them

    new_database(host, "metrics", METRICS.format(name="metrics"))
    grow(1, 1_000_000)
    runs = [("sum", 1_000_000, measured(host, "metrics", postgres.CHECKSUMS)),
            ("old", 1_000_000, measured(host, "metrics", postgres.LEGACY_CHECKSUMS))]
    grow(1_000_001, MILLIONS)
    runs.append(("sum", MILLIONS, measured(host, "metrics", postgres.CHECKSUMS)))
    for what, n, m in runs:
        print(f"{what}, {n:,} rows: peak {m.peak_kb / 1024:.0f} MiB, {m.seconds:.1f} s, "
              f"backend CPU {m.cpu_s:.1f} s ({n / m.cpu_s:,.0f} rows per CPU second)")
    (_, _, small), (_, _, old), (_, _, large) = runs
    assert old.manifest["public.metrics"]["rows"] == small.manifest["public.metrics"]["rows"] == 1_000_000
    assert large.manifest["public.metrics"]["rows"] == MILLIONS
    assert old.peak_kb > BOUND_KB >= large.peak_kb, (old.peak_kb, large.peak_kb)
    assert large.peak_kb - small.peak_kb < 4096, (small.peak_kb, large.peak_kb)


def test_checksum_tells_apart_what_it_must(host):
    """Row order does not count (another insert order, a CLUSTER); a changed row, a row
    more, and which row is duplicated do. The last is where an XOR of the same row hashes
    fails: two copies of a row cancel, so x twice looks like y twice."""
    base = ROWS.format(first=1, last=1000)
    one = '(SELECT * FROM base WHERE "timestamp" = 1700000000000 + {} * 10)'  # row i
    tables = {
        "base": base,
        "reordered": f"{base} ORDER BY random()",
        "changed": "SELECT * FROM base",
        "one_more": f"SELECT * FROM base UNION ALL {one.format(7)}",
        "x_twice": f"SELECT * FROM base UNION ALL {one.format(7)} UNION ALL {one.format(7)}",
        "y_twice": f"SELECT * FROM base UNION ALL {one.format(9)} UNION ALL {one.format(9)}",
        "empty": f"{base} LIMIT 0",
    }
    script = "".join(METRICS.format(name=name) + f"INSERT INTO {name} {rows};\n" for name, rows in tables.items())
    script += "UPDATE changed SET value = value + 1e-9 WHERE ctid = (SELECT min(ctid) FROM changed);\n"
    new_database(host, "cases", script)
    m = {name.removeprefix("public."): entry for name, entry in postgres.manifest_of(host, "cases").items()}

    assert m["reordered"] == m["base"]
    assert m["changed"]["rows"] == m["base"]["rows"] and m["changed"]["sum"] != m["base"]["sum"]
    assert m["one_more"]["rows"] == 1001 and m["one_more"]["sum"] != m["base"]["sum"]
    assert m["x_twice"]["rows"] == m["y_twice"]["rows"] and m["x_twice"]["sum"] != m["y_twice"]["sum"]
    assert m["empty"] == {"rows": 0, "sum": "0" * 32}
    xor = ("SELECT format('SELECT %L, bit_xor((''x'' || substr(md5(t::text), 1, 16))::bit(64)::bigint) FROM %I t', "
           "tablename, tablename) FROM pg_tables WHERE tablename IN ('base', 'x_twice', 'y_twice') ORDER BY 1 \\gexec\n")
    xors = dict(line.split("\t") for line in sql(host, "cases", xor).splitlines())
    assert xors["x_twice"] == xors["y_twice"] == xors["base"]

    # CLUSTER rewrites the table in another physical order: the first row read is another.
    first = "SELECT * FROM base LIMIT 1;\n"
    before = sql(host, "cases", first)
    sql(host, "cases", "CREATE INDEX base_value ON base (value);\nCLUSTER base USING base_value;\n")
    assert sql(host, "cases", first) != before
    assert postgres.manifest_of(host, "cases")["public.base"] == m["base"]


def test_backup_and_older_backup_restore_verified(host, tmp_path):
    """capture, prepare and swap as a restore runs them, with this manifest (format 2) and with
    the manifest an older backup holds (format 1, per table ``md5``): both verify, neither
    accepts a table whose content differs."""
    db = f"mlflow_{os.getpid()}"  # capture's snapshot marker is a file in this machine's /tmp
    new_database(host, db, METRICS.format(name="metrics") + f"INSERT INTO metrics {ROWS.format(first=1, last=20000)};\n"
                 "CREATE TABLE runs (run_uuid varchar(32) PRIMARY KEY, name text);\n"
                 "INSERT INTO runs SELECT DISTINCT run_uuid, 'run ' || run_uuid FROM metrics;\n")
    dump = tmp_path / f"{db}.dump"
    manifest = postgres.capture(host, db, dump)
    assert manifest == {"public.metrics": {"rows": 20000, "sum": manifest["public.metrics"]["sum"]},
                        "public.runs": {"rows": 3, "sum": manifest["public.runs"]["sum"]}}
    older = postgres._parse(sql(host, db, postgres.LEGACY_CHECKSUMS))
    assert set(older["public.metrics"]) == {"rows", "md5"}

    for expected in (manifest, older):
        postgres.prepare(host, db, dump, expected)
        assert postgres.swap(host, db, expected) == {"tables": 2, "rows": 20003}
        assert postgres.verify(host, db, expected) == []
        kind = "sum" if "sum" in expected["public.metrics"] else "md5"
        wrong = {**expected, "public.metrics": {**expected["public.metrics"], kind: "0" * 32}}
        with pytest.raises(DataError, match=f"database {db}: the restored copy does not match the backup: "
                                            "table public.metrics: content differs"):
            postgres.prepare(host, db, dump, wrong)
