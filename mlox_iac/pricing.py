"""What a stack costs per month, and what the managed services it replaces would cost.

The built-in prices live beside each provider's size table (``SIZES``, ``PRICE_SOURCE``,
``PRICES_READ_ON``), and each service names its managed equivalents in its own file
(``managed``, see ``components/services/base.py``); this module adds the object stores'
prices, the report, and the live readers for the providers whose API publishes prices to a
token holder (Hetzner's ``/v1/pricing``, DigitalOcean's ``/v2/sizes``). The parsers are pure
and tested with recorded responses; :func:`fetch_json` is the only I/O.

A cost report is a list of line items: the server's, each computed by one function in
:data:`LINE_ITEMS` from the provider's prices, and the backup repository's
(:func:`backup_line`, from ``mlox:backup``); then the managed equivalents of the enabled
services, and one line setting what the stack costs here against the managed set.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable
from urllib.parse import urlsplit

from mlox_iac.components.services.base import Managed
from mlox_iac.errors import ConfigError, MloxError
from mlox_iac.providers import Size, get_provider

@dataclass(frozen=True)
class ObjectStorage:
    """An object store's list price (a base fee with some storage included, then per GB), and
    the S3 endpoint host names that are this store."""

    name: str
    currency: str
    base_monthly: float
    included_gb: int
    per_gb_monthly: float
    source: str
    read_on: str
    hosts: str  # regular expression: the host names of its S3 endpoints
    note: str = ""

    def monthly(self, gb: float) -> float:
        return round(self.base_monthly + max(0.0, gb - self.included_gb) * self.per_gb_monthly, 2)


# The cloud providers' object stores: where backups go, and what the stack's own S3 store replaces.
OBJECT_STORAGE = {
    # EUR 6.49 a month since 2026-04-01 (was 4.99), 1 TB included, EUR 0.0087 per TB-hour beyond.
    "hetzner": ObjectStorage("Hetzner Object Storage", "EUR", 6.49, 1024, round(0.0087 * 730 / 1024, 5),
                             "https://www.hetzner.com/storage/object-storage/", "2026-11-26",
                             r"(?:[a-z0-9.-]+\.)?[a-z]+\d\.your-objectstorage\.com",
                             "the base fee, one per account, includes 1 TB"),
    "digitalocean": ObjectStorage("DigitalOcean Spaces", "USD", 5.0, 250, 0.02,
                                  "https://www.digitalocean.com/pricing/spaces-object-storage", "2026-11-26",
                                  r"(?:[a-z0-9.-]+\.)?[a-z]+\d\.digitaloceanspaces\.com",
                                  "the subscription, one per account, includes 250 GiB"),
    "aws": ObjectStorage("Amazon S3 Standard (us-east-1)", "USD", 0.0, 0, 0.023, "https://aws.amazon.com/s3/pricing/",
                         "2026-11-26", r"(?:[a-z0-9.-]+\.)?s3(?:[.-][a-z0-9-]+)*\.amazonaws\.com",
                         "us-east-1's price, other regions differ by a few percent; plus requests and egress"),
}


def object_storage_at(host: str | None) -> ObjectStorage | None:
    """The object store whose S3 endpoint ``host`` is; None for one without a built-in price."""
    host = (host or "").lower()
    return next((store for store in OBJECT_STORAGE.values() if re.fullmatch(store.hosts, host)), None)


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
    monthly: float | None  # None: the price is unknown
    currency: str | None = None  # None: nothing is paid for it (or its price is unknown)


def server_line(config, prices: PriceList) -> Line:
    settings = config.provider_settings()
    name = getattr(settings, get_provider(config.provider).SIZE_FIELD)
    size = prices.sizes.get(name)
    detail = f"{name}: {size.vcpus} vCPU, {size.memory_mb // 1024} GB RAM" if size else name
    return Line("server", detail, size.monthly if size else None, prices.currency)


def volume_line(config, prices: PriceList) -> Line:
    gb = config.volume_size_gb
    return Line("data volume", f"{gb} GB", round(gb * prices.volume_gb_monthly, 2), prices.currency)


def ipv4_line(config, prices: PriceList) -> Line:
    return Line("public IPv4", "1 address" + (" (included)" if not prices.ipv4_monthly else ""), prices.ipv4_monthly,
                prices.currency)


LINE_ITEMS: tuple[Callable[[Any, PriceList], Line], ...] = (server_line, volume_line, ipv4_line)


def backup_line(config, currency: str | None) -> tuple[Line | None, str]:
    """The backup repository's line (None without ``mlox:backup``) and a sentence on what it prices.

    A ``local:`` repository is on the server's own disk: no storage charge (in ``currency``),
    and not off-site. An ``s3:`` repository is priced at the list price of the store its
    endpoint is, estimated as one full copy of the data volume (deduplicated backups of a
    volume that is not full stay below that); at an endpoint that is no store with a built-in
    price, the price is unknown rather than guessed.
    """
    backup = config.backup
    if backup is None:
        return None, "not configured (no mlox:backup block): nothing is backed up, and nothing is priced for it"
    if not backup.is_s3:
        return (Line("backup storage", "local repository on the server's own disk", 0.0, currency),
                f"{backup.repository} is on the server's own disk: no storage charge, and not off-site "
                "(losing the server loses the backups)")
    host = urlsplit(backup.repository.removeprefix("s3:")).hostname
    store = object_storage_at(host)
    if store is None:
        known = ", ".join(s.name.split(" (")[0] for s in OBJECT_STORAGE.values())
        return (Line("backup storage", f"S3 at {host}", None),
                f"{backup.repository}: the price of {host} is unknown (built-in prices: {known})")
    gb = config.volume_size_gb
    note = f"; {store.note}" if store.note else ""
    return (Line("backup storage", f"estimate: {gb} GB in {store.name}", store.monthly(gb), store.currency),
            f"{backup.repository}: one full copy of the {gb} GB data volume in {store.name} ({store.source}, "
            f"read on {store.read_on}{note}); deduplicated backups of a volume that is not full stay below that")


# Hosts of managed Postgres offers with a built-in price -> how postgres.managed's offer name starts.
MANAGED_POSTGRES_HOSTS = {r"(?:[a-z0-9-]+\.)+rds\.amazonaws\.com": "Amazon RDS",
                          r"(?:[a-z0-9-]+\.)+db\.ondigitalocean\.com": "DigitalOcean Managed PostgreSQL"}


def part_lines(config) -> list[Line]:
    """A line per part the stack keeps at a provider (``services.<name>.external``): the object
    store at its list price for as much as the data volume holds, the Postgres server at its
    smallest tier; "unknown" at a host without a built-in price."""
    from mlox_iac.components.services import postgres, seaweedfs
    from mlox_iac.components.services.base import Context

    ctx = Context(config)
    lines = []
    store = seaweedfs.external(ctx)
    if store is not None:
        chosen = object_storage_at(store.host)
        gb = config.volume_size_gb
        lines.append(Line("object storage", f"external: {gb} GB in {chosen.name}", chosen.monthly(gb), chosen.currency)
                     if chosen is not None else Line("object storage", f"external: S3 at {store.host}", None))
    server = postgres.external(ctx)
    if server is not None:
        prefix = next((offer for hosts, offer in MANAGED_POSTGRES_HOSTS.items()
                       if re.fullmatch(hosts, server.host.lower())), None)
        offer = next((o for o in postgres.managed(ctx) if prefix and o.offer.startswith(prefix)), None)
        lines.append(Line("postgres", f"external: {offer.offer}", offer.monthly, offer.currency) if offer is not None
                     else Line("postgres", f"external: Postgres at {server.host}", None))
    return lines


# The managed set is summed in the currency the hyperscalers' list prices are in.
MANAGED_CURRENCY = "USD"


def managed_equivalents(config) -> list[Managed]:
    """The managed equivalents of the enabled services, as each service's own file names them."""
    from mlox_iac.components.services.base import Context
    from mlox_iac.components.services.registry import SERVICES

    ctx = Context(config)
    return [offer for name in config.enabled_services() for offer in SERVICES[name].managed(ctx)]


