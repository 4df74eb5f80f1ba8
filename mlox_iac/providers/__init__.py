"""Providers: one module per place a server can live, behind one small interface.

A provider module is imported only when its name is chosen, so a Hetzner stack never
loads pulumi_aws or pulumi_digitalocean. Each module defines:

- ``Settings``: the pydantic model of its ``mlox:<provider>`` block,
- ``memory_mb(settings)``: the RAM of the chosen size (for the memory budget check),
- ``create_machine(name, config, keys, opts) -> Machine``: the cloud resources of one server.

Everything above the provider is identical, so a stack moves between providers with
``mlox-iac migrate`` (``mlox_iac/migrations/stack.py``): a second server from the target's block,
the data copied and verified, then the outputs switched over.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pulumi

    from mlox_iac.config.model import StackConfig

PROVIDERS = ("hetzner", "digitalocean", "aws", "onprem")


@dataclass
class Machine:
    """What every provider hands back: enough to reach and bootstrap the server."""

    public_address: "pulumi.Output[str]"
    # pulumi_command.remote.ConnectionArgs; a secret Output when it carries a key.
    connection: Any
    # The SSH user of ``connection``: root, or a user with passwordless sudo.
    user: str
    # Block device of the data volume, or None when the data directory lives on the root disk.
    data_device: "pulumi.Input[str] | None"
    # Whether the image runs cloud-init (the bootstrap then waits for it to finish).
    cloud_init: bool
    # Resources the bootstrap must wait for (volume attachments, firewall, address).
    ready: list = field(default_factory=list)


@dataclass
class DeployKeys:
    """SSH keys a new machine must accept: the generated deploy key first, then the users'."""

    public_keys: list  # list[pulumi.Input[str]]
    private_key: "pulumi.Output[str] | None"  # secret; the deploy key pulumi-command connects with


class Provider(Protocol):
    """The interface each module under ``mlox_iac.providers`` implements."""

    Settings: type

    def memory_mb(self, settings: Any) -> int: ...

    def create_machine(
        self, name: str, config: "StackConfig", keys: DeployKeys, opts: "pulumi.ResourceOptions"
    ) -> Machine: ...


def get_provider(name: str) -> ModuleType:
    """Import the provider module called ``name`` (and only that one)."""
    if name not in PROVIDERS:
        raise KeyError(f"unknown provider {name!r} (allowed: {', '.join(PROVIDERS)})")
    return importlib.import_module(f"mlox_iac.providers.{name}")


class FieldError(ValueError):
    """A problem attributed to one key, written from the top of ``mlox:`` (e.g.
    ``hetzner.server_type``); the loader turns it into a normal error line."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Size:
    """One orderable server size: what it has and its list price per month (None: not in the
    built-in table; ``mlox-iac cost --live`` asks the provider)."""

    memory_mb: int
    vcpus: int
    monthly: float | None
    arch: str = "amd64"


def one_of(value: str, sizes: dict, what: str, retired: dict[str, str] | None = None) -> str:
    """``value`` if it names a known size, else the error every provider gives for it.

    A retired size (one the provider no longer sells) names its current equivalent.
    """
    if retired and value in retired:
        raise ValueError(f"{value!r} is retired and can no longer be ordered (allowed: {retired[value]}, "
                         f"its current equivalent, or another of {', '.join(sizes)})")
    if value not in sizes:
        raise ValueError(f"unknown {what} {value!r} (allowed: {', '.join(sizes)})")
    return value


def smallest_fitting(sizes: dict[str, Size], needed_mb: int, arch: str) -> str | None:
    """The cheapest size of ``arch`` with at least ``needed_mb`` of RAM (None when unpriced)."""
    fitting = [(size.monthly, name) for name, size in sizes.items()
               if size.arch == arch and size.memory_mb >= needed_mb and size.monthly is not None]
    return min(fitting)[1] if fitting else None


def ssh_rules(admin_cidrs: list[str]) -> list[tuple[int, list[str]]]:
    """The inbound rules every cloud firewall gets: (port, sources).

    SSH only from the admin addresses; HTTP and HTTPS from anywhere; nothing else.
    """
    anywhere = ["0.0.0.0/0", "::/0"]
    return [(22, list(admin_cidrs)), (80, anywhere), (443, anywhere)]
