"""``mlox_data part-*`` on the server, with the plan the bundle renders for a stack moving a part
and a recording runner in place of docker: which store each side is, that no key or password
reaches a command line, which containers a freeze stops, and which side a verb refuses.
The verbs against real stores and a real external Postgres: ``tests/e2e/test_parts.py``."""

from __future__ import annotations

import argparse
import subprocess

import pytest
from conftest import secret_keys, settings
from testca import root_ca

from mlox_iac.components.services.base import Context
from mlox_iac.config.loader import validate
from mlox_iac.data import backup, parts
from mlox_iac.data.host import DataError, Host
from mlox_iac.render.backup import backup_plan
from mlox_iac.render.bundle import render_compose

CA = root_ca().cert_pem
S3 = {"endpoint": "https://s3.provider.example", "region": "eu-1", "bucket_prefix": "acme-",
      "access_key_id": "AK-EXTERNAL", "secret_access_key": "SK-EXTERNAL", "ca": CA}
PG = {"host": "db.provider.example", "port": 25060, "admin_user": "doadmin", "admin_database": "defaultdb",
      "admin_password": "PW-EXTERNAL", "ca": CA}


class Recorder:
    def __init__(self):
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, argv, *, input=None, env=None, stdin=None, stdout=None, check=True, text=True, what=""):
        self.calls.append((list(argv), dict(env or {})))
        return subprocess.CompletedProcess(argv, 0, "" if text else b"", "" if text else b"")


def host_for(tmp_path, monkeypatch, part: str, state: str = "copying", to: str = "external", **services) -> tuple[Host, Recorder]:
    raw = settings("onprem", services={"preset": "full", "seaweedfs": {"external": S3}, "postgres": {"external": PG}, **services},
                   part_move={"part": part, "to": to, "state": state})
    ctx = Context(validate(raw, secret_keys(raw), "test.yaml", "prod"))
    plan = backup_plan(ctx, render_compose(ctx))
    # The env files the stack writes, here in tmp_path.
    (tmp_path / "seaweedfs.env").write_text("S3_ACCESS_KEY='AK-LOCAL'\nS3_SECRET_KEY='SK-LOCAL'\n"
                                            "EXTERNAL_S3_ACCESS_KEY='AK-EXTERNAL'\nEXTERNAL_S3_SECRET_KEY='SK-EXTERNAL'\n")
    (tmp_path / "postgres.env").write_text("EXTERNAL_POSTGRES_PASSWORD='PW-EXTERNAL'\n")
    plan["s3"]["env_file"] = str(tmp_path / "seaweedfs.env")
    for entry in plan["parts"].values():
        entry["external"]["env_file"] = str(tmp_path / ("seaweedfs.env" if "endpoint" in entry["external"]
                                                        else "postgres.env"))
    plan["data_dir"] = str(tmp_path / "data")
    host = Host(plan)
    recorder = Recorder()
    monkeypatch.setattr(host, "run", recorder)
    monkeypatch.setattr(parts, "LOCK_FILE", str(tmp_path / "part.lock"))
    monkeypatch.setattr(backup, "LOCK_FILE", str(tmp_path / "backup.lock"))
    return host, recorder


def test_objects_are_synced_from_seaweedfs_to_the_external_store_with_keys_by_environment(tmp_path, monkeypatch):
    host, recorder = host_for(tmp_path, monkeypatch, "objects")
    result = parts.copy(host, "objects", "external")
    assert result["buckets"] == ["data", "mlflow-artifacts", "labelstudio", "airflow-logs", "model-logs"]
    syncs = [(argv, env) for argv, env in recorder.calls if "sync" in argv]
    assert len(syncs) == 5
    argv, env = syncs[0]
    sync = argv[argv.index("rclone/rclone:1.60.1") + 1:]
    assert sync[:3] == ["sync", "src:data", "dst:acme-data"]
    assert "--backup-dir" in sync and sync[sync.index("--backup-dir") + 1].startswith("dst:acme-mlox-before-restore/")
    assert env["RCLONE_CONFIG_SRC_ENDPOINT"] == "http://seaweedfs:8333"
    assert env["RCLONE_CONFIG_DST_ENDPOINT"] == "https://s3.provider.example"
    assert env["RCLONE_CONFIG_DST_REGION"] == "eu-1"
    assert (env["RCLONE_CONFIG_SRC_ACCESS_KEY_ID"], env["RCLONE_CONFIG_DST_SECRET_ACCESS_KEY"]) == ("AK-LOCAL", "SK-EXTERNAL")
    assert env["RCLONE_CA_CERT"] == "/mlox-store-ca.pem"
    assert "/opt/mlox/bundle/seaweedfs/external-ca.pem:/mlox-store-ca.pem:ro" in argv
    for argv, _ in recorder.calls:  # values only in the environment, never on a command line
        assert not any(secret in " ".join(argv) for secret in ("AK-LOCAL", "SK-LOCAL", "AK-EXTERNAL", "SK-EXTERNAL"))