def managed_set(offers: list[Managed], services: list[str]) -> tuple[float, list[str]]:
    """The cheapest flat monthly price in :data:`MANAGED_CURRENCY` of each service, summed; and the
    services that have none (billed by usage, or no price confirmed)."""
    total, missing = 0.0, []
    for name in services:
        flat = [o.monthly for o in offers
                if o.service == name and o.monthly is not None and o.currency == MANAGED_CURRENCY]
        if flat:
            total += min(flat)
        else:
            missing.append(name)
    return round(total, 2), missing


def by_currency(lines: list[Line], first: str | None) -> tuple[dict[str, float], bool]:
    """What ``lines`` cost per currency (``first`` first), and whether every price is known."""
    sums: dict[str, float] = {}
    for line in lines:
        if line.monthly is not None and line.currency:
            sums[line.currency] = sums.get(line.currency, 0.0) + line.monthly
    order = sorted(sums, key=lambda currency: (currency != first, currency))
    return {currency: round(sums[currency], 2) for currency in order}, all(line.monthly is not None for line in lines)


@dataclass
class Summary:
    """What the stack costs here against the managed set: the closing line, and its numbers."""

    here: dict[str, float]  # per currency, what is paid to providers (on-prem: beside your own host)
    here_complete: bool  # False: a price here is unknown, so ``here`` is a lower bound
    managed: float  # the cheapest flat-priced equivalent of each enabled service, summed
    managed_currency: str
    managed_not_included: list[str]  # enabled services without a flat price in that currency
    line: str


