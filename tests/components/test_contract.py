"""The service contract: every registered service fills it in, and a service that misses a
part of it fails here (a unit test), not at deploy time."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from conftest import settings
from mlox_iac.components.services import base
from mlox_iac.components.services.base import (
    ContractError, Data, Managed, Route, check_compose, check_managed, check_service,
)
from mlox_iac.components.services.registry import SERVICES
from mlox_iac.config.loader import validate
from mlox_iac.render.bundle import render_compose


def everything_ctx(**overrides) -> base.Context:
    """A context with every registered service enabled, on a server big enough for all."""
    raw = settings("onprem", services={name: {"enabled": True} for name in SERVICES}, **overrides)
    raw["onprem"]["memory_mb"] = 65536
    return base.Context(validate(raw, {"onprem.private_key"}, "test.yaml", "test"))


@pytest.mark.parametrize("name", list(SERVICES))
def test_every_registered_service_fulfils_the_contract(name):
    service = SERVICES[name]
    check_service(service, set(SERVICES))
    for ctx in (everything_ctx(), everything_ctx(domain="ml.example.com", acme_email="ops@example.com")):
        check_compose(service, ctx)
    check_managed(service, everything_ctx())  # at least one managed equivalent, dated, with a source



def test_every_volume_of_the_full_stack_is_declared_by_exactly_one_service():
    ctx = everything_ctx()
    owners: dict[str, list[str]] = {}
    for name in ctx.config.enabled_services():
        for volume in SERVICES[name].data(ctx).declared_volumes():
            owners.setdefault(volume, []).append(name)
    assert set(owners) == set(render_compose(ctx)["volumes"])
    assert all(len(o) == 1 for o in owners.values()), owners


def test_databases_and_buckets_come_from_the_services_that_declare_them():
    from mlox_iac.components.services import postgres, seaweedfs

    ctx = everything_ctx()
    assert postgres.databases(ctx) == ["data", "mlflow", "feast", "labelstudio", "airflow"]  # data: the team's own
    assert seaweedfs.buckets(ctx) == ["data", "mlflow-artifacts", "labelstudio", "airflow-logs", "model-logs"]


# --- broken services: one change to a good one, and the exact complaint


def _good():
    return SERVICES["seaweedfs"]


def _compose_with(mutate):
    good = _good()

    def compose(ctx):
        part = copy.deepcopy(good.compose(ctx))
        mutate(part)
        return part

    return dataclasses.replace(good, compose=compose)


def _with_face(**changes):
    good = _good()
    return dataclasses.replace(good, faces=(dataclasses.replace(good.faces[0], **changes),))


class _NotAComponent:
    pass


class _NoDoc(base.ServiceSettings):
    pass


_NoDoc.__doc__ = None

STATIC_CASES = {
    "floating_tag": (dataclasses.replace(_good(), image="chrislusf/seaweedfs:latest"),
                     "service 'seaweedfs': image 'chrislusf/seaweedfs:latest' is not pinned to a version (repository:version)"),
    "no_tag": (dataclasses.replace(_good(), image="chrislusf/seaweedfs"),
               "service 'seaweedfs': image 'chrislusf/seaweedfs' is not pinned to a version (repository:version)"),
    "no_memory_budget": (dataclasses.replace(_good(), memory_mb=0),
                         "service 'seaweedfs': memory_mb must be a measured budget of at least 16 MiB"),
    "unknown_requirement": (dataclasses.replace(_good(), requires=("nginx",)),
                            "service 'seaweedfs': requires unknown service 'nginx'"),
    "settings_without_summary": (dataclasses.replace(_good(), settings=_NoDoc),
                                 "service 'seaweedfs': settings class needs a docstring (its first line is the service's summary)"),
    "face_with_unknown_auth": (_with_face(auth="oauth"),
                               "service 'seaweedfs': face 's3': auth must be one of basic, s3, login, token, "
                               "password, none"),
    "face_setting_from_an_unknown_output": (
        _with_face(settings={"url": ("AWS_ENDPOINT_URL_S3", "s3_url")}),
        "service 'seaweedfs': face 's3': url: source 's3_url' is not a stack output clients read (allowed: "
        "api_tokens, client_secrets, login_passwords, mlflow_tracking_uri, s3_access_key, s3_buckets, s3_endpoint, "
        "s3_secret_key, ui_passwords, ui_user, urls, '=literal' or None)"),
    "face_setting_not_a_variable": (_with_face(settings={"url": ("aws-endpoint", "s3_endpoint")}),
                                    "service 'seaweedfs': face 's3': url: 'aws-endpoint' is not an environment "
                                    "variable name"),
    "face_template_without_a_template_route": (_with_face(key="s3-*"),
                                               "service 'seaweedfs': face 's3-*': a key ending in '*' needs a route "
                                               "ending in '*', and only it"),
    "component_not_a_resource": (dataclasses.replace(_good(), component=_NotAComponent),
                                 "service 'seaweedfs': component must be a ServiceComponent (a Pulumi component built when deploying)"),
}


@pytest.mark.parametrize("case", sorted(STATIC_CASES))
def test_static_contract_violations(case):
    service, message = STATIC_CASES[case]
    with pytest.raises(ContractError) as err:
        check_service(service, set(SERVICES))
    assert str(err.value) == message


RENDER_CASES = {
    "no_health_check": (_compose_with(lambda p: p["services"]["seaweedfs"].pop("healthcheck")),
                        "service 'seaweedfs': container 'seaweedfs' has no health check"),
    "no_memory_limit": (_compose_with(lambda p: p["services"]["seaweedfs-buckets"].pop("deploy")),
                        "service 'seaweedfs': container 'seaweedfs-buckets' has no memory limit"),
    "limit_differs_from_budget": (dataclasses.replace(_good(), memory_mb=256, memory=None),
                                  "service 'seaweedfs': container 'seaweedfs' memory limit '512M' differs from memory_mb 256"),
    "undeclared_volume": (_compose_with(lambda p: p["volumes"].update({"scratch": {}})),
                          "service 'seaweedfs': volume 'scratch' is neither kept (Data.volumes) nor explained (Data.not_kept)"),
    "mounts_foreign_volume": (_compose_with(lambda p: p["services"]["seaweedfs"]["volumes"].append("postgres-data:/x")),
                              "service 'seaweedfs': container 'seaweedfs' mounts volume 'postgres-data' its compose part does not define"),
    "declares_missing_volume": (dataclasses.replace(_good(), data=lambda ctx: Data(volumes=("gone",), not_kept={"seaweedfs-data": "x"})),
                                "service 'seaweedfs': declares volume 'gone' that its compose part does not define"),
    "data_not_declared": (dataclasses.replace(_good(), data=lambda ctx: None),
                          "service 'seaweedfs': data(ctx) must return a Data"),
    "route_without_auth": (dataclasses.replace(_good(), routes=lambda ctx: [Route("s3", "seaweedfs:8333", auth="none")]),
                           "service 'seaweedfs': route 's3' has no authentication (auth must be 'basic' or 'own')"),
    "sidecar_limits_exceed_budget": (_compose_with(lambda p: p["services"].update(
        {"weed-extra": {**p["services"]["seaweedfs"], "volumes": []}})),
                                     "service 'seaweedfs': long-running containers' memory limits sum to 1024M, not memory_mb 512"),
    "no_main_container": (_compose_with(lambda p: p["services"].update({"weed": p["services"].pop("seaweedfs")})),
                          "service 'seaweedfs': compose part has no container named 'seaweedfs'"),
    "face_of_a_route_it_lacks": (_with_face(route="objects"),
                                 "service 'seaweedfs': face 's3': route 'objects' is not one of its routes"),
    "face_inside_sets_an_undeclared_setting": (
        _with_face(inside=lambda ctx, route: {"region": "us-east-1"}),
        "service 'seaweedfs': face 's3': inside sets 'region', which is not one of its settings"),
}


@pytest.mark.parametrize("case", sorted(RENDER_CASES))
def test_rendered_contract_violations(case):
    service, message = RENDER_CASES[case]
    with pytest.raises(ContractError) as err:
        check_compose(service, everything_ctx())
    assert str(err.value) == message


def test_registry_refuses_a_client_face_declared_twice():
    from mlox_iac.components.services import registry

    twin = dataclasses.replace(SERVICES["mlflow"], name="mlflow-twin", faces=SERVICES["mlflow"].faces)
    with pytest.raises(ValueError, match="a client face is declared twice"):
        registry._checked([*SERVICES.values(), twin])


def test_every_service_that_a_client_reaches_declares_its_face():
    """Every route has a face (its health path at least); every face a client package reads
    names an extra, and route-less faces (reached through a tunnel) have one."""
    from mlox_iac import faces

    ctx = everything_ctx()
    for name in ctx.config.enabled_services():
        for route in SERVICES[name].routes(ctx):
            assert faces.face_for_route(route.name) is not None, route.name
    client = faces.client_faces()["faces"]
    assert sorted(client) == ["airflow", "feast", "label-studio", "mlflow", "model-*", "postgres", "s3"]
    assert {face["extra"] for face in client.values()} == {"airflow", "feast", "labelstudio", "mlflow", None, "s3", "sql"}


def test_the_client_package_ships_the_current_faces():
    """mlox-client cannot import this package; its faces.json is generated from the faces."""
    from mlox_iac import faces

    assert faces.CLIENT_FACES.read_text() == faces.render_client_faces(), \
        "client/src/mlox_client/faces.json is stale: run python -m mlox_iac.faces"


def test_registry_refuses_a_service_registered_twice():
    from mlox_iac.components.services import registry

    with pytest.raises(ValueError, match="registered twice"):
        registry._checked([_good(), _good()])


def test_a_bucket_named_like_a_route_is_refused(monkeypatch):
    # On a bare address the S3 API and the routes share one path space: /mlflow/... is MLflow's.
    airflow = SERVICES["airflow"]
    monkeypatch.setitem(SERVICES, "airflow", dataclasses.replace(
        airflow, data=lambda ctx: dataclasses.replace(airflow.data(ctx), buckets=("mlflow",))))
    with pytest.raises(ContractError) as err:
        render_compose(everything_ctx())
    assert str(err.value) == ("bucket 'mlflow' is named like a route: the S3 API could not reach it on a bare "
                              "address; rename the bucket")


# --- managed equivalents: one change to a good one, and the exact complaint


def _managed(*offers):
    return dataclasses.replace(_good(), managed=lambda ctx: offers)


_OFFER = Managed("seaweedfs", "Some S3", "USD", 1.0, "https://example.com/pricing", "2026-12-06")

MANAGED_CASES = {
    "no_equivalent": (_managed(),
                      "service 'seaweedfs': managed(ctx) names no managed equivalent (at least one, with its list "
                      "price or how it is billed)"),
    "filed_under_another_service": (_managed(dataclasses.replace(_OFFER, service="mlflow")),
                                    "service 'seaweedfs': managed equivalent 'Some S3' is filed under 'mlflow'"),
    "source_not_https": (_managed(dataclasses.replace(_OFFER, source="example.com/pricing")),
                         "service 'seaweedfs': managed equivalent 'Some S3' has no https source"),
    "undated": (_managed(dataclasses.replace(_OFFER, read_on="2026")),
                "service 'seaweedfs': managed equivalent 'Some S3' has no read_on date (YYYY-MM-DD)"),
    "no_price_no_note": (_managed(dataclasses.replace(_OFFER, monthly=None)),
                         "service 'seaweedfs': managed equivalent 'Some S3' has no monthly price and no note saying "
                         "how it is billed"),
}


@pytest.mark.parametrize("case", sorted(MANAGED_CASES))
def test_managed_equivalent_violations(case):
    service, message = MANAGED_CASES[case]
    with pytest.raises(ContractError) as err:
        check_managed(service, everything_ctx())
    assert str(err.value) == message


def test_a_service_without_managed_equivalents_cannot_be_declared():
    fields = {f.name: getattr(_good(), f.name) for f in dataclasses.fields(_good()) if f.name != "managed"}
    with pytest.raises(TypeError, match="managed"):
        base.Service(**fields)
