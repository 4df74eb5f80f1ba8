"""Hetzner Cloud (pulumi-hcloud): SSH key, firewall, server, data volume.

Token: ``pulumi config set --secret hcloud:token <token>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlox_iac.providers import DeployKeys, FieldError, Machine, Size, one_of, ssh_rules

if TYPE_CHECKING:
    import pulumi

    from mlox_iac.config.model import StackConfig

# Server types sold today (shared vCPU): RAM, vCPUs, list price per month in EUR excl. VAT.
# Source: https://www.hetzner.com/cloud/ (the price table for new orders, after Hetzner's
# 2026-06-15 change), as read on 2026-09-04; this machine cannot reach hetzner.com, so the
# figures come from a public transcription of that page. Hetzner changed its prices three
# times between October 2025 and June 2026: `mlox-iac cost --live` reads today's from its API.
#
# cax* are arm64 (Ampere). They are allowed: every pinned image is published for arm64
# (postgres, caddy and chrislusf/seaweedfs are multi-arch; MLflow's release workflow
# push-images.yml builds ghcr.io/mlflow/mlflow for linux/amd64 and linux/arm64), and the
# provider resolves the image name (debian-12) for the server type's architecture
# (terraform-provider-hcloud, which pulumi-hcloud wraps: Image.GetForArchitecture). The
# end-to-end tests run amd64 stand-ins only, so arm64 is not exercised here.
PRICE_SOURCE = "https://www.hetzner.com/cloud/"
PRICES_READ_ON = "2026-09-04"
CURRENCY = "EUR"
EU_SIZES = {
    "cx23": Size(4096, 2, 5.99), "cx33": Size(8192, 4, 8.99), "cx43": Size(16384, 8, 16.49),
    "cx53": Size(32768, 16, 29.99),
    "cpx12": Size(2048, 1, 11.99), "cpx22": Size(4096, 2, 19.99), "cpx32": Size(8192, 4, 35.99),
    "cpx42": Size(16384, 8, 69.99), "cpx52": Size(24576, 12, 100.99), "cpx62": Size(32768, 16, 130.49),
    "cax11": Size(4096, 2, 6.49, "arm64"), "cax21": Size(8192, 4, 10.99, "arm64"),
    "cax31": Size(16384, 8, 21.49, "arm64"), "cax41": Size(32768, 16, 41.49, "arm64"),
}
# The US locations kept the previous CPX generation (same page, US prices in EUR). Singapore
# is not in that table: its lineup is taken to be the US one, its prices unknown (use --live).
US_SIZES = {
    "cpx11": Size(2048, 2, 17.99), "cpx21": Size(4096, 3, 32.49), "cpx31": Size(8192, 4, 62.99),
    "cpx41": Size(16384, 8, 120.99), "cpx51": Size(32768, 16, 238.49),
}
SG_SIZES = {name: Size(size.memory_mb, size.vcpus, None) for name, size in US_SIZES.items()}
LOCATION_SIZES = {"fsn1": EU_SIZES, "nbg1": EU_SIZES, "hel1": EU_SIZES, "ash": US_SIZES, "hil": US_SIZES, "sin": SG_SIZES}
LOCATIONS = tuple(LOCATION_SIZES)
# Deprecated in October 2025, not orderable in the EU since 2026-01-01 -> the current equivalent.
RETIRED = {
    "cx22": "cx23", "cx32": "cx33", "cx42": "cx43", "cx52": "cx53",
    "cpx11": "cpx12", "cpx21": "cpx22", "cpx31": "cpx32", "cpx41": "cpx42", "cpx51": "cpx62",
}
# Every size known anywhere (for RAM lookups).
SIZES = {**SG_SIZES, **US_SIZES, **EU_SIZES}
# Public IPv4 per month (a primary IP is billed on its own); volumes per GB and month.
IPV4_MONTHLY = 0.50
VOLUME_GB_MONTHLY = 0.0572  # EUR 0.044 until 2026-04-01, +30 % since (cloudtally.eu, reviewed 2026-04-18)

SIZE_FIELD = "server_type"  # the setting that decides the RAM


class Settings(BaseModel):
    """The ``mlox:hetzner`` block."""

    model_config = ConfigDict(extra="forbid")

    location: Literal[LOCATIONS] = Field("fsn1", description="Hetzner location")  # type: ignore[valid-type]
    server_type: str = Field("cx23", description="Hetzner server type, e.g. cx23 (4 GB RAM, 2 vCPUs)")
    image: str = Field("debian-12", description="Hetzner image name")

    @model_validator(mode="after")
    def _sold_here(self) -> "Settings":
        sizes = LOCATION_SIZES[self.location]
        if self.server_type in SIZES and self.server_type not in sizes and self.server_type not in RETIRED:
            raise FieldError("hetzner.server_type", f"{self.server_type!r} is not sold in {self.location} "
                             f"(allowed there: {', '.join(sizes)})")
        retired = RETIRED if any(name in sizes for name in RETIRED.values()) else {}
        try:
            one_of(self.server_type, sizes, "server type", retired)
        except ValueError as error:
            raise FieldError("hetzner.server_type", str(error)) from None
        return self


def memory_mb(settings: Settings) -> int:
    return SIZES[settings.server_type].memory_mb


def sizes(settings: Settings) -> dict[str, Size]:
    """The sizes orderable where this server lives."""
    return LOCATION_SIZES[settings.location]


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
