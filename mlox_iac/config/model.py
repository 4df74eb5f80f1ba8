"""The stack configuration: one pydantic model for everything under ``mlox:``.

A stack file's ``config:`` block holds ``mlox:<field>`` keys for the fields of
:class:`StackConfig`; provider credentials stay in the providers' own namespaces
(``hcloud:token``, ``digitalocean:token``, ``aws:region``).
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import time
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

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


def _mirror_url(url: str) -> str:
    parts = urlsplit(url) if _is_https_url(url) else None
    if parts is None or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not an https URL of a registry (allowed: e.g. https://mirror.example.com "
                         "or https://mirror.example.com:5000; plain http is refused, TLS stays on)")
    return url


class DockerSettings(Strict):
    """Where Docker Engine and Compose v2 come from on the server, and where it pulls images."""

    source: Literal["docker", "debian"] = Field(
        "docker",
        description="docker: Docker's apt repository (docker-ce + compose plugin); "
        "debian: the distribution's docker.io (Compose v2 must be present or packaged)",
    )
    registry_mirrors: list[Annotated[str, AfterValidator(_mirror_url)]] = Field(
        default_factory=list,
        description="Pull-through mirrors of Docker Hub (https URLs), tried in order before Docker Hub; "
        "Docker uses them for Docker Hub images only (not ghcr.io, quay.io)",
    )
    registry_ca: str | None = Field(
        None, description="PEM CA certificate(s) that signed the mirrors' certificates, when not publicly trusted")

    @field_validator("registry_mirrors")
    @classmethod
    def _distinct(cls, urls: list[str]) -> list[str]:
        for i, url in enumerate(urls):
            if url.rstrip("/") in [u.rstrip("/") for u in urls[:i]]:
                raise ValueError(f"{url!r} is listed twice (allowed: each mirror once)")
        return urls

    @field_validator("registry_ca")
    @classmethod
    def _registry_ca(cls, value: str | None) -> str | None:
        return None if value is None else check_ca_certificates(value)


_SCHEDULES = {"hourly": ("hourly", 3600), "daily": ("daily", 86400), "weekly": ("weekly", 7 * 86400)}
_REPOSITORY = re.compile(r"^(s3:https?://[^/\s]+/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?|local:/[^\s]*)$")


def parse_schedule(value: str) -> tuple[str, int]:
    """A backup schedule as (systemd OnCalendar expression, interval in seconds).

    ``hourly``, ``daily``, ``weekly``, ``<N>m`` (N divides 60) or ``<N>h`` (N divides 24).
    """
    if value in _SCHEDULES:
        return _SCHEDULES[value]
    match = re.fullmatch(r"([1-9][0-9]?)([mh])", value)
    if match:
        n, unit = int(match.group(1)), match.group(2)
        if unit == "m" and 60 % n == 0:
            return f"*:0/{n}", n * 60
        if unit == "h" and 24 % n == 0:
            return f"0/{n}:00", n * 3600
    raise ValueError(
        f"{value!r} is not a schedule (allowed: hourly, daily, weekly, <N>m with N dividing 60, <N>h with N dividing 24)"
    )


class BackupKeep(Strict):
    """How many snapshots the repository keeps (restic forget --keep-last/hourly/daily/weekly/monthly).

    Each period keeps its newest snapshot: with a schedule more frequent than daily, only
    ``hourly`` or ``last`` keep more than one snapshot of a day (``validate`` warns)."""

    last: int = Field(0, ge=0, le=10000, description="The newest snapshots kept, whatever their age")
    hourly: int = Field(0, ge=0, le=8760, description="Hourly snapshots kept")
    daily: int = Field(7, ge=0, le=3650, description="Daily snapshots kept")
    weekly: int = Field(4, ge=0, le=520, description="Weekly snapshots kept")
    monthly: int = Field(6, ge=0, le=1200, description="Monthly snapshots kept")

    @model_validator(mode="after")
    def _some(self) -> "BackupKeep":
        if self.last + self.hourly + self.daily + self.weekly + self.monthly == 0:
            raise ValueError("keeps no snapshot at all "
                             "(allowed: at least one of last, hourly, daily, weekly, monthly above 0)")
        return self


class BackupSettings(Strict):
    """Encrypted, deduplicated off-site backups (restic) of every service's declared data."""

    repository: str = Field(
        description="restic repository: s3:https://ENDPOINT/BUCKET[/PREFIX] (any S3-compatible store), "
        "or local:/PATH on the server's own disk (not off-site)",
    )
    access_key_id: str | None = Field(None, description="S3 access key of the repository (a Pulumi secret)")
    secret_access_key: str | None = Field(None, description="S3 secret key of the repository (a Pulumi secret)")
    schedule: str = Field("daily", description="hourly, daily, weekly, <N>m or <N>h: when the server backs up")
    keep: BackupKeep = Field(default_factory=BackupKeep)
    check_read_data: int = Field(5, ge=1, le=100, description="Percent of the data the periodic deep check reads back")

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        if not _REPOSITORY.match(value):
            raise ValueError(
                f"{value!r} is not a repository (allowed: s3:https://ENDPOINT/BUCKET[/PREFIX] or local:/PATH)"
            )
        return value.rstrip("/")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @model_validator(mode="after")
    def _credentials(self) -> "BackupSettings":
        if self.is_s3 and not (self.access_key_id and self.secret_access_key):
            raise _FieldError("backup.access_key_id", "required with an s3: repository, with secret_access_key "
                              "(set them with: pulumi config set --secret --path 'mlox:backup.access_key_id' KEY)")
        return self

    @property
    def is_s3(self) -> bool:
        return self.repository.startswith("s3:")

    @property
    def interval_s(self) -> int:
        return parse_schedule(self.schedule)[1]

    @property
    def on_calendar(self) -> str:
        return parse_schedule(self.schedule)[0]


