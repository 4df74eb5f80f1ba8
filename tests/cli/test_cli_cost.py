"""Server sizes, prices and ``mlox-iac cost``: the size tables, retired sizes, the cost report
(text and JSON) for every provider, live prices parsed from API responses, and the
smaller-size warning of ``validate``.

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
  backup storage  estimate: 20 GB in Hetzner Object Storage            6.49 EUR
  total                                                               14.12 EUR
Prices from https://www.hetzner.com/cloud/, read on 2026-09-04 ({age} days ago); --live reads today's where the provider publishes them.
Managed equivalents of the enabled services (list prices, smallest tier):
"""


def _age(module) -> int:
    return (datetime.date.today() - datetime.date.fromisoformat(module.PRICES_READ_ON)).days


def test_cost_text_for_hetzner(cli, tmp_path):
    result = cli("cost", "--file", str(write_stack(tmp_path, settings())))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(HETZNER_TEXT.format(age=_age(hetzner)))
    managed = result.stdout.split("smallest tier):\n", 1)[1].splitlines()
    assert [line.split()[0] for line in managed] == ["mlflow", "mlflow", "postgres", "postgres", "seaweedfs",
                                                     "seaweedfs", "seaweedfs", "caddy", "caddy", "caddy"]
    assert "Amazon RDS for PostgreSQL db.t4g.micro, single-AZ, 20 GB gp2" in managed[2] and "13.98 USD" in managed[2]


@pytest.mark.parametrize("provider, lines, total, currency", [
    ("hetzner", [("server", "cx23: 2 vCPU, 4 GB RAM", 5.99), ("data volume", "20 GB", 1.14),
                 ("public IPv4", "1 address", 0.5), ("backup storage", "estimate: 20 GB in Hetzner Object Storage", 6.49)],
     14.12, "EUR"),
    ("digitalocean", [("server", "s-2vcpu-4gb: 2 vCPU, 4 GB RAM", 24.0), ("data volume", "20 GB", 2.0),
                      ("public IPv4", "1 address (included)", 0.0),
                      ("backup storage", "estimate: 20 GB in DigitalOcean Spaces", 5.0)], 31.0, "USD"),
    ("aws", [("server", "t3.medium: 2 vCPU, 4 GB RAM", 30.37), ("data volume", "20 GB", 1.6),
             ("public IPv4", "1 address", 3.65),
             ("backup storage", "estimate: 20 GB in Amazon S3 Standard (us-east-1)", 0.46)], 36.08, "USD"),
])
def test_cost_json_for_each_cloud_provider(cli, tmp_path, provider, lines, total, currency):
    result = cli("cost", "--file", str(write_stack(tmp_path, settings(provider))), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(line["item"], line["detail"], line["monthly"]) for line in data["lines"]] == lines
    assert (data["total"], data["currency"], data["provider"]) == (total, currency, provider)
    assert data["read_on"] == PROVIDERS[provider].PRICES_READ_ON and data["age_days"] == _age(PROVIDERS[provider])
    assert {row["service"] for row in data["managed"]} == {"mlflow", "postgres", "seaweedfs", "caddy"}


def test_cost_for_onprem_prices_only_the_managed_equivalents(cli, tmp_path):
    raw = settings("onprem", services={"mlflow": {"enabled": False}})
    text = cli("cost", "--file", str(write_stack(tmp_path, raw)))
    assert text.exit_code == 0, text.stderr
    assert text.stdout.startswith("Monthly cost of stack test (onprem):\n  server          your own host")
    assert "On-prem: the host is yours; nothing is paid to a provider.\n" in text.stdout
    data = json.loads(cli("cost", "--file", str(write_stack(tmp_path, raw)), "--json").stdout)
    assert (data["total"], data["currency"], data["read_on"]) == (None, None, None)
    assert {row["service"] for row in data["managed"]} == {"postgres", "seaweedfs", "caddy"}


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
    assert (report.total, report.age_days, report.source) == (14.62, None, "https://api.hetzner.cloud/v1/pricing")


def test_live_digitalocean_sizes_are_parsed(tmp_path):
    config = load_file(write_stack(tmp_path, settings("digitalocean")))
    live = pricing.live_prices(config, pricing.builtin_prices(config), fetch=_recorded("digitalocean_sizes.json"),
                               env={"DIGITALOCEAN_TOKEN": "tok"})
    assert live.sizes["s-2vcpu-4gb"].monthly == 26.0
    assert pricing.report(config, live, datetime.date.today()).total == 33.0


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
                             "the enabled services (2688 MiB); cx43 costs 16.49\n")
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
    assert lines[5] == "  total                                                            incomplete: a price is unknown"
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
