"""The stack configuration: one pydantic model for everything under ``mlox:``.

A stack file's ``config:`` block holds ``mlox:<field>`` keys for the fields of
:class:`StackConfig`; provider credentials stay in the providers' own namespaces
(``hcloud:token``, ``digitalocean:token``, ``aws:region``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from mlox_iac.components.services.base import PRESETS
from mlox_iac.components.services.registry import SERVICES
from mlox_iac.config import ssh_keys
from mlox_iac.providers import PROVIDERS, get_provider
from mlox_iac.providers import FieldError as _FieldError

_DOMAIN = re.compile(r"^(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Memory the OS, Docker and sshd need besides the services' limits.
SYSTEM_RESERVE_MB = 512


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _public_key(line: str) -> str:
    problem = ssh_keys.problem(line)
    if problem:
        raise ValueError(problem)
    return line


class SshSettings(Strict):
    """Who may log in over SSH, and from where."""

    public_keys: list[Annotated[str, AfterValidator(_public_key)]] = Field(
        min_length=1, description="OpenSSH public keys allowed to log in"
    )
    admin_cidrs: list[str] = Field(min_length=1, description="Source networks allowed to reach port 22")

    @field_validator("admin_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        out = []
        for cidr in cidrs:
            try:
                out.append(str(ipaddress.ip_network(cidr, strict=True)))
            except ValueError:
                raise ValueError(f"{cidr!r} is not a network in CIDR form (allowed: e.g. 203.0.113.7/32, 2001:db8::/48)") from None
        return out


class DockerSettings(Strict):
    """Where Docker Engine and Compose v2 come from on the server."""

    source: Literal["docker", "debian"] = Field(
        "docker",
        description="docker: Docker's apt repository (docker-ce + compose plugin); "
        "debian: the distribution's docker.io (Compose v2 must be present or packaged)",
    )


def _services_model() -> type[BaseModel]:
    """The ``mlox:services`` model, assembled from the service registry."""
    from pydantic import create_model

    fields: dict[str, Any] = {
        "preset": (Literal[PRESETS], Field(  # type: ignore[valid-type]
            "core", description="Which services are enabled unless a service's own enabled says otherwise: "
            "core (postgres, seaweedfs, mlflow, caddy) or full (every service)")),
    }
    fields.update({
        name: (service.settings, Field(default_factory=service.settings, description=service.summary))
        for name, service in SERVICES.items()
    })
    return create_model("ServicesSettings", __config__=ConfigDict(extra="forbid"), **fields)


ServicesSettings = _services_model()


class StackConfig(Strict):
    """Everything a stack says under ``mlox:``."""

    provider: Literal[PROVIDERS] = Field(description="Where the server lives")  # type: ignore[valid-type]
    hetzner: get_provider("hetzner").Settings | None = None  # type: ignore[valid-type]
    digitalocean: get_provider("digitalocean").Settings | None = None  # type: ignore[valid-type]
    aws: get_provider("aws").Settings | None = None  # type: ignore[valid-type]
    onprem: get_provider("onprem").Settings | None = None  # type: ignore[valid-type]
    volume_size_gb: int = Field(20, ge=10, le=10000, description="Size of the data volume (cloud providers)")
    ssh: SshSettings
    domain: str | None = Field(None, description="Base domain; each service gets a subdomain with automatic HTTPS")
    acme_email: str | None = Field(None, description="E-mail for Let's Encrypt (required with a domain)")
    docker: DockerSettings = Field(default_factory=DockerSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)  # type: ignore[valid-type]
    keep_data_on_destroy: bool = Field(True, description="Protect data volumes from deletion on destroy")
    # Set by the loader from the stack name, never from the file.
    _stack_name: str = PrivateAttr("dev")

    @property
    def stack_name(self) -> str:
        return self._stack_name

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and not _DOMAIN.match(value):
            raise ValueError(f"{value!r} is not a domain name (allowed: lowercase DNS name such as ml.example.com)")
        return value

    @field_validator("acme_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> "StackConfig":
        if getattr(self, self.provider) is None:
            raise _FieldError(self.provider, f"required when provider is {self.provider} (set mlox:{self.provider})")
        if self.domain and not self.acme_email:
            raise _FieldError("acme_email", "required when a domain is set (Let's Encrypt needs a contact address)")
        for name in self.enabled_services():
            for needed in SERVICES[name].requires:
                if not self.service_enabled(needed):
                    raise _FieldError(f"services.{needed}.enabled", f"must be true because {name} needs {needed}")
        needed_mb = self.memory_needed_mb()
        have_mb = self.memory_mb()
        if needed_mb > have_mb:
            parts = ", ".join(f"{n} {SERVICES[n].memory_mb}" for n in self.enabled_services())
            raise _FieldError(
                f"{self.provider}.{get_provider(self.provider).SIZE_FIELD}",
                f"server has {have_mb} MiB but the enabled services need {needed_mb} MiB "
                f"({parts}, system {SYSTEM_RESERVE_MB}) (allowed: a size with at least {needed_mb} MiB, or fewer services)",
            )
        return self

    # Typed accessors used by components.
    def service(self, name: str) -> Any:
        return getattr(self.services, name)

    def service_enabled(self, name: str) -> bool:
        """A service's own ``enabled`` if set, else whether the preset includes it."""
        enabled = self.service(name).enabled
        if enabled is not None:
            return enabled
        return PRESETS.index(SERVICES[name].preset) <= PRESETS.index(self.services.preset)

    def enabled_services(self) -> list[str]:
        """Names of enabled services, in registry order (which is dependency order)."""
        return [name for name in SERVICES if self.service_enabled(name)]

    def provider_settings(self) -> Any:
        return getattr(self, self.provider)

    def memory_mb(self) -> int:
        return get_provider(self.provider).memory_mb(self.provider_settings())

    def memory_needed_mb(self) -> int:
        return SYSTEM_RESERVE_MB + sum(SERVICES[n].memory_mb for n in self.enabled_services())
