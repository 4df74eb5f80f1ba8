"""The backup component: the repository password, its env file, and the schedule on the server.

What is backed up is not decided here: the bundle's ``backup/plan.json`` is rendered from
every service's ``Data`` declaration (``mlox_iac/render/backup.py``), and the server runs
``mlox_iac/data`` (shipped in the bundle) by a systemd timer. This component generates the
restic password (pulumi-random, a secret; exported as ``backup_password``: without it the
backups cannot be read), writes ``/opt/mlox/secrets/backup.env`` (0600, content on stdin:
repository, password, S3 keys), and installs the timer once the stack is up.
"""

from __future__ import annotations

import pulumi
from pulumi_command import remote

from mlox_iac.components.services.base import Context, ServiceComponent, per_server
from mlox_iac.render import commands
from mlox_iac.render.backup import BACKUP_DIR, ENV_NAME, IMAGES, UNIT


class Backup(pulumi.ComponentResource, ServiceComponent):
    """Scheduled restic backups of the stack's declared data to ``mlox:backup.repository``."""

    repository_password: pulumi.Output[str]

    def __init__(self, name: str, ctx: Context, server, bundle_hash: str, after: list,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:server:Backup", name, {}, opts)
        self._setup(name, [server])
        settings = ctx.config.backup
        assert settings is not None
        self.repository_password = self.password("password", length=48).result
        values: dict = {"RESTIC_REPOSITORY": settings.repository, "RESTIC_PASSWORD": self.repository_password}
        if settings.is_s3:
            values["AWS_ACCESS_KEY_ID"] = pulumi.Output.secret(settings.access_key_id)
            values["AWS_SECRET_ACCESS_KEY"] = pulumi.Output.secret(settings.secret_access_key)
        env = self.write_env(ENV_NAME, values, [])
        user = server.user
        self.schedule = remote.Command(
            per_server(f"{name}-schedule", server.name),
            connection=server.connection,
            create=commands.as_root(commands.backup_schedule(bundle_hash, list(IMAGES), UNIT, BACKUP_DIR), user),
            delete=commands.as_root(commands.backup_unschedule(UNIT), user),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[env[server.name], *after]),
        )
        self.register_outputs({"repository_password": self.repository_password})
