"""The backup part of the bundle: the plan the server runs by, the data modules, systemd units.

Pure: the same config gives byte-identical files, and none holds a secret (the repository's
password and keys reach the server in ``/opt/mlox/secrets/backup.env``, written from stdin).

- ``backup/plan.json``: what to keep, from every enabled service's ``Data`` declaration, and
  which containers write it (stopped during a restore); how to reach Postgres, the object
  store and the repository; schedule, retention and checks.
- ``backup/mlox_data/*.py``: the modules of ``mlox_iac/data`` as they are (standard library only).
- ``backup/mlox-backup.service`` and ``.timer``: the schedule, on the server itself.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from mlox_iac.components.services.base import BUNDLE_DIR, COMPOSE_PROJECT, Context
from mlox_iac.components.services.registry import SERVICES

RESTIC_IMAGE = "restic/restic:0.19.1"
RCLONE_IMAGE = "rclone/rclone:1.60.1"
IMAGES = (RESTIC_IMAGE, RCLONE_IMAGE)
BACKUP_DIR = f"{BUNDLE_DIR}/backup"
ENV_NAME = "backup"  # /opt/mlox/secrets/backup.env
UNIT = "mlox-backup"
DEEP_CHECK_EVERY_S = 7 * 86400
_DATA_PACKAGE = Path(__file__).resolve().parent.parent / "data"


def writers(ctx: Context, compose: dict) -> dict[str, list[str]]:
    """Per service with data: the containers that write it (stopped while it is restored).

    A service's databases and buckets are written by its own containers, except where the
    service is the store itself (SeaweedFS' user buckets are written by users, from outside);
    a volume by every container that mounts it.
    """
    from mlox_iac.components.services import postgres, seaweedfs

    stores = {postgres.NAME, seaweedfs.NAME}
    out: dict[str, list[str]] = {}
    for name in ctx.config.enabled_services():
        service = SERVICES[name]
        data = service.data(ctx)
        found: set[str] = set()
        if (data.databases or data.buckets) and name not in stores:
            found |= set(service.compose(ctx).get("services", {}))
        for volume in data.volumes:
            for container, spec in compose["services"].items():
                if any(str(m).split(":", 1)[0] == volume for m in spec.get("volumes", [])):
                    found.add(container)
        out[name] = sorted(found)
    return out


def backup_plan(ctx: Context, compose: dict) -> dict:
    """What the server's backup and restore read (``backup/plan.json``)."""
    from mlox_iac.components.services import postgres, seaweedfs
    from mlox_iac.render.commands import COMPOSE

    settings = ctx.config.backup
    who = writers(ctx, compose)
    # Backups keep what the server holds: a part on an external store is the provider's to
    # protect (validate says so), and a server's own copy of it is not read while the services
    # use the external one.
    external_db, external_s3 = postgres.external(ctx) is not None, seaweedfs.external(ctx) is not None
    services = {}
    for name in ctx.config.enabled_services():
        data = SERVICES[name].data(ctx)
        databases = [] if external_db else list(data.databases)
        buckets = [] if external_s3 else list(data.buckets)
        if databases or buckets or data.volumes:
            services[name] = {"databases": databases, "buckets": buckets,
                              "volumes": list(data.volumes), "writers": who[name]}
    plan = {
        "format": 1,
        "stack": ctx.config.stack_name,
        "compose": shlex.split(COMPOSE),
        "network": f"{COMPOSE_PROJECT}_default",
        "data_dir": ctx.data_dir,
        "images": {"restic": RESTIC_IMAGE, "rclone": RCLONE_IMAGE},
        "postgres": {"service": postgres.NAME, "superuser": postgres.SUPERUSER, "provision": "postgres-provision"},
        "s3": {"endpoint": f"http://{seaweedfs.NAME}:{seaweedfs.S3_PORT}", "env_file": ctx.env_file(seaweedfs.NAME),
               "access_key_var": "S3_ACCESS_KEY", "secret_key_var": "S3_SECRET_KEY",
               "filer": {"service": seaweedfs.NAME, "port": seaweedfs.FILER_PORT, "root": seaweedfs.BUCKETS_DIR}},
        "services": services,
    }
    parts = parts_plan(ctx, who)
    if parts:
        plan["parts"] = parts
    if settings is None:  # the data tooling is shipped anyway: mlox-iac migrate uses it
        return plan
    plan["backup"] = {
        "env_file": ctx.env_file(ENV_NAME),
        "interval_s": settings.interval_s,
        "keep": settings.keep.model_dump(),
        "check_read_data": settings.check_read_data,
        "check_every_s": DEEP_CHECK_EVERY_S,
    }
    return plan


def parts_plan(ctx: Context, who: dict[str, list[str]]) -> dict:
    """What ``mlox-iac migrate --part`` moves: per part, every declared database or bucket, the
    containers that write them, and how to reach the external side (no secret: the keys and
    password are in the store's env file, under the variables named here)."""
    from mlox_iac.components.services import postgres, seaweedfs

    enabled = ctx.config.enabled_services()
    out: dict = {}
    store = ctx.config.service(seaweedfs.NAME).external
    if store is not None and seaweedfs.NAME in enabled:
        out["objects"] = {
            "buckets": seaweedfs.buckets(ctx),
            "writers": sorted({c for n in enabled if SERVICES[n].data(ctx).buckets for c in who[n]}),
            "external": {"endpoint": store.endpoint, "region": store.region, "bucket_prefix": store.bucket_prefix,
                         "env_file": ctx.env_file(seaweedfs.NAME),
                         "access_key_var": "EXTERNAL_S3_ACCESS_KEY", "secret_key_var": "EXTERNAL_S3_SECRET_KEY",
                         "ca": f"{BUNDLE_DIR}/{seaweedfs.CA_FILE}" if store.ca else None},
            "uses": "external" if seaweedfs.external(ctx) is not None else "local",
        }
    server = ctx.config.service(postgres.NAME).external
    if server is not None and postgres.NAME in enabled:
        out["postgres"] = {
            "databases": postgres.databases(ctx),
            "image": postgres.IMAGE,  # the helper that reaches the external server: the same client tools
            "writers": sorted({c for n in enabled if SERVICES[n].data(ctx).databases for c in who[n]}),
            "external": {"host": server.host, "port": server.port, "user": server.admin_user,
                         "database": server.admin_database, "sslmode": server.sslmode,
                         "env_file": ctx.env_file(postgres.NAME), "password_var": "EXTERNAL_POSTGRES_PASSWORD",
                         "ca": f"{BUNDLE_DIR}/{postgres.CA_FILE}"},
            "uses": "external" if postgres.external(ctx) is not None else "local",
        }
    return out


def systemd_units(ctx: Context) -> dict[str, str]:
    settings = ctx.config.backup
    assert settings is not None
    delay = min(900, settings.interval_s // 10) if settings.interval_s >= 3600 else 0
    service = (
        "[Unit]\n"
        "Description=mlox-iac backup of the stack's data (restic)\n"
        "After=docker.service network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"WorkingDirectory={BACKUP_DIR}\n"
        f"ExecStart=/usr/bin/python3 -m mlox_data backup\n"
        "Nice=10\n"
        "IOSchedulingClass=best-effort\n"
        "IOSchedulingPriority=7\n"
    )
    timer = (
        "[Unit]\n"
        "Description=Scheduled mlox-iac backup\n\n"
        "[Timer]\n"
        f"OnCalendar={settings.on_calendar}\n"
        "Persistent=true\n"
        f"RandomizedDelaySec={delay}\n"
        "AccuracySec=1s\n\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {f"backup/{UNIT}.service": service, f"backup/{UNIT}.timer": timer}


def backup_files(ctx: Context, compose: dict) -> dict[str, str]:
    """Every backup file of the bundle: the data tooling when the stack backs up or is being
    moved, whole or a part (``mlox-iac migrate`` uses the same verbs), the schedule only when it backs up."""
    if ctx.config.backup is None and ctx.config.migration is None and ctx.config.part_move is None:
        return {}
    files = {"backup/plan.json": json.dumps(backup_plan(ctx, compose), indent=2, sort_keys=True) + "\n"}
    for module in sorted(_DATA_PACKAGE.glob("*.py")):
        files[f"backup/mlox_data/{module.name}"] = module.read_text()
    if ctx.config.backup is not None:
        files.update(systemd_units(ctx))
    return files
