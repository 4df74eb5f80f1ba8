"""AWS (pulumi-aws): key pair, security group, instance, EBS data volume, Elastic IP.

Credentials come from the usual AWS sources (environment, profile); the region from
``pulumi config set aws:region eu-central-1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlox_iac.providers import DeployKeys, Machine, Size, one_of, ssh_rules

if TYPE_CHECKING:
    import pulumi

    from mlox_iac.config.model import StackConfig

# Instance types: RAM, vCPUs, on-demand price per month (730 hours) in USD, Linux, us-east-1;
# other regions cost more (eu-central-1 about 15 % more). Source:
# https://aws.amazon.com/ec2/pricing/on-demand/ (hourly: t3.small 0.0208, t3.medium 0.0416,
# t3.large 0.0832, t3.xlarge 0.1664, t4g.* 0.0168/0.0336/0.0672/0.1344, m6i.large 0.096,
# m7g.large 0.0816, m7i.large 0.1008). This machine cannot reach aws.amazon.com: the figures
# are the page's published rates, cross-checked on 2026-11-26 against a 2026 guide that quotes
# t3.large in us-east-1 at $0.0832/h (https://go-cloud.io/?p=10607).
# t4g/m7g are arm64 (Graviton): the pinned images are multi-arch (see providers/hetzner.py).
PRICE_SOURCE = "https://aws.amazon.com/ec2/pricing/on-demand/"
PRICES_READ_ON = "2026-11-26"
CURRENCY = "USD"
_HOURS = 730
SIZES = {
    "t3.small": Size(2048, 2, round(0.0208 * _HOURS, 2)), "t3.medium": Size(4096, 2, round(0.0416 * _HOURS, 2)),
    "t3.large": Size(8192, 2, round(0.0832 * _HOURS, 2)), "t3.xlarge": Size(16384, 4, round(0.1664 * _HOURS, 2)),
    "t4g.small": Size(2048, 2, round(0.0168 * _HOURS, 2), "arm64"),
    "t4g.medium": Size(4096, 2, round(0.0336 * _HOURS, 2), "arm64"),
    "t4g.large": Size(8192, 2, round(0.0672 * _HOURS, 2), "arm64"),
    "t4g.xlarge": Size(16384, 4, round(0.1344 * _HOURS, 2), "arm64"),
    "m6i.large": Size(8192, 2, round(0.096 * _HOURS, 2)), "m7i.large": Size(8192, 2, round(0.1008 * _HOURS, 2)),
    "m7g.large": Size(8192, 2, round(0.0816 * _HOURS, 2), "arm64"),
}
# gp3 volumes per GB and month (https://aws.amazon.com/ebs/pricing/); every public IPv4
# address, the Elastic IP included, $0.005 per hour since 2024-02-01 (https://aws.amazon.com/vpc/pricing/).
VOLUME_GB_MONTHLY = 0.08
IPV4_MONTHLY = round(0.005 * _HOURS, 2)
# Image family -> (owner account, AMI name pattern, login user). Looked up by query, never pinned.
IMAGES = {
    "debian-12": ("136693071363", "debian-12-{arch}-*", "admin"),
    "ubuntu-24.04": ("099720109477", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*", "ubuntu"),
}

SIZE_FIELD = "instance_type"  # the setting that decides the RAM


class Settings(BaseModel):
    """The ``mlox:aws`` block."""

    model_config = ConfigDict(extra="forbid")

    instance_type: str = Field("t3.medium", description="EC2 instance type")
    image: Literal[tuple(IMAGES)] = Field("debian-12", description="Image family, looked up by owner and name")  # type: ignore[valid-type]
    availability_zone: str | None = Field(None, description="Availability zone; default: the provider's choice")

    @field_validator("instance_type")
    @classmethod
    def _known_size(cls, value: str) -> str:
        return one_of(value, SIZES, "instance type")


def memory_mb(settings: Settings) -> int:
    return SIZES[settings.instance_type].memory_mb


def sizes(settings: Settings) -> dict[str, Size]:
    """The instance types in the table (prices are us-east-1's)."""
    return SIZES


def create_machine(name: str, config: "StackConfig", keys: DeployKeys, opts: "pulumi.ResourceOptions") -> Machine:
    import pulumi
    import pulumi_aws as aws
    from pulumi_command import remote

    settings: Settings = config.aws  # type: ignore[assignment]
    tags = {"managed-by": "mlox-iac", "mlox-stack": config.stack_name}
    owner, pattern, user = IMAGES[settings.image]
    arch = SIZES[settings.instance_type].arch
    ami = aws.ec2.get_ami_output(
        most_recent=True,
        owners=[owner],
        filters=[aws.ec2.GetAmiFilterArgs(name="name", values=[pattern.format(arch=arch)])],
        opts=pulumi.InvokeOptions(parent=opts.parent),
    )
    key_pair = aws.ec2.KeyPair(f"{name}-key", public_key=keys.public_keys[0], tags=tags, opts=opts)
    group = aws.ec2.SecurityGroup(
        f"{name}-firewall",
        description="mlox-iac: SSH from admin addresses, HTTP(S) from anywhere",
        ingress=[
            aws.ec2.SecurityGroupIngressArgs(
                protocol="tcp", from_port=port, to_port=port,
                cidr_blocks=[c for c in sources if ":" not in c],
                ipv6_cidr_blocks=[c for c in sources if ":" in c],
            )
            for port, sources in ssh_rules(config.ssh.admin_cidrs)
        ],
        egress=[aws.ec2.SecurityGroupEgressArgs(
            protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"], ipv6_cidr_blocks=["::/0"]
        )],
        tags=tags,
        opts=opts,
    )
    # The users' further keys are added by cloud-init; EC2 takes one key pair.
    extra_keys = pulumi.Output.all(*keys.public_keys[1:]).apply(
        lambda ks: "#cloud-config\nssh_authorized_keys:\n" + "".join(f"  - {k}\n" for k in ks)
    )
    instance = aws.ec2.Instance(
        f"{name}-server",
        ami=ami.id,
        instance_type=settings.instance_type,
        key_name=key_pair.key_name,
        vpc_security_group_ids=[group.id],
        availability_zone=settings.availability_zone,
        user_data=extra_keys,
        tags=tags,
        opts=opts,
    )
    volume = aws.ebs.Volume(
        f"{name}-data",
        availability_zone=instance.availability_zone,
        size=config.volume_size_gb,
        type="gp3",
        tags=tags,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(protect=config.keep_data_on_destroy)),
    )
    attachment = aws.ec2.VolumeAttachment(
        f"{name}-data-attachment", device_name="/dev/sdf", instance_id=instance.id, volume_id=volume.id, opts=opts
    )
    address = aws.ec2.Eip(f"{name}-address", instance=instance.id, domain="vpc", tags=tags, opts=opts)
    connection = remote.ConnectionArgs(host=address.public_ip, user=user, private_key=keys.private_key)
    return Machine(
        public_address=address.public_ip,
        connection=connection,
        user=user,
        # Nitro instances expose EBS volumes as NVMe devices named after the volume id.
        data_device=volume.id.apply(lambda v: "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_" + v.replace("-", "")),
        cloud_init=True,
        ready=[attachment, group, address],
    )
