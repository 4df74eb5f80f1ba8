"""What a stack costs per month, and what the managed services it replaces would cost.

The built-in prices live beside each provider's size table (``SIZES``, ``PRICE_SOURCE``,
``PRICES_READ_ON``); this module adds the storage prices, the managed equivalents, and the
live readers for the providers whose API publishes prices to a token holder (Hetzner's
``/v1/pricing``, DigitalOcean's ``/v2/sizes``). The parsers are pure and tested with recorded
responses; :func:`fetch_json` is the only I/O.

A cost report is a list of line items, each computed by one function in :data:`LINE_ITEMS`;
a backup block (``mlox:backup``), once it exists, changes only :func:`backup_line`.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from mlox_iac.errors import ConfigError, MloxError
from mlox_iac.providers import Size, get_provider


@dataclass(frozen=True)
class ObjectStorage:
    """An object store's list price: a base fee with some storage included, then per GB."""

    name: str
    base_monthly: float
    included_gb: int
    per_gb_monthly: float
    source: str

    def monthly(self, gb: float) -> float:
        return round(self.base_monthly + max(0.0, gb - self.included_gb) * self.per_gb_monthly, 2)


# Where each provider's backups would go: its own object storage.
BACKUP_STORAGE = {
    # EUR 6.49 a month since 2026-04-01 (was 4.99), 1 TB included, EUR 0.0087 per TB-hour beyond.
    "hetzner": ObjectStorage("Hetzner Object Storage", 6.49, 1024, round(0.0087 * 730 / 1024, 5),
                             "https://www.hetzner.com/storage/object-storage/"),
    "digitalocean": ObjectStorage("DigitalOcean Spaces", 5.0, 250, 0.02,
                                  "https://www.digitalocean.com/pricing/spaces-object-storage"),
    "aws": ObjectStorage("Amazon S3 Standard (us-east-1)", 0.0, 0, 0.023, "https://aws.amazon.com/s3/pricing/"),
}


@dataclass(frozen=True)
class Managed:
    """A managed service that does what one of ours does, at its smallest sensible tier."""

    service: str
    offer: str
    currency: str
    monthly: float | None  # None: no flat monthly price (billed by usage); see the source
    source: str
    note: str = ""


def managed_equivalents(volume_gb: int) -> list[Managed]:
    """List prices of managed equivalents (read 2026; each row names its page)."""
    s3 = BACKUP_STORAGE["aws"]
    return [
        Managed("mlflow", "Amazon SageMaker AI managed MLflow, Small tracking server", "USD", None,
                "https://aws.amazon.com/sagemaker/ai/pricing/", "billed per hour of tracking server plus storage"),
        Managed("mlflow", "Databricks managed MLflow", "USD", None, "https://www.databricks.com/product/pricing",
                "part of a Databricks workspace, billed in DBUs"),
        Managed("postgres", "Amazon RDS for PostgreSQL db.t4g.micro, single-AZ, 20 GB gp2", "USD",
                round(0.016 * 730 + 20 * 0.115, 2), "https://aws.amazon.com/rds/postgresql/pricing/"),
        Managed("postgres", "DigitalOcean Managed PostgreSQL, 1 GiB single node", "USD", 15.15,
                "https://www.digitalocean.com/pricing/managed-databases"),
        Managed("seaweedfs", f"Amazon S3 Standard, {volume_gb} GB", "USD", s3.monthly(volume_gb), s3.source,
                "plus requests and egress"),
        Managed("seaweedfs", "DigitalOcean Spaces (250 GiB included)", "USD",
                BACKUP_STORAGE["digitalocean"].monthly(volume_gb), BACKUP_STORAGE["digitalocean"].source),
        Managed("seaweedfs", "Hetzner Object Storage (1 TB included)", "EUR",
                BACKUP_STORAGE["hetzner"].monthly(volume_gb), BACKUP_STORAGE["hetzner"].source),
        Managed("caddy", "AWS Application Load Balancer (before LCUs)", "USD", round(0.0225 * 730, 2),
                "https://aws.amazon.com/elasticloadbalancing/pricing/"),
        Managed("caddy", "DigitalOcean Load Balancer, 1 node", "USD", 12.0,
                "https://www.digitalocean.com/pricing/load-balancers"),
        Managed("caddy", "Hetzner Load Balancer LB11", "EUR", 7.49, "https://www.hetzner.com/cloud/load-balancer/",
                "EUR 5.39 before 2026-04-01"),
    ]


