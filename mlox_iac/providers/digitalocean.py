"""DigitalOcean (pulumi-digitalocean): SSH keys, droplet, firewall, data volume, tags.

Token: ``pulumi config set --secret digitalocean:token <token>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlox_iac.providers import DeployKeys, Machine, Size, one_of, ssh_rules

if TYPE_CHECKING:
    import pulumi

    from mlox_iac.config.model import StackConfig

# Droplet sizes: RAM, vCPUs, list price per month in USD (the same in every region).
# Source: https://www.digitalocean.com/pricing/droplets. This machine cannot reach it: the
# figures are DigitalOcean's 2022-07-01 prices (its repricing table, transcribed in
# gist.github.com/colinwilson/cd31bde012f6727b24b2fc4ebee749c0: Basic +20 %, General Purpose
# and Memory-Optimized +5 % over the 2020 API prices $60 and $80), which a transcription of the
# pricing page read on 2026-09-20 still matches ("Droplets starting at $4/month").
# Live: `mlox-iac cost --live` reads /v2/sizes.
PRICE_SOURCE = "https://www.digitalocean.com/pricing/droplets"
PRICES_READ_ON = "2026-09-20"
CURRENCY = "USD"
SIZES = {
    "s-1vcpu-1gb": Size(1024, 1, 6.0), "s-1vcpu-2gb": Size(2048, 1, 12.0), "s-2vcpu-2gb": Size(2048, 2, 18.0),
    "s-2vcpu-4gb": Size(4096, 2, 24.0), "s-4vcpu-8gb": Size(8192, 4, 48.0), "s-8vcpu-16gb": Size(16384, 8, 96.0),
    "g-2vcpu-8gb": Size(8192, 2, 63.0), "m-2vcpu-16gb": Size(16384, 2, 84.0),
}
# Volumes per GiB and month (https://www.digitalocean.com/pricing/volumes); a droplet's public
# IPv4 address is included in its price.
VOLUME_GB_MONTHLY = 0.10
IPV4_MONTHLY = 0.0
REGIONS = ("nyc1", "nyc3", "sfo2", "sfo3", "ams3", "sgp1", "lon1", "fra1", "tor1", "blr1", "syd1")

SIZE_FIELD = "size"  # the setting that decides the RAM


class Settings(BaseModel):
    """The ``mlox:digitalocean`` block."""

    model_config = ConfigDict(extra="forbid")

    region: Literal[REGIONS] = Field("fra1", description="DigitalOcean region slug")  # type: ignore[valid-type]
    size: str = Field("s-2vcpu-4gb", description="Droplet size slug")
    image: str = Field("debian-12-x64", description="Droplet image slug")

    @field_validator("size")
    @classmethod
    def _known_size(cls, value: str) -> str:
        return one_of(value, SIZES, "droplet size")


def memory_mb(settings: Settings) -> int:
    return SIZES[settings.size].memory_mb


def sizes(settings: Settings) -> dict[str, Size]:
    """The droplet sizes (every region sells the same)."""
    return SIZES


def create_machine(name: str, config: "StackConfig", keys: DeployKeys, opts: "pulumi.ResourceOptions") -> Machine:
    import pulumi
    import pulumi_digitalocean as do
    from pulumi_command import remote

    settings: Settings = config.digitalocean  # type: ignore[assignment]
    tags = ["mlox-iac", f"mlox-{config.stack_name}"]
    ssh_keys = [
        do.SshKey(f"{name}-key-{index}", name=f"mlox-{config.stack_name}-{name}-{index}", public_key=public_key, opts=opts)
        for index, public_key in enumerate(keys.public_keys)
    ]
    droplet = do.Droplet(
        f"{name}-server",
        image=settings.image,
        region=settings.region,
        size=settings.size,
        ssh_keys=[key.fingerprint for key in ssh_keys],
        tags=tags,
        opts=opts,
    )
    firewall = do.Firewall(
        f"{name}-firewall",
        droplet_ids=[droplet.id.apply(int)],
        inbound_rules=[
            do.FirewallInboundRuleArgs(protocol="tcp", port_range=str(port), source_addresses=sources)
            for port, sources in ssh_rules(config.ssh.admin_cidrs)
        ],
        # A DigitalOcean firewall without outbound rules blocks all egress (apt, ACME).
        outbound_rules=[
            do.FirewallOutboundRuleArgs(protocol=protocol, port_range=ports, destination_addresses=["0.0.0.0/0", "::/0"])
            for protocol, ports in (("tcp", "1-65535"), ("udp", "1-65535"), ("icmp", None))
        ],
        opts=opts,
    )
    volume_name = f"mlox-{config.stack_name}-{name}-data"
    volume = do.Volume(
        f"{name}-data",
        name=volume_name,
        region=settings.region,
        size=config.volume_size_gb,
        tags=tags,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(protect=config.keep_data_on_destroy)),
    )
    attachment = do.VolumeAttachment(
        f"{name}-data-attachment", droplet_id=droplet.id.apply(int), volume_id=volume.id, opts=opts
    )
    connection = remote.ConnectionArgs(host=droplet.ipv4_address, user="root", private_key=keys.private_key)
    return Machine(
        public_address=droplet.ipv4_address,
        connection=connection,
        user="root",
        data_device=f"/dev/disk/by-id/scsi-0DO_Volume_{volume_name}",
        cloud_init=True,
        ready=[attachment, firewall],
    )
