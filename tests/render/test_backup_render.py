"""The backup part of the bundle: plan.json from the services' Data, units, shipped modules."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import settings
from mlox_iac.components.services.base import Context
from mlox_iac.config.loader import validate
from mlox_iac.render import commands
from mlox_iac.render.bundle import render_bundle

ROOT = Path(__file__).resolve().parents[2]
BACKUP = {"repository": "s3:https://fsn1.your-objectstorage.com/team-backups/prod",
          "access_key_id": "AKIAEXAMPLE", "secret_access_key": "s3cr3t-never-in-the-bundle"}


def ctx_for(raw: dict) -> Context:
    return Context(validate(raw, {"backup.access_key_id", "backup.secret_access_key"}, "test.yaml", "prod"))


def test_plan_lists_every_service_data_and_its_writers():
    files = render_bundle(ctx_for(settings(backup=BACKUP)))
    plan = json.loads(files["backup/plan.json"])
    assert plan["services"] == {
        # The team's database: written by users, from outside, like the user bucket.
        "postgres": {"databases": ["data"], "buckets": [], "volumes": [], "writers": []},
        "mlflow": {"databases": ["mlflow"], "buckets": ["mlflow-artifacts"], "volumes": [], "writers": ["mlflow"]},
        "seaweedfs": {"databases": [], "buckets": ["data"], "volumes": [], "writers": []},
        "caddy": {"databases": [], "buckets": [], "volumes": ["caddy-data"], "writers": ["caddy"]},
    }
    assert plan["stack"] == "prod"
    assert plan["images"] == {"restic": "restic/restic:0.19.1", "rclone": "rclone/rclone:1.60.1"}
    assert plan["backup"]["keep"] == {"last": 0, "hourly": 0, "daily": 7, "weekly": 4, "monthly": 6}
    assert plan["backup"]["interval_s"] == 86400 and plan["backup"]["env_file"] == "/opt/mlox/secrets/backup.env"


def test_user_buckets_and_disabled_services_follow_the_settings():
    raw = settings(backup=BACKUP, services={"mlflow": {"enabled": False}, "seaweedfs": {"buckets": ["raw", "features"]}})
    plan = json.loads(render_bundle(ctx_for(raw))["backup/plan.json"])
    assert sorted(plan["services"]) == ["caddy", "postgres", "seaweedfs"]
    assert plan["services"]["seaweedfs"]["buckets"] == ["raw", "features"]


def test_bundle_has_no_secret_and_ships_the_data_modules_unchanged():
    files = render_bundle(ctx_for(settings(backup=BACKUP)))
    assert not any(BACKUP["secret_access_key"] in text or BACKUP["access_key_id"] in text for text in files.values())
    for module in sorted((ROOT / "mlox_iac" / "data").glob("*.py")):
        assert files[f"backup/mlox_data/{module.name}"] == module.read_text()
    assert "OnCalendar=daily" in files["backup/mlox-backup.timer"]
    assert "ExecStart=/usr/bin/python3 -m mlox_data backup" in files["backup/mlox-backup.service"]


def test_short_schedules_become_calendar_steps_without_random_delay():
    files = render_bundle(ctx_for(settings(backup={**BACKUP, "schedule": "5m"})))
    timer = files["backup/mlox-backup.timer"]
    assert "OnCalendar=*:0/5" in timer and "RandomizedDelaySec=0" in timer


def test_without_backup_the_bundle_is_unchanged():
    files = render_bundle(ctx_for(settings()))
    assert not any(path.startswith("backup/") for path in files)


def test_backup_commands_pass_shellcheck(tmp_path):
    from test_render import _shellcheck

    scripts = {
        "schedule.sh": commands.backup_schedule("abc", ["restic/restic:0.19.1"], "mlox-backup", "/opt/mlox/bundle/backup"),
        "unschedule.sh": commands.backup_unschedule("mlox-backup"),
        "env.sh": commands.write_env_file("backup", []),
    }
    for name, body in scripts.items():
        _shellcheck("#!/bin/sh\n" + body + "\n", tmp_path, name, "sh")
    assert "compose" not in commands.write_env_file("backup", [])  # read by the host, re-applies no container