_SERVER_NAME = r"^[a-z][a-z0-9]{0,15}$"


class TargetSettings(Strict):
    """Where ``mlox-iac migrate`` moves a stack within the same provider (another host, region or size).

    A move to another provider reads that provider's own block (``mlox:hetzner``, ...).
    """

    hetzner: get_provider("hetzner").Settings | None = None  # type: ignore[valid-type]
    digitalocean: get_provider("digitalocean").Settings | None = None  # type: ignore[valid-type]
    aws: get_provider("aws").Settings | None = None  # type: ignore[valid-type]
    onprem: get_provider("onprem").Settings | None = None  # type: ignore[valid-type]


class MigrationSettings(Strict):
    """A move in progress, written by ``mlox-iac migrate`` (never edited by hand).

    While it is set the stack has two servers: the current one (``mlox:server``, on
    ``mlox:provider``) and the new one (``server``, on ``to``), deployed with the same
    credentials.
    """

    to: Literal[PROVIDERS] = Field(description="Provider of the new server")  # type: ignore[valid-type]
    server: str = Field(pattern=_SERVER_NAME, description="Resource name of the new server")
    # provisioning: outputs point at the old server; cutover: at the new one, the old one is
    # kept and protected; finishing: the old one is unprotected so the next update removes it.
    state: Literal["provisioning", "cutover", "finishing"] = "provisioning"
    # The servers copy data to each other over SSH: each admits the other's address.
    source_address: str | None = Field(None, description="Public IP address of the old server")
    return_address: str | None = Field(None, description="Public IP address of the new server (abort after the cutover)")

    @field_validator("source_address", "return_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address") from None
        return value


# The parts of a stack that can live outside the server: part -> the service that holds it locally.
PARTS = {"objects": "seaweedfs", "postgres": "postgres"}


