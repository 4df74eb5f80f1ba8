"""Server sizes, prices and ``mlox-iac cost``: the size tables, retired sizes, the cost report
(text and JSON) for every provider, the backup block priced as configured (none, on the
server's disk, S3 at each provider's store, an unknown endpoint), the managed equivalents of
every service and the closing comparison line, live prices parsed from API responses, and
the smaller-size warning of ``validate``. The expected numbers are computed by hand from the
built-in tables, so a changed price fails here.

The API responses in ``fixtures/`` follow the shapes of Hetzner's ``GET /v1/pricing`` and
DigitalOcean's ``GET /v2/sizes`` API references (these machines cannot reach either API);
their prices differ from the built-in table on purpose, so a test sees which one was used.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from cli_helpers import cli, closed_port, no_pulumi  # noqa: F401 (fixtures used by name)
from conftest import settings, write_stack
from pulumi_double import RecordingPulumiCommand

from mlox_iac import pricing
from mlox_iac.config.loader import load_file
from mlox_iac.providers import aws, digitalocean, hetzner

FIXTURES = Path(__file__).parent / "fixtures"
PROVIDERS = {"hetzner": hetzner, "digitalocean": digitalocean, "aws": aws}


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_size_tables_carry_prices_a_source_and_a_date(name):
    module = PROVIDERS[name]
    assert module.PRICE_SOURCE.startswith("https://")
    assert datetime.date.fromisoformat(module.PRICES_READ_ON) <= datetime.date.today()
    sizes = module.EU_SIZES if name == "hetzner" else module.SIZES
    for size_name, size in sizes.items():
        assert size.memory_mb >= 1024 and size.vcpus >= 1 and size.monthly > 0, size_name
        assert size.arch in ("amd64", "arm64")
    default = module.Settings.model_fields[module.SIZE_FIELD].default
    assert default in sizes


def test_hetzner_tables_are_the_current_lines():
    assert list(hetzner.EU_SIZES) == ["cx23", "cx33", "cx43", "cx53", "cpx12", "cpx22", "cpx32", "cpx42", "cpx52",
                                      "cpx62", "cax11", "cax21", "cax31", "cax41"]
    assert {n for n, s in hetzner.EU_SIZES.items() if s.arch == "arm64"} == {"cax11", "cax21", "cax31", "cax41"}
    for retired, current in hetzner.RETIRED.items():
        assert retired not in hetzner.EU_SIZES and current in hetzner.EU_SIZES
        old_ram = {"cx22": 4096, "cx32": 8192, "cx42": 16384, "cx52": 32768, "cpx11": 2048, "cpx21": 4096,
                   "cpx31": 8192, "cpx41": 16384, "cpx51": 32768}[retired]
        assert hetzner.EU_SIZES[current].memory_mb == old_ram, (retired, current)


def test_retired_size_fails_validate_naming_its_successor(cli, tmp_path):
    path = write_stack(tmp_path, settings(hetzner={"location": "nbg1", "server_type": "cpx31"}))
    result = cli("validate", "--file", str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{path}: mlox:hetzner.server_type: 'cpx31' is retired and can no longer be "
                                    "ordered (allowed: cpx32, its current equivalent, or another of cx23, ")
    assert result.stderr.count("\n") == 1


def test_retired_cpx_names_are_current_in_the_us(tmp_path):
    config = load_file(write_stack(tmp_path, settings(hetzner={"location": "hil", "server_type": "cpx31"})))
    assert config.memory_mb() == 8192


HETZNER_TEXT = """Monthly cost of stack test (hetzner):
  server          cx23: 2 vCPU, 4 GB RAM                               5.99 EUR
  data volume     20 GB                                                1.14 EUR
  public IPv4     1 address                                            0.50 EUR
  total                                                                7.63 EUR
