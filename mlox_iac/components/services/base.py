"""What every service file builds on: its settings base, routes, and the shared context.

A service is one module in this package that defines, top to bottom:

- ``NAME``, ``IMAGE`` (pinned), ``MEMORY_MB`` (its compose memory limit), ``REQUIRES``;
- ``Settings``: its ``mlox:services.<name>`` block;
- ``compose(ctx)``: its part of the server's Compose project (no secrets, only ``env_file`` references);
- ``routes(ctx)``: its proxy routes;
- ``files(ctx)``: further non-secret files it ships in the bundle;
- ``BACKUP``: the named volumes that hold its data (what a migration moves);
- a ``ComponentResource`` that generates its credentials and writes its env files.

Adding a service = one such file + one line in ``registry.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from mlox_iac.config.model import StackConfig

# Fixed paths on every server.
MLOX_DIR = "/opt/mlox"
BUNDLE_DIR = f"{MLOX_DIR}/bundle"
SECRETS_DIR = f"{MLOX_DIR}/secrets"
DATA_DIR = "/mnt/mlox-data"
COMPOSE_PROJECT = "mlox"


class ServiceSettings(BaseModel):
    """Settings every service has."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Deploy this service")


@dataclass(frozen=True)
class Route:
    """One way in through the reverse proxy.

    With a domain the route is ``https://<name>.<domain>``; without one it is the path
    ``https://<address>/<name>/`` (or the catch-all, for the S3 API whose request
    signatures cover the path and so cannot live under a prefix).
    """

    name: str
    upstream: str  # compose service:port
    auth: Literal["basic", "own"]  # basic: Caddy basic auth, generated password; own: the service authenticates
    catch_all: bool = False
    strip_prefix: bool = True


@dataclass(frozen=True)
class Context:
    """What a service's pure functions may read: the validated config and fixed paths."""

    config: "StackConfig"

    @property
    def data_dir(self) -> str:
        return DATA_DIR

    def env_file(self, name: str) -> str:
        return f"{SECRETS_DIR}/{name}.env"

    def env_files(self, name: str) -> list[dict]:
        """A compose ``env_file`` entry for a service's secrets.

        Not required at load time: while a change is applied, a command for one service
        loads the whole project before every other service's env file is written.
        """
        return [{"path": self.env_file(name), "required": False}]

    def volume(self, name: str) -> dict:
        """A named volume whose data lives on the server's data volume."""
        return {
            "driver": "local",
            "driver_opts": {"type": "none", "o": "bind", "device": f"{DATA_DIR}/volumes/{name}"},
        }

    def public_url(self, route: Route, address: str) -> str:
        """The URL a user reaches a route at."""
        domain = self.config.domain
        if domain:
            return f"https://{route.name}.{domain}"
        return f"https://{address}" + ("" if route.catch_all else f"/{route.name}")


def hc(test: list[str], start_period: str = "20s") -> dict:
    """A compose healthcheck with the project's defaults."""
    return {"test": test, "interval": "10s", "timeout": "5s", "retries": 12, "start_period": start_period}


def provisioner(script: str) -> dict:
    """Compose settings of a provisioning step: run ``script`` once, then stay up, idle and healthy.

    A container that exits is a failure for ``docker compose up --wait``; one that idles
    after its work lets ``--wait`` and ``depends_on: service_healthy`` mean "provisioned".
    It runs again whenever it is recreated (its env file or script changed) or restarted.
    """
    idle = "touch /tmp/mlox-provisioned; trap 'exit 0' TERM INT; sleep 2147483647 & wait"
    return {
        "restart": "unless-stopped",
        "entrypoint": ["/bin/sh", "-c", f"{script} || exit 1; {idle}"],
        "healthcheck": {"test": ["CMD", "test", "-f", "/tmp/mlox-provisioned"], "interval": "3s",
                        "timeout": "3s", "retries": 100, "start_period": "5s"},
    }


def limits(memory_mb: int) -> dict:
    """Compose deploy limits for a memory budget."""
    return {"resources": {"limits": {"memory": f"{memory_mb}M"}}}


def env_line(key: str, value: str) -> str:
    """One env-file line. Single quotes keep Compose from interpolating ``$`` (bcrypt hashes)."""
    if "'" in value or "\n" in value:
        raise ValueError(f"env value for {key} contains a quote or newline")
    return f"{key}='{value}'\n"


def render_env(values: dict[str, str]) -> str:
    return "".join(env_line(k, v) for k, v in sorted(values.items()))


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class ServiceComponent:
    """Mixin for service components: generated passwords and the env-file writer.

    Subclasses are ``pulumi.ComponentResource``s; they call :meth:`password` for each
    credential and :meth:`write_env` once with their env file's content.
    """

    def _setup(self, name: str, server) -> None:
        import pulumi

        self._prefix = name
        self._server = server
        self._child = pulumi.ResourceOptions(parent=self)  # type: ignore[arg-type]
        self.env_command = None

    def password(self, key: str, length: int = 32):
        """A generated credential (pulumi-random, alphanumeric so it is safe in URLs and env files)."""
        import pulumi_random as random

        return random.RandomPassword(f"{self._prefix}-{key}", length=length, special=False, opts=self._child)

    def write_env(self, service: str, values: dict, compose_services: list[str], after: list = ()):
        """Write ``/opt/mlox/secrets/<service>.env`` (0600) with content sent as a secret on stdin.

        ``after``: the services whose credentials this one uses; their env files (and the
        containers that check them, such as Postgres roles) change first.
        """
        import pulumi
        from pulumi_command import remote

        from mlox_iac.render import commands

        keys = sorted(values)
        content = pulumi.Output.secret(
            pulumi.Output.all(*[values[k] for k in keys]).apply(lambda vs: render_env(dict(zip(keys, vs))))
        )
        user = self._server.user
        self.env_command = remote.Command(
            f"{self._prefix}-env",
            connection=self._server.connection,
            create=commands.as_root(commands.write_env_file(service, compose_services), user),
            delete=commands.as_root(commands.remove_env_file(service), user),
            stdin=content,
            opts=pulumi.ResourceOptions(
                parent=self,  # type: ignore[arg-type]
                depends_on=[self._server.ready, *[d.env_command for d in after if d.env_command is not None]],
            ),
        )
        return self.env_command