def summary(here: dict[str, float], complete: bool, onprem: bool, offers: list[Managed],
            services: list[str]) -> Summary:
    """The closing comparison of a report."""
    managed, missing = managed_set(offers, services)
    amounts = " + ".join(f"{value:.2f} {currency}" for currency, value in here.items()) or "0.00"
    line = (f"This stack costs {'' if complete else 'at least '}{amounts} a month here"
            f"{' beyond your own host' if onprem else ''}{'' if complete else ' (a price is unknown)'}, "
            f"against about {managed:.2f} {MANAGED_CURRENCY} for the managed set"
            + (f" (not included, no flat list price: {', '.join(missing)})" if missing else ""))
    return Summary(here, complete, managed, MANAGED_CURRENCY, missing, line)


@dataclass
class Report:
    stack: str
    provider: str
    currency: str | None  # the provider's (None on-prem)
    lines: list[Line]
    total: float | None  # what is billed in ``currency``; None when a price is unknown
    totals: dict[str, float]  # every currency the lines are billed in
    source: str | None
    read_on: str | None
    age_days: int | None
    backup: str  # what the backup line prices, in a sentence
    managed: list[Managed]
    summary: Summary

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report(config, prices: PriceList | None, today: datetime.date) -> Report:
    """The monthly cost of ``config`` at ``prices`` (None: on-prem, nothing to pay for the host)."""
    currency = prices.currency if prices is not None else None
    backup, backup_note = backup_line(config, currency)
    if prices is None:
        lines, paid, age = [Line("server", "your own host", None)], [], None
    else:
        lines = [item(config, prices) for item in LINE_ITEMS]
        paid = list(lines)
        age = None if prices.live else (today - datetime.date.fromisoformat(prices.read_on)).days
    if backup is not None:
        lines.append(backup)
        paid.append(backup)
    for line in part_lines(config):  # what the provider bills for the parts kept there
        lines.append(line)
        paid.append(line)
    totals, complete = by_currency(paid, currency)
    total = totals.get(currency, 0.0) if currency is not None and complete else None
    offers = managed_equivalents(config)
    return Report(config.stack_name, config.provider, currency, lines, total, totals,
                  prices.source if prices else None, prices.read_on if prices else None, age, backup_note, offers,
                  summary(totals, complete, prices is None, offers, config.enabled_services()))


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