def test_after_the_cutover_a_move_home_copies_from_the_external_store(tmp_path, monkeypatch):
    host, recorder = host_for(tmp_path, monkeypatch, "objects", to="local", state="copying")
    parts.copy(host, "objects", "local")
    argv, env = next((a, e) for a, e in recorder.calls if "sync" in a)
    assert argv[argv.index("sync") + 1: argv.index("sync") + 3] == ["src:acme-data", "dst:data"]
    assert env["RCLONE_CONFIG_SRC_ENDPOINT"] == "https://s3.provider.example"


def test_a_verb_toward_the_side_in_use_is_refused(tmp_path, monkeypatch):
    host, _ = host_for(tmp_path, monkeypatch, "objects", state="cutover")
    with pytest.raises(DataError, match="the services already use the external objects: nothing to copy"):
        parts.copy(host, "objects", "external")


def test_the_external_postgres_is_reached_from_a_helper_with_the_password_by_environment(tmp_path, monkeypatch):
    host, recorder = host_for(tmp_path, monkeypatch, "postgres")
    captured, prepared = [], []
    monkeypatch.setattr(parts.postgres, "capture", lambda h, db, dest: captured.append((h.postgres_argv(["x"]), db)) or {})
    monkeypatch.setattr(parts.postgres, "prepare", lambda h, db, dump, m: prepared.append(
        (h.postgres_argv(["x"]), db, h.plan["postgres"]["superuser"], h.plan["postgres"]["admin_database"])))
    monkeypatch.setattr(parts.postgres, "swap", lambda h, db, m: {"tables": 0, "rows": 0})
    result = parts.copy(host, "postgres", "external")
    assert sorted(result["databases"]) == ["airflow", "data", "feast", "labelstudio", "mlflow"]
    assert captured[0][0][-4:] == ["exec", "-T", "postgres", "x"]  # the dump: the server's own container
    assert prepared[0][0] == ["docker", "exec", "-i", parts.HELPER, "x"]
    assert prepared[0][2:] == ("doadmin", "defaultdb")
    start = next((argv, env) for argv, env in recorder.calls if argv[:3] == ["docker", "run", "-d"])
    assert start[1]["PGPASSWORD"] == "PW-EXTERNAL" and start[1]["PGSSLMODE"] == "verify-full"
    assert start[1]["PGHOST"] == "db.provider.example" and start[1]["PGPORT"] == "25060"
    assert "postgres:15.18-bookworm" in start[0]
    assert not any("PW-EXTERNAL" in " ".join(argv) for argv, _ in recorder.calls)
    assert recorder.calls[-1][0] == ["docker", "rm", "-f", parts.HELPER]  # the helper is gone afterwards


def test_a_freeze_stops_the_writers_of_that_part_only(tmp_path, monkeypatch):
    host, recorder = host_for(tmp_path, monkeypatch, "postgres")
    monkeypatch.setattr(parts.move, "_maintenance", lambda h, on: None)
    stopped = []
    monkeypatch.setattr(host, "compose_stop", stopped.extend)
    parts.freeze(host, "postgres")
    assert "feast" in stopped and "mlflow" in stopped and "airflow-scheduler" in stopped
    assert "jupyter" not in stopped and "caddy" not in stopped and "postgres" not in stopped
    stopped.clear()
    parts.freeze(host, "objects")
    assert "feast" not in stopped and "mlflow" in stopped and "serving" in stopped  # serving writes model-logs


def test_a_part_without_external_settings_is_named(tmp_path, monkeypatch):
    host, _ = host_for(tmp_path, monkeypatch, "objects")
    host.plan = {**host.plan, "parts": {}}
    with pytest.raises(DataError, match="no external objects configured"):
        parts.run_verb(host, "part-copy", argparse.Namespace(part="objects", to="external"))