class PartMoveSettings(Strict):
    """A move of one part of the stack in progress, written by ``mlox-iac migrate --part`` (never
    edited by hand). While it is set both the server's own store and the external one are
    configured: the services use the old one until the cutover, the new one after it, and the
    server's own keeps running (with its data) until ``--finish``."""

    part: Literal["objects", "postgres"] = Field(description="What moves: the buckets or the databases")
    to: Literal["external", "local"] = Field(description="Where it moves: the external store, or back to the server")
    state: Literal["copying", "cutover"] = "copying"


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
    acme_ca: str | None = Field(
        None, description="ACME directory URL (https) instead of Let's Encrypt: Let's Encrypt staging, ZeroSSL, "
        "a company ACME CA (with a domain)",
    )
    acme_ca_root: str | None = Field(
        None, description="PEM root certificate(s) of that ACME CA, when not publicly trusted: of its directory's "
        "HTTPS and of the certificates it issues (with acme_ca)",
    )
    docker: DockerSettings = Field(default_factory=DockerSettings)
    services: ServicesSettings = Field(default_factory=ServicesSettings)  # type: ignore[valid-type]
    keep_data_on_destroy: bool = Field(True, description="Protect data volumes from deletion on destroy")
    backup: BackupSettings | None = Field(None, description="Scheduled encrypted backups to an S3 repository")


    server: str = Field("main", pattern=_SERVER_NAME, description="Resource name of the server (changed only by mlox-iac migrate)")
    target: TargetSettings | None = Field(None, description="Settings of the new server for a move within the same provider")
    migration: MigrationSettings | None = Field(None, description="A move in progress (written by mlox-iac migrate)")
    part_move: PartMoveSettings | None = Field(None, description="A move of one part in progress "
                                               "(written by mlox-iac migrate --part)")
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

    @field_validator("acme_ca")
    @classmethod
    def _acme_ca(cls, value: str | None) -> str | None:
        if value is not None and not _is_https_url(value):
            raise ValueError(f"{value!r} is not an https URL (allowed: an ACME directory URL such as "
                             "https://acme-staging-v02.api.letsencrypt.org/directory)")
        return value

    @field_validator("acme_ca_root")
    @classmethod
    def _acme_ca_root(cls, value: str | None) -> str | None:
        return None if value is None else check_ca_certificates(value)

    @model_validator(mode="after")
    def _cross_field(self) -> "StackConfig":
        if getattr(self, self.provider) is None:
            raise _FieldError(self.provider, f"required when provider is {self.provider} (set mlox:{self.provider})")
        if self.domain and not self.acme_email:
            raise _FieldError("acme_email", "required when a domain is set (Let's Encrypt needs a contact address)")
        if self.acme_ca and not self.domain:
            raise _FieldError("acme_ca", "only used with a domain (set mlox:domain, or remove mlox:acme_ca)")
        if self.acme_ca_root and not self.acme_ca:
            raise _FieldError("acme_ca_root", "only used with mlox:acme_ca (the root of a custom ACME CA)")
        if self.docker.registry_ca and not self.docker.registry_mirrors:
            raise _FieldError("docker.registry_ca", "only used with mlox:docker.registry_mirrors (the CA of the mirrors)")
        for name in self.enabled_services():
            for needed in SERVICES[name].requires:
                if not self.service_enabled(needed):
                    raise _FieldError(f"services.{needed}.enabled", f"must be true because {name} needs {needed}")
        if self.part_move is not None:
            service = PARTS[self.part_move.part]
            if self.service(service).external is None:
                raise _FieldError(f"services.{service}.external",
                                  f"required while mlox:part_move moves {self.part_move.part} (the external side)")
            if self.migration is not None:
                raise _FieldError("part_move", "cannot run beside a move of the whole stack (mlox:migration): "
                                  "finish or abort one first")
        if self.migration is not None:
            if self.migration.server == self.server:
                raise _FieldError("migration.server", f"must differ from mlox:server ({self.server})")
            self.for_target(self.migration.to)
        needed_mb = self.memory_needed_mb()
        have_mb = self.memory_mb()
        if needed_mb > have_mb:
            parts = ", ".join(f"{n} {self.service_memory_mb(n)}" for n in self.enabled_services())
            raise _FieldError(
                f"{self.provider}.{get_provider(self.provider).SIZE_FIELD}",
                f"server has {have_mb} MiB but the enabled services need {needed_mb} MiB "
                f"({parts}, system {SYSTEM_RESERVE_MB}) (allowed: a size with at least {needed_mb} MiB, or fewer services)",
            )
        return self

    def part_external(self, part: str) -> bool:
        """Whether the services use the external store for ``part`` (objects, postgres): its
        ``in_use``, or during a move of that part, the side the move has reached."""
        external = self.service(PARTS[part]).external
        if external is None:
            return False
        move = self.part_move
        if move is None or move.part != part:
            return external.in_use
        return (move.to == "external") == (move.state == "cutover")

    def part_local(self, part: str) -> bool:
        """Whether the server runs its own store for ``part``: when the services use it, and
        throughout a move of that part (its data kept until ``--finish``)."""
        moving = self.part_move is not None and self.part_move.part == part
        return moving or not self.part_external(part)

    def warnings(self) -> list[tuple[str, str]]:
        """(key, message) for settings that are valid but risky."""
        out = []
        for part, service in PARTS.items():
            if self.part_external(part):
                what = "buckets" if part == "objects" else "databases"
                out.append((f"services.{service}.external", f"backups do not cover the {what} on the external "
                            f"{'store' if part == 'objects' else 'server'}: protect them with the provider's own "
                            f"{'versioning or replication' if part == 'objects' else 'backups and point-in-time recovery'}"
                            f" (mlox:backup keeps only what runs on the server)"))
        if self.backup is not None and not self.backup.is_s3:
            out.append(("backup.repository", "a local: repository is on the server's own disk, not off-site: "
                        "losing the server loses the backups (use an s3: repository)"))
        if self.backup is not None and self.backup.interval_s < 86400 and not (self.backup.keep.last
                                                                               or self.backup.keep.hourly):
            per_day = 86400 // self.backup.interval_s
            out.append(("backup.keep", f"the schedule {self.backup.schedule!r} makes {per_day} snapshots a day but "
                        "keep holds only the newest of each day (set keep.hourly or keep.last to keep more)"))
        return out

    # Typed accessors used by components.
    def target_settings(self, to: str) -> Any:
        """The settings of the server a move to ``to`` creates, or None when the file has none:
        ``mlox:target.<to>`` if set, else (for another provider) ``mlox:<to>``."""
        within = getattr(self.target, to) if self.target is not None else None
        if within is not None:
            return within
        return getattr(self, to) if to != self.provider else None

    def for_target(self, to: str) -> "StackConfig":
        """This stack as the new server of a move to ``to`` sees it (same services and credentials).

        Raises :class:`_FieldError` naming the key to fill in when the target's settings are
        missing or its size is too small."""
        settings = self.target_settings(to)
        if settings is None:
            key = f"target.{to}" if to == self.provider else to
            raise _FieldError(key, f"required to move the stack to {to} (the new server's settings)")
        moved = self.model_copy(update={"provider": to, to: settings, "target": None})
        needed, have = moved.memory_needed_mb(), moved.memory_mb()
        if needed > have:
            key = ("target." if to == self.provider else "") + f"{to}.{get_provider(to).SIZE_FIELD}"
            raise _FieldError(key, f"the new server has {have} MiB but the enabled services need {needed} MiB "
                                   f"(allowed: a size with at least {needed} MiB)")
        return moved


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

    def service_memory_mb(self, name: str) -> int:
        from mlox_iac.components.services.base import Context

        return SERVICES[name].memory_for(Context(self))

    def memory_needed_mb(self) -> int:
        return SYSTEM_RESERVE_MB + sum(self.service_memory_mb(n) for n in self.enabled_services())


