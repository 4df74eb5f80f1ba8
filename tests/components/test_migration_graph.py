"""The program while a stack moves (``mlox:migration`` set), under Pulumi mocks."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import settings
from mlox_iac.plan import unwrap

ONPREM_B = {"host": "192.0.2.60", "private_key": "KEY-B", "memory_mb": 8192}


def moving(source: str, to: str, state: str = "provisioning", **extra) -> dict:
    raw = settings(source)
    if to == source:
        raw["target"] = {to: ONPREM_B if to == "onprem" else settings(to)[to]}
    else:
        raw[to] = ONPREM_B if to == "onprem" else settings(to)[to]
    raw["migration"] = {"to": to, "server": "b", "state": state, "source_address": "192.0.2.50", **extra}
    return raw


def names(resources) -> dict:
    return {r.name: r for r in resources}


@pytest.mark.parametrize("source,to", [("onprem", "onprem"), ("hetzner", "digitalocean"), ("digitalocean", "aws"),
                                       ("aws", "onprem"), ("onprem", "hetzner")])
def test_two_servers_with_unique_names_and_one_set_of_credentials(record, source, to):
    resources, outputs = record(moving(source, to))
    pairs = Counter((r.type, r.name) for r in resources)
    assert [p for p, n in pairs.items() if n > 1] == []
    types = Counter(r.type for r in resources)
    assert types["mlox:server:Server"] == 2 and types["mlox:server:Bundle"] == 2
    # Credentials are generated once and written to both servers.
    assert types["random:index/randomPassword:RandomPassword"] == 8
    by = names(resources)
    for service in ("postgres", "seaweedfs", "mlflow", "caddy"):
        old, new = by[f"{service}-env"], by[f"{service}-env-on-b"]
        assert unwrap(old.inputs["connection"])["host"] != unwrap(new.inputs["connection"])["host"]
        assert unwrap(old.inputs["stdin"]).replace("192.0.2.50", "X").count("=") == unwrap(new.inputs["stdin"]).count("=")
    pg_old, pg_new = unwrap(by["postgres-env"].inputs["stdin"]), unwrap(by["postgres-env-on-b"].inputs["stdin"])
    assert pg_old == pg_new  # the same passwords on both servers
    assert "b-bootstrap" in by and "main-bootstrap" in by
    # Until the cutover the stack serves from the old server.
    assert outputs["provider"] == source and outputs["server"] == "main"
    assert unwrap(outputs["migration"])["new"]["server"] == "b"


def test_the_new_server_admits_the_old_one_over_ssh(record):
    resources, _ = record(moving("onprem", "onprem"))
    script = unwrap(names(resources)["b-bootstrap"].inputs["stdin"])
    assert "192.0.2.50/32" in script
    assert "192.0.2.50/32" not in unwrap(names(resources)["main-bootstrap"].inputs["stdin"])


def test_after_the_cutover_outputs_point_at_the_new_server_and_the_old_one_is_protected(record):
    resources, outputs = record(moving("onprem", "onprem", state="cutover"))
    assert outputs["server"] == "b" and outputs["server_address"] == "192.0.2.60"
    by = names(resources)
    old = [r for r in resources if r.name.startswith("main-") and r.type != "mlox:server:Server"]
    assert old and all(r.protect for r in old), [r.name for r in old if not r.protect]
    assert not by["b-bootstrap"].protect and not by["b-bundle-compose-up"].protect


@pytest.mark.parametrize("source", ["digitalocean", "hetzner"])
def test_finishing_lifts_the_old_servers_protection(record, source):
    resources, _ = record(moving(source, "aws", state="finishing"))
    old = [r for r in resources if r.name.startswith("main-")]
    assert not any(r.protect for r in old)
    assert all(r.inputs.get("deleteProtection") in (None, False) for r in old)
    assert names(resources)["b-data"].protect  # the new server's volume keeps its protection


def test_the_new_servers_copy_is_disposable_until_the_cutover(record):
    """Abort removes the new server: its volume must not be delete-protected yet; it is after the cutover."""
    before, _ = record(moving("digitalocean", "hetzner"))
    after, _ = record(moving("digitalocean", "hetzner", state="cutover"))
    assert names(before)["b-data"].inputs["deleteProtection"] is False
    assert names(after)["b-data"].inputs["deleteProtection"] is True
