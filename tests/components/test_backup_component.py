"""The backup component under mocks: its password, env file, schedule, and outputs."""

from __future__ import annotations

from conftest import settings
from mlox_iac.plan import is_secret, unwrap

BACKUP = {"repository": "s3:https://fsn1.your-objectstorage.com/team-backups/prod",
          "access_key_id": "AKIAEXAMPLE", "secret_access_key": "s3cr3t"}


def named(resources):
    return {r.name: r for r in resources}


def test_backup_resources_and_secret_env_file(record):
    resources, outputs = record(settings(backup=BACKUP))
    by_name = named(resources)
    assert by_name["main-backup"].type == "mlox:server:Backup"
    parent = by_name["main-backup"].urn
    assert sorted(r.name for r in resources if r.parent == parent) == [
        "main-backup-env", "main-backup-password", "main-backup-schedule"]
    env = by_name["main-backup-env"]
    assert is_secret(env.inputs["stdin"])
    lines = dict(line.split("=", 1) for line in unwrap(env.inputs["stdin"]).splitlines())
    assert sorted(lines) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RESTIC_PASSWORD", "RESTIC_REPOSITORY"]
    assert lines["AWS_SECRET_ACCESS_KEY"] == "'s3cr3t'"
    for resource in resources:  # the keys travel only on stdin
        assert "s3cr3t" not in str(unwrap(resource.inputs.get("create", ""))), resource.name
    password = unwrap(outputs["backup_password"])
    assert is_secret(outputs["backup_password"]) and lines["RESTIC_PASSWORD"] == f"'{password}'"
    assert outputs["backup_repository"] == BACKUP["repository"] and outputs["backup_schedule"] == "daily"
    schedule = unwrap(by_name["main-backup-schedule"].inputs["create"])
    assert "systemctl enable mlox-backup.timer" in schedule and "restic/restic:0.19.1" in schedule
    assert "disable --now mlox-backup.timer" in unwrap(by_name["main-backup-schedule"].inputs["delete"])


def test_no_backup_block_no_backup_resources(record):
    resources, outputs = record(settings())
    assert not [r for r in resources if "backup" in r.name]
    assert "backup_password" not in outputs


def test_local_repository_has_no_s3_keys(record):
    resources, _ = record(settings(backup={"repository": "local:/srv/mlox-backups"}))
    content = unwrap(named(resources)["main-backup-env"].inputs["stdin"])
    assert sorted(line.split("=", 1)[0] for line in content.splitlines()) == ["RESTIC_PASSWORD", "RESTIC_REPOSITORY"]
