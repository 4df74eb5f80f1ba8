"""The bundle component: ships the rendered Compose project and brings it up.

The files are written to a local build directory and copied with
``remote.CopyToRemote``; ``docker compose up --wait`` re-runs only when the bundle's
hash changes. The bundle holds no secret (env files are written by each service).
Deleting the component (or the stack) runs ``docker compose down``; the data stays.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
from pulumi_command import remote

from mlox_iac.components.services.base import MLOX_DIR, Context
from mlox_iac.render import commands
from mlox_iac.render.bundle import bundle_hash, render_bundle, volume_names


def write_bundle(files: dict[str, str], directory: Path) -> Path:
    """Write the bundle's files under ``directory`` (replacing what was there)."""
    import shutil

    if directory.exists():
        shutil.rmtree(directory)
    for rel, text in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


class Bundle(pulumi.ComponentResource):
    """Copy the bundle to the server, then (:meth:`apply`) bring it up with Docker Compose.

    Order of a change: bootstrap, bundle copy, the services' env files (each re-applies its
    own running containers, with the new bundle), then ``compose up`` for everything.
    """

    bundle_hash: str

    def __init__(self, name: str, ctx: Context, server, build_dir: Path,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:server:Bundle", name, {}, opts)
        files = render_bundle(ctx)
        self.bundle_hash = bundle_hash(files)
        local = write_bundle(files, build_dir / "bundle")
        user = server.user
        prepare = remote.Command(
            f"{name}-prepare",
            connection=server.connection,
            # The copy runs as the SSH user, so that user owns the directory it copies into.
            create=commands.as_root(f"install -d -m 755 -o {user} {MLOX_DIR}", user),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[server.ready]),
        )
        self.copy = remote.CopyToRemote(
            f"{name}-copy",
            connection=server.connection,
            source=pulumi.FileArchive(str(local)),
            remote_path=MLOX_DIR,
            # pulumi-command copies again on an update only when the source changed: a new
            # server (another address, or new host keys at the same one, as after a lost server
            # is replaced under the same state) must replace the copy to receive the bundle.
            triggers=[self.bundle_hash, server.public_address, server.host_keys],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[prepare]),
        )
        self._name, self._ctx, self._server = name, ctx, server

    def apply(self, env_commands: list) -> remote.Command:
        """``docker compose up --wait`` once the bundle and every env file are in place."""
        ctx, user = self._ctx, self._server.user
        self.up = remote.Command(
            f"{self._name}-compose-up",
            connection=self._server.connection,
            create=commands.as_root(commands.compose_up(self.bundle_hash, volume_names(ctx)), user),
            delete=commands.as_root(commands.compose_down(keep_data=ctx.config.keep_data_on_destroy), user),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.copy, *env_commands], delete_before_replace=True),
        )
        self.register_outputs({"bundle_hash": self.bundle_hash})
        return self.up