@dataclass
class PriceList:
    """One provider's prices as a cost report uses them."""

    currency: str
    source: str
    read_on: str | None  # None: read live just now
    sizes: dict[str, Size]
    volume_gb_monthly: float
    ipv4_monthly: float

    @property
    def live(self) -> bool:
        return self.read_on is None


def builtin_prices(config) -> PriceList | None:
    """The built-in price list of the stack's provider (None for on-prem: your own hardware)."""
    if config.provider == "onprem":
        return None
    module = get_provider(config.provider)
    return PriceList(module.CURRENCY, module.PRICE_SOURCE, module.PRICES_READ_ON,
                     dict(module.sizes(config.provider_settings())), module.VOLUME_GB_MONTHLY, module.IPV4_MONTHLY)


@dataclass
class Line:
    item: str
    detail: str
    monthly: float | None


def server_line(config, prices: PriceList) -> Line:
    settings = config.provider_settings()
    name = getattr(settings, get_provider(config.provider).SIZE_FIELD)
    size = prices.sizes.get(name)
    detail = f"{name}: {size.vcpus} vCPU, {size.memory_mb // 1024} GB RAM" if size else name
    return Line("server", detail, size.monthly if size else None)


def volume_line(config, prices: PriceList) -> Line:
    gb = config.volume_size_gb
    return Line("data volume", f"{gb} GB", round(gb * prices.volume_gb_monthly, 2))


def ipv4_line(config, prices: PriceList) -> Line:
    return Line("public IPv4", "1 address" + (" (included)" if not prices.ipv4_monthly else ""), prices.ipv4_monthly)


def backup_line(config, prices: PriceList) -> Line:
    """Backup storage. No backup block exists yet: estimated as one full copy of the data
    volume in the provider's object storage (deduplicated backups of a volume that is not
    full stay below that)."""
    store = BACKUP_STORAGE[config.provider]
    gb = config.volume_size_gb
    return Line("backup storage", f"estimate: {gb} GB in {store.name}", store.monthly(gb))


LINE_ITEMS: tuple[Callable[[Any, PriceList], Line], ...] = (server_line, volume_line, ipv4_line, backup_line)


@dataclass
class Report:
    stack: str
    provider: str
    currency: str | None
    lines: list[Line]
    total: float | None
    source: str | None
    read_on: str | None
    age_days: int | None
    managed: list[Managed] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report(config, prices: PriceList | None, today: datetime.date) -> Report:
    """The monthly cost of ``config`` at ``prices`` (None: on-prem, nothing to pay a provider)."""
    enabled = set(config.enabled_services())
    managed = [m for m in managed_equivalents(config.volume_size_gb) if m.service in enabled]
    if prices is None:
        return Report(config.stack_name, config.provider, None, [Line("server", "your own host", None)], None,
                      None, None, None, managed)
    lines = [item(config, prices) for item in LINE_ITEMS]
    known = [line.monthly for line in lines]
    total = round(sum(known), 2) if None not in known else None
    age = None if prices.live else (today - datetime.date.fromisoformat(prices.read_on)).days
    return Report(config.stack_name, config.provider, prices.currency, lines, total, prices.source,
                  prices.read_on, age, managed)


def smaller_size_warning(config) -> str | None:
    """A warning when a cheaper current size of the same architecture holds the enabled services."""
    from mlox_iac.providers import smallest_fitting

    if config.provider == "onprem":
        return None
    module = get_provider(config.provider)
    settings = config.provider_settings()
    name = getattr(settings, module.SIZE_FIELD)
    sizes = module.sizes(settings)
    chosen = sizes.get(name)
    if chosen is None or chosen.monthly is None:
        return None
    best = smallest_fitting(sizes, config.memory_needed_mb(), chosen.arch)
    if best is None or sizes[best].monthly >= chosen.monthly:
        return None
    return (f"mlox:{config.provider}.{module.SIZE_FIELD}: {best} ({sizes[best].memory_mb} MiB, "
            f"{sizes[best].monthly:.2f} {module.CURRENCY}/month) also holds the enabled services "
            f"({config.memory_needed_mb()} MiB); {name} costs {chosen.monthly:.2f}")


# ----- live prices --------------------------------------------------------------------