def _is_https_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return (parts.scheme == "https" and bool(parts.hostname) and parts.username is None
            and not any(c.isspace() for c in value))


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.S)


def check_ca_certificates(pem: str) -> str:
    """``pem`` if it holds only CA certificates (one or more, PEM) that have not expired.

    Parsed by OpenSSL through :mod:`ssl`; a private key is refused, since the text is shipped
    to the server as a plain file.
    """
    if "PRIVATE KEY-----" in pem:
        raise ValueError("contains a private key (allowed: CA certificates only; never put a key here)")
    blocks = _PEM_CERTIFICATE.findall(pem)
    if not blocks or _PEM_CERTIFICATE.sub("", pem).strip():
        raise ValueError("not PEM certificates only (allowed: one or more -----BEGIN CERTIFICATE----- blocks and nothing else)")
    for number, block in enumerate(blocks, 1):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cadata=block)
        except ssl.SSLError:
            raise ValueError(f"certificate {number} is not a valid X.509 certificate") from None
        loaded = context.get_ca_certs()  # only certificates that may sign others
        if not loaded:
            raise ValueError(f"certificate {number} is not a CA certificate (allowed: the CA's root, not a server certificate)")
        not_after = loaded[0]["notAfter"]
        if ssl.cert_time_to_seconds(not_after) < time.time():
            raise ValueError(f"certificate {number} expired on {not_after}")
    return pem

