"""Hetzner Cloud (pulumi-hcloud): SSH key, firewall, server, data volume.

Token: ``pulumi config set --secret hcloud:token <token>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlox_iac.providers import DeployKeys, Machine, one_of, ssh_rules

if TYPE_CHECKING:
    import pulumi

    from mlox_iac.config.model import StackConfig

# Server type -> RAM in MiB (shared vCPU types; https://www.hetzner.com/cloud).
SIZES = {
    "cx22": 4096, "cx32": 8192, "cx42": 16384, "cx52": 32768,
    "cpx11": 2048, "cpx21": 4096, "cpx31": 8192, "cpx41": 16384, "cpx51": 32768,
    "cax11": 4096, "cax21": 8192, "cax31": 16384, "cax41": 32768,
}
LOCATIONS = ("fsn1", "nbg1", "hel1", "ash", "hil", "sin")

SIZE_FIELD = "server_type"  # the setting that decides the RAM


class Settings(BaseModel):
    """The ``mlox:hetzner`` block."""

    model_config = ConfigDict(extra="forbid")

    location: Literal[LOCATIONS] = Field("fsn1", description="Hetzner location")  # type: ignore[valid-type]
    server_type: str = Field("cx22", description="Hetzner server type, e.g. cx22 (4 GB RAM)")
    image: str = Field("debian-12", description="Hetzner image name")

    @field_validator("server_type")
    @classmethod
    def _known_size(cls, value: str) -> str:
        return one_of(value, SIZES, "server type")


def memory_mb(settings: Settings) -> int:
    return SIZES[settings.server_type]


def create_machine(name: str, config: "StackConfig", keys: DeployKeys, opts: "pulumi.ResourceOptions") -> Machine:
    import pulumi
    import pulumi_hcloud as hcloud
    from pulumi_command import remote

    settings: Settings = config.hetzner  # type: ignore[assignment]
    labels = {"managed-by": "mlox-iac", "mlox-stack": config.stack_name}
    ssh_keys = [
        hcloud.SshKey(f"{name}-key-{index}", public_key=public_key, labels=labels, opts=opts)
        for index, public_key in enumerate(keys.public_keys)
    ]
    firewall = hcloud.Firewall(
        f"{name}-firewall",
        labels=labels,
        rules=[
            hcloud.FirewallRuleArgs(direction="in", protocol="tcp", port=str(port), source_ips=sources)
            for port, sources in ssh_rules(config.ssh.admin_cidrs)
        ],
        opts=opts,
    )
    server = hcloud.Server(
        f"{name}-server",
        server_type=settings.server_type,
        image=settings.image,
        location=settings.location,
        ssh_keys=[key.id for key in ssh_keys],
        firewall_ids=[firewall.id.apply(int)],
        labels=labels,
        opts=opts,
    )
    volume = hcloud.Volume(
        f"{name}-data",
        size=config.volume_size_gb,
        location=settings.location,
        labels=labels,
        delete_protection=config.keep_data_on_destroy,
        opts=opts,
    )
    attachment = hcloud.VolumeAttachment(
        f"{name}-data-attachment",
        server_id=server.id.apply(int),
        volume_id=volume.id.apply(int),
        automount=False,
        opts=opts,
    )
    connection = remote.ConnectionArgs(
        host=server.ipv4_address, user="root", private_key=keys.private_key
    )
    return Machine(
        public_address=server.ipv4_address,
        connection=connection,
        user="root",
        data_device=pulumi.Output.concat("/dev/disk/by-id/scsi-0HC_Volume_", volume.id),
        cloud_init=True,
        ready=[attachment, firewall],
    )