# The stack's own credential (a secret in its stack file), and the variables that override it.
TOKEN_KEY = {"hetzner": "hcloud:token", "digitalocean": "digitalocean:token"}
TOKEN_ENV = {"hetzner": ("HCLOUD_TOKEN", "MLOX_PROVIDER_TOKEN"),
             "digitalocean": ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN", "MLOX_PROVIDER_TOKEN")}
LIVE_URL = {"hetzner": "https://api.hetzner.cloud/v1/pricing",
            "digitalocean": "https://api.digitalocean.com/v2/sizes?per_page=200"}


def live_token(provider: str, env: dict[str, str] | None = None,
               stack_config: Callable[[str], str | None] | None = None) -> str:
    """The API token for ``--live``: the provider's usual environment variable, else the
    stack's own secret (``hcloud:token``, ``digitalocean:token``) through ``stack_config``."""
    env = os.environ if env is None else env
    if provider not in TOKEN_ENV:
        raise ConfigError([f"--live: {provider} publishes no prices to read with the stack's credentials "
                           f"(allowed: {', '.join(TOKEN_ENV)}); the built-in table is used without --live"])
    for name in TOKEN_ENV[provider]:
        if env.get(name):
            return env[name]
    if stack_config is not None:
        token = stack_config(TOKEN_KEY[provider])
        if token:
            return token
    raise ConfigError([f"--live: no {provider} API token (set {TOKEN_ENV[provider][0]}, or "
                       f"pulumi config set --secret {TOKEN_KEY[provider]} for a stack given with --stack)"])


def fetch_json(url: str, token: str, timeout: float = 10) -> Any:
    """GET ``url`` with a bearer token; one error line when it cannot be had."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read(8 << 20))
    except urllib.error.HTTPError as exc:
        raise MloxError(f"--live: {url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MloxError(f"--live: cannot reach {url}: {reason}") from None
    except ValueError:
        raise MloxError(f"--live: {url} did not answer JSON") from None


def parse_hetzner_pricing(document: Any, location: str, base: PriceList) -> PriceList:
    """Prices for ``location`` from Hetzner's ``GET /v1/pricing`` (net, per month)."""
    try:
        pricing = document["pricing"]
        sizes = dict(base.sizes)
        for server_type in pricing["server_types"]:
            for price in server_type["prices"]:
                if price["location"] == location:
                    old = sizes.get(server_type["name"])
                    if old is not None:
                        sizes[server_type["name"]] = replace(old, monthly=round(float(price["price_monthly"]["net"]), 2))
        ipv4 = base.ipv4_monthly
        for ip in pricing.get("primary_ips", []):
            if ip.get("type") == "ipv4":
                ipv4 = next((round(float(p["price_monthly"]["net"]), 2) for p in ip["prices"]
                             if p["location"] == location), ipv4)
        volume = float(pricing["volume"]["price_per_gb_month"]["net"])
        return PriceList(pricing["currency"], LIVE_URL["hetzner"], None, sizes, volume, ipv4)
    except (KeyError, TypeError, ValueError) as exc:
        raise MloxError(f"--live: {LIVE_URL['hetzner']} answered in an unexpected shape ({exc!r})") from None


def parse_digitalocean_sizes(document: Any, base: PriceList) -> PriceList:
    """Droplet prices from DigitalOcean's ``GET /v2/sizes`` (volumes keep the built-in price)."""
    try:
        sizes = dict(base.sizes)
        for size in document["sizes"]:
            old = sizes.get(size["slug"])
            if old is not None:
                sizes[size["slug"]] = replace(old, monthly=round(float(size["price_monthly"]), 2))
        return PriceList("USD", LIVE_URL["digitalocean"], None, sizes, base.volume_gb_monthly, base.ipv4_monthly)
    except (KeyError, TypeError, ValueError) as exc:
        raise MloxError(f"--live: {LIVE_URL['digitalocean']} answered in an unexpected shape ({exc!r})") from None


def live_prices(config, base: PriceList, fetch: Callable[[str, str], Any] | None = None,
                env: dict[str, str] | None = None, stack_config: Callable[[str], str | None] | None = None) -> PriceList:
    """Today's prices from the provider's API, with the stack's provider token."""
    token = live_token(config.provider, env, stack_config)
    document = (fetch or fetch_json)(LIVE_URL[config.provider], token)
    if config.provider == "hetzner":
        return parse_hetzner_pricing(document, config.hetzner.location, base)
    return parse_digitalocean_sizes(document, base)
