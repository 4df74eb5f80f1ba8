"""AWS (pulumi-aws): key pair, security group, instance, EBS data volume, Elastic IP.

Credentials come from the usual AWS sources (environment, profile); the region from
``pulumi config set aws:region eu-central-1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlox_iac.providers import DeployKeys, Machine, one_of, ssh_rules

if TYPE_CHECKING:
    import pulumi

    from mlox_iac.config.model import StackConfig

# Instance type -> RAM in MiB.
SIZES = {
    "t3.small": 2048, "t3.medium": 4096, "t3.large": 8192, "t3.xlarge": 16384,
    "t4g.small": 2048, "t4g.medium": 4096, "t4g.large": 8192, "t4g.xlarge": 16384,
    "m6i.large": 8192, "m7g.large": 8192,
}
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
    return SIZES[settings.instance_type]


def create_machine(name: str, config: "StackConfig", keys: DeployKeys, opts: "pulumi.ResourceOptions") -> Machine:
    import pulumi
    import pulumi_aws as aws
    from pulumi_command import remote

    settings: Settings = config.aws  # type: ignore[assignment]
    tags = {"managed-by": "mlox-iac", "mlox-stack": config.stack_name}
    owner, pattern, user = IMAGES[settings.image]
    arch = "arm64" if settings.instance_type.startswith(("t4g", "m7g")) else "amd64"
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