Backups: not configured (no mlox:backup block): nothing is backed up, and nothing is priced for it.
Prices from https://www.hetzner.com/cloud/, read on 2026-09-04 ({age} days ago); --live reads today's where the provider publishes them.
Managed equivalents of the enabled services (list prices, smallest tier):
"""


def _age(module) -> int:
    return (datetime.date.today() - datetime.date.fromisoformat(module.PRICES_READ_ON)).days


def test_cost_text_for_hetzner(cli, tmp_path):
    result = cli("cost", "--file", str(write_stack(tmp_path, settings())))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(HETZNER_TEXT.format(age=_age(hetzner)))
    *managed, last = result.stdout.split("smallest tier):\n", 1)[1].splitlines()
    assert [line.split()[0] for line in managed] == ["postgres", "postgres", "seaweedfs", "seaweedfs", "seaweedfs",
                                                     "mlflow", "mlflow", "home", "caddy", "caddy", "caddy"]
    assert "Amazon RDS for PostgreSQL db.t4g.micro, single-AZ, 20 GB gp2" in managed[0] and "13.98 USD" in managed[0]
    assert "(https://aws.amazon.com/rds/postgresql/pricing/, read 2026-11-26; " in managed[0]
    assert "no flat price" in managed[5]
    # The cheapest flat USD price of each service: RDS 13.98 + S3 0.46 + DO load balancer 12.00.
    assert last == ("This stack costs 7.63 EUR a month here, against about 26.44 USD for the managed set "
                    "(not included, no flat list price: mlflow).")


@pytest.mark.parametrize("provider, lines, total, currency", [
    ("hetzner", [("server", "cx23: 2 vCPU, 4 GB RAM", 5.99), ("data volume", "20 GB", 1.14),
                 ("public IPv4", "1 address", 0.5)], 7.63, "EUR"),
    ("digitalocean", [("server", "s-2vcpu-4gb: 2 vCPU, 4 GB RAM", 24.0), ("data volume", "20 GB", 2.0),
                      ("public IPv4", "1 address (included)", 0.0)], 26.0, "USD"),
    ("aws", [("server", "t3.medium: 2 vCPU, 4 GB RAM", 30.37), ("data volume", "20 GB", 1.6),
             ("public IPv4", "1 address", 3.65)], 35.62, "USD"),
])
def test_cost_json_for_each_cloud_provider(cli, tmp_path, provider, lines, total, currency):
    result = cli("cost", "--file", str(write_stack(tmp_path, settings(provider))), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(line["item"], line["detail"], line["monthly"]) for line in data["lines"]] == lines
    assert {line["currency"] for line in data["lines"]} == {currency}
    assert (data["total"], data["totals"], data["currency"], data["provider"]) == (total, {currency: total}, currency,
                                                                                   provider)
    assert data["read_on"] == PROVIDERS[provider].PRICES_READ_ON and data["age_days"] == _age(PROVIDERS[provider])
    assert [row["service"] for row in data["managed"]] == ["postgres", "postgres", "seaweedfs", "seaweedfs", "seaweedfs",
                                                           "mlflow", "mlflow", "home", "caddy", "caddy", "caddy"]
    assert data["summary"] == {
        "here": {currency: total}, "here_complete": True, "managed": 26.44, "managed_currency": "USD",
        "managed_not_included": ["mlflow"],
        "line": f"This stack costs {total:.2f} {currency} a month here, against about 26.44 USD for the managed set "
                "(not included, no flat list price: mlflow)"}


def test_cost_for_onprem_prices_only_the_managed_equivalents(cli, tmp_path):
    raw = settings("onprem", services={"mlflow": {"enabled": False}})
    text = cli("cost", "--file", str(write_stack(tmp_path, raw)))
    assert text.exit_code == 0, text.stderr
    assert text.stdout.startswith("Monthly cost of stack test (onprem):\n  server          your own host")
    assert "On-prem: the host is yours; nothing is paid to a provider for it.\n" in text.stdout
    assert text.stdout.endswith("This stack costs 0.00 a month here beyond your own host, against about 26.44 USD "
                                "for the managed set.\n")
    data = json.loads(cli("cost", "--file", str(write_stack(tmp_path, raw)), "--json").stdout)
    assert (data["total"], data["totals"], data["currency"], data["read_on"]) == (None, {}, None, None)
    assert {row["service"] for row in data["managed"]} == {"postgres", "seaweedfs", "home", "caddy"}
    assert (data["summary"]["here"], data["summary"]["managed"], data["summary"]["managed_not_included"]) == ({}, 26.44, [])


# ----- backups: priced as configured ------------------------------------------------------

# What each kind of repository adds: (repository, backup line as (item, detail, monthly, currency), sentence).
# The local line's currency is the provider's; an S3 line's is its store's.
BACKUPS = {
    "none": (None, None, "not configured (no mlox:backup block): nothing is backed up, and nothing is priced for it"),
    "local": ("local:/srv/mlox-backups", ("backup storage", "local repository on the server's own disk", 0.0, "provider"),
              "local:/srv/mlox-backups is on the server's own disk: no storage charge, and not off-site (losing the "
              "server loses the backups)"),
    "hetzner_store": ("s3:https://fsn1.your-objectstorage.com/team-backups/prod",
                      ("backup storage", "estimate: 20 GB in Hetzner Object Storage", 6.49, "EUR"),
                      "s3:https://fsn1.your-objectstorage.com/team-backups/prod: one full copy of the 20 GB data volume "
                      "in Hetzner Object Storage (https://www.hetzner.com/storage/object-storage/, read on 2026-11-26; the "
                      "base fee, one per account, includes 1 TB); deduplicated backups of a volume that is not full stay "
                      "below that"),
    "digitalocean_store": ("s3:https://fra1.digitaloceanspaces.com/team-backups",
                           ("backup storage", "estimate: 20 GB in DigitalOcean Spaces", 5.0, "USD"),
                           "s3:https://fra1.digitaloceanspaces.com/team-backups: one full copy of the 20 GB data volume in "
                           "DigitalOcean Spaces (https://www.digitalocean.com/pricing/spaces-object-storage, read on "
                           "2026-11-26; the subscription, one per account, includes 250 GiB); deduplicated backups of a "
                           "volume that is not full stay below that"),
    "aws_store": ("s3:https://s3.eu-central-1.amazonaws.com/team-backups/prod",
                  ("backup storage", "estimate: 20 GB in Amazon S3 Standard (us-east-1)", 0.46, "USD"),
                  "s3:https://s3.eu-central-1.amazonaws.com/team-backups/prod: one full copy of the 20 GB data volume in "
                  "Amazon S3 Standard (us-east-1) (https://aws.amazon.com/s3/pricing/, read on 2026-11-26; us-east-1's "
                  "price, other regions differ by a few percent; plus requests and egress); deduplicated backups of a "
                  "volume that is not full stay below that"),
    "unknown_endpoint": ("s3:https://minio.example.com/team-backups",
                         ("backup storage", "S3 at minio.example.com", None, None),
                         "s3:https://minio.example.com/team-backups: the price of minio.example.com is unknown (built-in "
                         "prices: Hetzner Object Storage, DigitalOcean Spaces, Amazon S3 Standard)"),
}

# provider -> backup kind -> what the stack costs here per currency (server, volume and IPv4 of the
# provider's built-in table: hetzner 7.63 EUR, digitalocean 26.00 USD, aws 35.62 USD, onprem nothing).
HERE = {
    "hetzner": {"none": {"EUR": 7.63}, "local": {"EUR": 7.63}, "hetzner_store": {"EUR": 14.12},
                "digitalocean_store": {"EUR": 7.63, "USD": 5.0}, "aws_store": {"EUR": 7.63, "USD": 0.46},
                "unknown_endpoint": {"EUR": 7.63}},
    "digitalocean": {"none": {"USD": 26.0}, "local": {"USD": 26.0}, "hetzner_store": {"USD": 26.0, "EUR": 6.49},
                     "digitalocean_store": {"USD": 31.0}, "aws_store": {"USD": 26.46}, "unknown_endpoint": {"USD": 26.0}},
    "aws": {"none": {"USD": 35.62}, "local": {"USD": 35.62}, "hetzner_store": {"USD": 35.62, "EUR": 6.49},
            "digitalocean_store": {"USD": 40.62}, "aws_store": {"USD": 36.08}, "unknown_endpoint": {"USD": 35.62}},
    "onprem": {"none": {}, "local": {}, "hetzner_store": {"EUR": 6.49}, "digitalocean_store": {"USD": 5.0},
               "aws_store": {"USD": 0.46}, "unknown_endpoint": {}},
}
CURRENCY = {"hetzner": "EUR", "digitalocean": "USD", "aws": "USD", "onprem": None}


def _stack(tmp_path, raw: dict):
    """A stack file whose backup keys are secrets, as the loader requires."""
    return write_stack(tmp_path, raw, secure=("onprem", "backup"))


def _with_backup(provider: str, kind: str) -> dict:
    repository = BACKUPS[kind][0]
    if repository is None:
        return settings(provider)
    keys = {"access_key_id": "AKIA", "secret_access_key": "SECRET"} if repository.startswith("s3:") else {}
    return settings(provider, backup={"repository": repository, **keys})


@pytest.mark.parametrize("kind", sorted(BACKUPS))
@pytest.mark.parametrize("provider", sorted(HERE))
def test_cost_prices_the_backup_block_as_configured(cli, tmp_path, provider, kind):
    result = cli("cost", "--file", str(_stack(tmp_path, _with_backup(provider, kind))), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    _, line, sentence = BACKUPS[kind]
    backup_lines = [tuple(row[k] for k in ("item", "detail", "monthly", "currency")) for row in data["lines"]
                    if row["item"] == "backup storage"]
    if line is None:
        assert backup_lines == []
    else:
        currency = CURRENCY[provider] if line[3] == "provider" else line[3]
        assert backup_lines == [(*line[:3], currency)]
    assert data["backup"] == sentence
    here, complete, currency = HERE[provider][kind], kind != "unknown_endpoint", CURRENCY[provider]
    assert (data["totals"], data["summary"]["here"], data["summary"]["here_complete"]) == (here, here, complete)
    assert data["total"] == (here.get(currency, 0.0) if currency and complete else None)
    amounts = " + ".join(f"{value:.2f} {c}" for c, value in here.items()) or "0.00"
    assert data["summary"]["line"].startswith(
        f"This stack costs {'' if complete else 'at least '}{amounts} a month here"
        f"{' beyond your own host' if provider == 'onprem' else ''}{'' if complete else ' (a price is unknown)'}, "
        "against about 26.44 USD for the managed set")


def test_cost_text_says_what_the_backup_block_prices(cli, tmp_path):
    for kind in BACKUPS:
        result = cli("cost", "--file", str(_stack(tmp_path, _with_backup("hetzner", kind))))
        assert result.exit_code == 0, result.stderr
        assert f"\nBackups: {BACKUPS[kind][2]}.\n" in result.stdout, kind
    mixed = cli("cost", "--file", str(_stack(tmp_path, _with_backup("hetzner", "aws_store")))).stdout.splitlines()
    assert mixed[4] == "  backup storage  estimate: 20 GB in Amazon S3 Standard (us-east-1)     0.46 USD"
    assert mixed[5] == "  total                                                            7.63 EUR + 0.46 USD"
    unknown = cli("cost", "--file", str(_stack(tmp_path, _with_backup("hetzner", "unknown_endpoint")))).stdout
    assert "  backup storage  S3 at minio.example.com                               unknown\n" in unknown
    assert "  total                                                            incomplete: a price is unknown\n" in unknown
    assert unknown.splitlines()[-1].startswith("This stack costs at least 7.63 EUR a month here (a price is unknown), ")


@pytest.mark.parametrize("host, store", [
    ("fsn1.your-objectstorage.com", "Hetzner Object Storage"),
    ("team-backups.hel1.your-objectstorage.com", "Hetzner Object Storage"),
    ("fra1.digitaloceanspaces.com", "DigitalOcean Spaces"),
    ("team-backups.nyc3.digitaloceanspaces.com", "DigitalOcean Spaces"),
    ("s3.amazonaws.com", "Amazon S3 Standard (us-east-1)"),
    ("s3.eu-central-1.amazonaws.com", "Amazon S3 Standard (us-east-1)"),
    ("s3-eu-west-1.amazonaws.com", "Amazon S3 Standard (us-east-1)"),
    ("s3.dualstack.us-east-2.amazonaws.com", "Amazon S3 Standard (us-east-1)"),
    ("team-backups.s3.us-west-2.amazonaws.com", "Amazon S3 Standard (us-east-1)"),
    ("S3.EU-CENTRAL-1.AMAZONAWS.COM", "Amazon S3 Standard (us-east-1)"),
    ("minio.example.com", None),
    ("s3.example.com", None),
    ("s3.cn-north-1.amazonaws.com.cn", None),  # AWS China: other prices
    ("fsn1.your-objectstorage.com.example.net", None),
    ("ec2.us-east-1.amazonaws.com", None),
    (None, None),
])
def test_the_store_of_an_s3_endpoint(host, store):
    found = pricing.object_storage_at(host)
    assert (found.name if found else None) == store


# ----- managed equivalents and the closing line -----------------------------------------------------

def _offer(service, currency, monthly):
    return pricing.Managed(service, f"{service} offer", currency, monthly, "https://example.com/", "2026-12-06", "x")


@pytest.mark.parametrize("case, offers, services, expected", [
    ("cheapest_of_two", [_offer("a", "USD", 12.0), _offer("a", "USD", 9.5)], ["a"], (9.5, [])),
    ("summed_over_services", [_offer("a", "USD", 1.25), _offer("b", "USD", 2.5)], ["a", "b"], (3.75, [])),
    ("usage_billed_not_included", [_offer("a", "USD", None), _offer("b", "USD", 2.5)], ["a", "b"], (2.5, ["a"])),
    ("other_currency_not_summed", [_offer("a", "EUR", 1.0), _offer("a", "USD", 4.0)], ["a"], (4.0, [])),
    ("only_other_currency", [_offer("a", "EUR", 1.0)], ["a"], (0.0, ["a"])),
    ("disabled_service_ignored", [_offer("a", "USD", 1.0), _offer("b", "USD", 100.0)], ["a"], (1.0, [])),
])
def test_managed_set_sums_the_cheapest_flat_usd_price_of_each_service(case, offers, services, expected):
    assert pricing.managed_set(offers, services) == expected


def _everything(preset_only: bool = False) -> dict:
    from mlox_iac.components.services.registry import SERVICES

    services = {"preset": "full"} if preset_only else {name: {"enabled": True} for name in SERVICES}
    raw = settings("onprem", services=services)
    raw["onprem"]["memory_mb"] = 65536
    return raw


# The cheapest flat USD equivalent of each service when every one is enabled.
CHEAPEST = {"postgres": 13.98, "seaweedfs": 0.46, "redis": 11.68, "airflow": 357.7, "jupyter": 36.5,
            "serving": 83.95, "monitoring": 19.0, "home": 0.0, "caddy": 12.0}


def test_every_enabled_service_has_managed_equivalents_and_the_set_is_summed(cli, tmp_path):
    from mlox_iac.components.services.registry import SERVICES

    data = json.loads(cli("cost", "--file", str(write_stack(tmp_path, _everything())), "--json").stdout)
    rows = data["managed"]
    assert {row["service"] for row in rows} == set(SERVICES)
    for name in SERVICES:
        flat = [r["monthly"] for r in rows if r["service"] == name and r["monthly"] is not None and r["currency"] == "USD"]
        assert (min(flat) if flat else None) == CHEAPEST.get(name), name
    offers = {(r["service"], r["offer"]) for r in rows}
    for wanted in [("airflow", "Amazon MWAA, mw1.small environment (us-east-1)"),
                   ("airflow", "Google Cloud Composer 3, Small preset"),
                   ("jupyter", "Amazon SageMaker Studio JupyterLab space, ml.t3.medium, 24/7"),
                   ("jupyter", "Google Vertex AI Workbench instance, e2-standard-2"),
                   ("serving", "Amazon SageMaker real-time endpoint, one ml.m5.large instance, 24/7"),
                   ("feast", "Amazon SageMaker Feature Store, online store (standard tier)"),
                   ("label-studio", "Amazon SageMaker Ground Truth"),
                   ("label-studio", "Label Studio Starter Cloud (HumanSignal)"),
                   ("monitoring", "Grafana Cloud Pro (hosted Prometheus, Grafana, alerting)"),
                   ("monitoring", "Amazon Managed Service for Prometheus"),
                   ("redis", "Amazon ElastiCache for Redis OSS, one cache.t4g.micro node"),
                   ("redis", "Google Memorystore for Redis, Basic tier, 1 GB")]:
        assert wanted in offers, wanted
    assert all(row["note"] for row in rows if row["monthly"] is None)
    assert round(sum(CHEAPEST.values()), 2) == 535.27
    assert data["summary"] == {
        "here": {}, "here_complete": True, "managed": 535.27, "managed_currency": "USD",
        "managed_not_included": ["mlflow", "feast", "label-studio"],
        "line": "This stack costs 0.00 a month here beyond your own host, against about 535.27 USD for the managed "
                "set (not included, no flat list price: mlflow, feast, label-studio)"}


def test_the_full_preset_lists_equivalents_for_each_enabled_service(tmp_path):
    config = load_file(write_stack(tmp_path, _everything(preset_only=True)))
    report = pricing.report(config, None, datetime.date.today())
    assert {row.service for row in report.managed} == set(config.enabled_services())
    assert {"airflow", "jupyter", "feast", "label-studio", "redis"} <= set(config.enabled_services())


def test_the_summary_line_ends_the_text_output(cli, tmp_path):
    raw = _everything()
    raw["backup"] = {"repository": "s3:https://s3.amazonaws.com/team-backups", "access_key_id": "A",
                     "secret_access_key": "S"}
    result = cli("cost", "--file", str(_stack(tmp_path, raw)))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "This stack costs 0.46 USD a month here beyond your own host, against about 535.27 USD for the managed set "
        "(not included, no flat list price: mlflow, feast, label-studio).")


def test_cost_text_for_digitalocean_and_aws(cli, tmp_path):
    for provider, first in (("digitalocean", "  server          s-2vcpu-4gb: 2 vCPU, 4 GB RAM                       24.00 USD\n"),
                            ("aws", "  server          t3.medium: 2 vCPU, 4 GB RAM                         30.37 USD\n")):
        result = cli("cost", "--file", str(write_stack(tmp_path, settings(provider))))
        assert result.exit_code == 0, result.stderr
        assert result.stdout.splitlines(keepends=True)[1] == first
        module = PROVIDERS[provider]
        assert (f"Prices from {module.PRICE_SOURCE}, read on {module.PRICES_READ_ON} ({_age(module)} days ago)"
                in result.stdout)


def _recorded(name):
    document = json.loads((FIXTURES / name).read_text())

    def fetch(url, token):
        assert token == "tok"
        return document

    return fetch


def test_live_hetzner_prices_are_parsed_for_the_location(tmp_path, monkeypatch):
    config = load_file(write_stack(tmp_path, settings()))
    live = pricing.live_prices(config, pricing.builtin_prices(config), fetch=_recorded("hetzner_pricing.json"),
                               env={"HCLOUD_TOKEN": "tok"})
    assert (live.sizes["cx23"].monthly, live.sizes["cx33"].monthly) == (6.49, 9.49)
    assert live.sizes["cx43"].monthly == hetzner.EU_SIZES["cx43"].monthly  # not in the answer: built-in kept
    assert "cx22" not in live.sizes  # a retired type in the answer does not become orderable
    assert (live.volume_gb_monthly, live.ipv4_monthly, live.currency, live.read_on) == (0.0572, 0.5, "EUR", None)
    report = pricing.report(config, live, datetime.date.today())
    assert (report.total, report.age_days, report.source) == (8.13, None, "https://api.hetzner.cloud/v1/pricing")


def test_live_digitalocean_sizes_are_parsed(tmp_path):
    config = load_file(write_stack(tmp_path, settings("digitalocean")))
    live = pricing.live_prices(config, pricing.builtin_prices(config), fetch=_recorded("digitalocean_sizes.json"),
                               env={"DIGITALOCEAN_TOKEN": "tok"})
    assert live.sizes["s-2vcpu-4gb"].monthly == 26.0
    assert pricing.report(config, live, datetime.date.today()).total == 28.0


def test_live_prices_in_an_unexpected_shape_are_one_line(tmp_path):
    config = load_file(write_stack(tmp_path, settings()))
    with pytest.raises(pricing.MloxError) as error:
        pricing.live_prices(config, pricing.builtin_prices(config), fetch=lambda url, token: {"pricing": {}},
                            env={"HCLOUD_TOKEN": "tok"})
    assert str(error.value) == ("--live: https://api.hetzner.cloud/v1/pricing answered in an unexpected shape "
                                "(KeyError('server_types'))")


def test_live_without_a_token_or_a_price_api_exits_2(cli, tmp_path, monkeypatch):
    for name in ("HCLOUD_TOKEN", "MLOX_PROVIDER_TOKEN", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    result = cli("cost", "--file", str(write_stack(tmp_path, settings())), "--live")
    assert (result.exit_code, result.stderr) == (
        2, "--live: no hetzner API token (set HCLOUD_TOKEN, or pulumi config set --secret hcloud:token for a stack "
           "given with --stack)\n")
    for provider in ("aws", "onprem"):
        result = cli("cost", "--file", str(write_stack(tmp_path, settings(provider))), "--live")
        assert (result.exit_code, result.stderr) == (
            2, f"--live: {provider} publishes no prices to read with the stack's credentials (allowed: hetzner, "
               "digitalocean); the built-in table is used without --live\n")


def test_live_when_the_api_cannot_be_reached_exits_1(cli, tmp_path, monkeypatch):
    port = closed_port()
    monkeypatch.setitem(pricing.LIVE_URL, "digitalocean", f"http://127.0.0.1:{port}/v2/sizes")
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "tok")
    result = cli("cost", "--file", str(write_stack(tmp_path, settings("digitalocean"))), "--live")
    assert result.exit_code == 1
    assert result.stderr == f"error: --live: cannot reach http://127.0.0.1:{port}/v2/sizes: [Errno 111] Connection refused\n"


def test_validate_warns_when_a_smaller_size_holds_the_services(cli, tmp_path):
    path = write_stack(tmp_path, settings(hetzner={"location": "fsn1", "server_type": "cx43"}))
    result = cli("validate", "--file", str(path))
    assert result.exit_code == 0
    assert result.stderr == (f"warning: {path}: mlox:hetzner.server_type: cx23 (4096 MiB, 5.99 EUR/month) also holds "
                             "the enabled services (2720 MiB); cx43 costs 16.49\n")
    assert result.stdout.startswith(f"ok: {path} is valid")
    quiet = cli("validate", "--file", str(write_stack(tmp_path, settings())))
    assert (quiet.exit_code, quiet.stderr) == (0, "")
    arm = cli("validate", "--file", str(write_stack(tmp_path, settings(hetzner={"server_type": "cax21"}))))
    assert "cax11 (4096 MiB, 6.49 EUR/month)" in arm.stderr  # the same architecture only


def test_cost_with_an_unpriced_size_says_the_total_is_incomplete(cli, tmp_path):
    path = write_stack(tmp_path, settings(hetzner={"location": "sin", "server_type": "cpx21"}))
    result = cli("cost", "--file", str(path))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "  server          cpx21: 3 vCPU, 4 GB RAM                               unknown"
    assert lines[4] == "  total                                                            incomplete: a price is unknown"
    assert json.loads(cli("cost", "--file", str(path), "--json").stdout)["total"] is None


def _no_token_variables(monkeypatch):
    for name in ("HCLOUD_TOKEN", "MLOX_PROVIDER_TOKEN", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_live_reads_the_stacks_own_token_through_the_engine(cli, mlox_project, monkeypatch):
    import mlox_iac.automation as automation

    _no_token_variables(monkeypatch)
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "pass")
    double = RecordingPulumiCommand(stacks={"dev"}, config={"hcloud:token": "tok"})
    monkeypatch.setattr(automation, "default_pulumi_command", lambda command="": double)
    monkeypatch.setattr(pricing, "fetch_json", _recorded("hetzner_pricing.json"))
    result = cli("cost", "--stack", "dev", "--live", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["lines"][0]["monthly"], data["read_on"], data["age_days"]) == (6.49, None, None)
    get = double.call("config get")
    assert get.args[:3] == ["config", "get", "hcloud:token"] and get.args[-2:] == ["--stack", "dev"]


def test_live_without_the_pulumi_cli_names_the_variable(cli, mlox_project, no_pulumi, monkeypatch):
    _no_token_variables(monkeypatch)
    result = cli("cost", "--stack", "dev", "--live")
    assert (result.exit_code, result.stderr) == (
        2, "--live: no hetzner API token (set HCLOUD_TOKEN, or pulumi config set --secret hcloud:token for a stack "
           "given with --stack)\n")


EXTERNAL_S3 = {"access_key_id": "AKIA", "secret_access_key": "SECRET"}


def _external(endpoint: str, db_host: str) -> dict:
    from testca import root_ca

    return settings("hetzner", services={
        "seaweedfs": {"external": {"endpoint": endpoint, **EXTERNAL_S3}},
        "postgres": {"external": {"host": db_host, "admin_password": "pw", "ca": root_ca().cert_pem}}})


def test_cost_prices_the_parts_kept_at_a_provider(cli, tmp_path):
    path = write_stack(tmp_path, _external("https://fsn1.your-objectstorage.com", "db-mlox-do-user-1.b.db.ondigitalocean.com"))
    data = json.loads(cli("cost", "--file", str(path), "--json").stdout)
    parts = [tuple(row[k] for k in ("item", "detail", "monthly", "currency")) for row in data["lines"]
             if row["detail"].startswith("external")]
    assert parts == [("object storage", "external: 20 GB in Hetzner Object Storage", 6.49, "EUR"),
                     ("postgres", "external: DigitalOcean Managed PostgreSQL, 1 GiB single node", 15.15, "USD")]
    # cx23 7.13 + volume 20 GB + IPv4 (7.63 EUR, see the backup tests) and the parts.
    assert data["totals"] == {"EUR": 14.12, "USD": 15.15}
    text = cli("cost", "--file", str(path)).stdout
    assert "  object storage  external: 20 GB in Hetzner Object Storage" in text


def test_cost_of_a_part_at_an_unknown_host_is_unknown_not_guessed(cli, tmp_path):
    path = write_stack(tmp_path, _external("https://minio.example.com", "db.example.com"))
    data = json.loads(cli("cost", "--file", str(path), "--json").stdout)
    parts = [(row["item"], row["detail"], row["monthly"]) for row in data["lines"] if row["detail"].startswith("external")]
    assert parts == [("object storage", "external: S3 at minio.example.com", None),
                     ("postgres", "external: Postgres at db.example.com", None)]
    assert data["summary"]["here_complete"] is False
