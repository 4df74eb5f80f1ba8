"""On-premises (pulumi-command only): an existing Debian/Ubuntu host reached over SSH.

No cloud resources are created. The private key pulumi-command connects with is a
secret config value: ``pulumi config set --secret --path 'mlox:onprem.private_key' < ~/.ssh/id_ed25519``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlox_iac.providers import DeployKeys, Machine

if TYPE_CHECKING:
    import pulumi

    from mlox_iac.config.model import StackConfig

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

SIZE_FIELD = "memory_mb"  # the setting that decides the RAM


class Settings(BaseModel):
    """The ``mlox:onprem`` block."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="Address or DNS name of the host")
    user: str = Field("root", description="SSH user: root, or a user with passwordless sudo")
    port: int = Field(22, ge=1, le=65535, description="SSH port")
    private_key: str = Field(min_length=1, description="SSH private key (set as a secret)")
    memory_mb: int = Field(4096, ge=512, description="RAM of the host in MiB, for the memory budget")
    data_device: str | None = Field(None, description="Block device for the data volume, e.g. /dev/sdb; default: a directory on the root disk")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        import ipaddress

        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.match(value):
                raise ValueError(f"{value!r} is not an IP address or host name") from None
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not _USER.match(value):
            raise ValueError(f"{value!r} is not a valid user name (allowed: lowercase letters, digits, _ and -)")
        return value

    @field_validator("data_device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/dev/"):
            raise ValueError(f"{value!r} is not a block device path (allowed: a path under /dev/)")
        return value


def memory_mb(settings: Settings) -> int:
    return settings.memory_mb


def create_machine(name: str, config: "StackConfig", keys: DeployKeys, opts: "pulumi.ResourceOptions") -> Machine:
    import pulumi
    from pulumi_command import remote

    settings: Settings = config.onprem  # type: ignore[assignment]
    connection = remote.ConnectionArgs(
        host=settings.host,
        port=settings.port,
        user=settings.user,
        private_key=pulumi.Output.secret(settings.private_key),
    )
    return Machine(
        public_address=pulumi.Output.from_input(settings.host),
        connection=connection,
        user=settings.user,
        data_device=settings.data_device,
        cloud_init=False,
    )
