"""Redis: the key-value store behind Feast's online store (and any service that needs a cache).

Internal only: no proxy route; services reach it as ``redis:6379`` on the Compose network
with a generated password, and a user's SSH tunnel at ``127.0.0.1:16379`` on the server's
loopback (Feast's online store from outside the stack). The password reaches Redis through
a config file written inside the container at start from the env file (mode 0600 in
``/tmp``), so it is never in a command line or in the bundle. Persistent: an
append-only file plus snapshots on the data volume, so the online store survives a
restart or reboot without a new ``feast materialize``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlox_iac.components.services.base import (
    HOURS_PER_MONTH, Context, Data, Managed, Service, ServiceComponent, ServiceSettings, hc, limits,
)

if TYPE_CHECKING:
    import pulumi

NAME = "redis"
IMAGE = "redis:7.0.15-bookworm"
MEMORY_MB = 128
PORT = 6379
TUNNEL_PORT = 16379  # on the server's loopback only: the end of a user's SSH tunnel
# Redis evicts nothing: a full online store is an error the user sees, not silent data loss.
MAXMEMORY_MB = MEMORY_MB - 32

# The config file, built from the env file when the container starts (as root, like the
# upstream image's entrypoint, to own the data directory); then Redis runs as user redis.
_START = (
    "umask 077; "
    "printf 'requirepass %s\\nappendonly yes\\ndir /data\\nport "
    f"{PORT}\\nbind 0.0.0.0\\nprotected-mode no\\nmaxmemory {MAXMEMORY_MB}mb\\nmaxmemory-policy noeviction\\n' "
    "\"$$REDIS_PASSWORD\" > /tmp/redis.conf && chown redis:redis /tmp/redis.conf /data && "
    "exec setpriv --reuid=redis --regid=redis --clear-groups redis-server /tmp/redis.conf"
)


class Settings(ServiceSettings):
    """Redis key-value store (Feast's online store); internal only."""


def url(ctx: Context) -> str:
    """Address of Redis on the Compose network (the password comes from the env file)."""
    return f"{NAME}:{PORT}"


def compose(ctx: Context) -> dict:
    return {
        "services": {
            "redis": {
                "image": IMAGE,
                "restart": "unless-stopped",
                "env_file": ctx.env_files(NAME),
                "entrypoint": ["/bin/sh", "-c", _START],
                "volumes": ["redis-data:/data"],
                "ports": [f"127.0.0.1:{TUNNEL_PORT}:{PORT}"],
                # redis-cli reads the password from REDISCLI_AUTH, never from its arguments.
                "healthcheck": hc(["CMD", "sh", "-c", "REDISCLI_AUTH=\"$$REDIS_PASSWORD\" redis-cli ping | grep -q PONG"],
                                  start_period="5s"),
                "deploy": limits(MEMORY_MB),
            },
        },
        "volumes": {"redis-data": ctx.volume("redis-data")},
    }


def routes(ctx: Context) -> list:
    return []  # internal only


def files(ctx: Context) -> dict[str, str]:
    return {}


def data(ctx: Context) -> Data:
    # The online store can be rebuilt by `feast materialize`, but a restore should not need that.
    return Data(volumes=("redis-data",))


READ_ON = "2026-12-06"  # when the managed equivalents' prices below were read


def managed(ctx: Context) -> tuple[Managed, ...]:
    """Managed Redis, smallest node."""
    return (
        Managed(NAME, "Amazon ElastiCache for Redis OSS, one cache.t4g.micro node", "USD",
                round(0.016 * HOURS_PER_MONTH, 2), "https://aws.amazon.com/elasticache/pricing/", READ_ON,
                "730 h × USD 0.016/h, the us-east-1 rate as remembered, not confirmed on the pricing page"),
        Managed(NAME, "Google Memorystore for Redis, Basic tier, 1 GB", "USD", round(0.049 * HOURS_PER_MONTH, 2),
                "https://cloud.google.com/memorystore/docs/redis/pricing", READ_ON,
                "730 h × USD 0.049 per GB-hour (M1), as remembered, not confirmed on the pricing page"),
    )


class Redis(ServiceComponent):
    """The Redis service: its generated password and env file."""

    password_value: pulumi.Output[str]

    def __init__(self, name: str, ctx: Context, server, deps: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:service:Redis", name, {}, opts)
        self._setup(name, server)
        self.password_value = self.password("password").result
        self.write_env(NAME, {"REDIS_PASSWORD": self.password_value}, [NAME])
        self.register_outputs({})


SERVICE = Service(
    name=NAME, image=IMAGE, memory_mb=MEMORY_MB, requires=(), settings=Settings,
    compose=compose, routes=routes, files=files, data=data, component=Redis, managed=managed,
)
