"""A stack on external stores, under Pulumi mocks: no SeaweedFS or Postgres container, the
services pointed at the provider's endpoints, its credentials secret end to end, the outputs
telling clients (and ``status``) where the data is; and ``up`` refusing to switch a deployed
part's side without ``migrate --part``."""

from __future__ import annotations

import pytest
from conftest import settings
from testca import root_ca

from mlox_iac.automation import part_change_problem
from mlox_iac.config.loader import validate
from mlox_iac.plan import is_secret, unwrap

CA = root_ca().cert_pem
S3 = {"endpoint": "https://s3.provider.example", "region": "eu-1", "bucket_prefix": "acme-",
      "access_key_id": "EXTERNAL-ACCESS-KEY-1", "secret_access_key": "EXTERNAL-SECRET-KEY-1", "ca": CA}
PG = {"host": "db.provider.example", "port": 25060, "admin_user": "doadmin", "admin_password": "EXTERNAL-DB-PASSWORD-1",
      "ca": CA}


def external(**extra) -> dict:
    return settings(services={"seaweedfs": {"external": S3}, "postgres": {"external": PG}}, **extra)


def env_of(resources, name: str) -> dict[str, str]:
    env = next(r for r in resources if r.name == f"{name}-env")
    assert is_secret(env.inputs["stdin"]), name
    return dict(line.split("=", 1) for line in unwrap(env.inputs["stdin"]).splitlines())


def test_external_credentials_are_secret_and_reach_only_env_files(record, build_dir):
    resources, outputs = record(external())
    secrets = ("EXTERNAL-ACCESS-KEY-1", "EXTERNAL-SECRET-KEY-1", "EXTERNAL-DB-PASSWORD-1")
    for r in resources:
        for key, value in r.inputs.items():
            if not is_secret(value):
                assert not any(s in repr(value) for s in secrets), f"{r.name}.{key} carries an external credential"
    bundle = "".join(p.read_text() for p in build_dir.rglob("*") if p.is_file())
    assert bundle and not any(s in bundle for s in secrets)
    assert env_of(resources, "seaweedfs")["EXTERNAL_S3_ACCESS_KEY"] == "'EXTERNAL-ACCESS-KEY-1'"
    assert env_of(resources, "postgres")["EXTERNAL_POSTGRES_PASSWORD"] == "'EXTERNAL-DB-PASSWORD-1'"
    mlflow = env_of(resources, "mlflow")
    assert mlflow["AWS_ACCESS_KEY_ID"] == "'EXTERNAL-ACCESS-KEY-1'"
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "'https://s3.provider.example'"
    for key in ("s3_access_key", "s3_secret_key"):
        assert is_secret(outputs[key]) and unwrap(outputs[key]).startswith("EXTERNAL-")


def test_outputs_point_clients_at_the_external_store(record):
    _, outputs = record(external())
    assert unwrap(outputs["s3_endpoint"]) == "https://s3.provider.example"
    assert unwrap(outputs["s3_buckets"]) == ["acme-data", "acme-mlflow-artifacts"]
    assert "s3" not in unwrap(outputs["urls"])  # no proxy route to a store the server does not run
    parts = unwrap(outputs["parts"])
    assert parts["objects"] == {"uses": "external", "endpoint": "https://s3.provider.example", "ca": CA}
    assert parts["postgres"] == {"uses": "external", "host": "db.provider.example", "port": 25060,
                                 "sslmode": "verify-full", "ca": CA}


def test_the_servers_own_keys_are_generated_even_while_external(record):
    """A move home uses SeaweedFS' own keys: they exist (in state) from the first deploy."""
    resources, _ = record(external())
    names = {r.name for r in resources}
    assert {"seaweedfs-access-key", "seaweedfs-secret-key", "postgres-superuser"} <= names
    assert set(env_of(resources, "seaweedfs")) == {"S3_ACCESS_KEY", "S3_SECRET_KEY", "EXTERNAL_S3_ACCESS_KEY",
                                                   "EXTERNAL_S3_SECRET_KEY"}


def _config(raw):
    from conftest import secret_keys

    return validate(raw, secret_keys(raw), "stacks/Pulumi.prod.yaml", "prod")


DEPLOYED_LOCAL = {"provider": "hetzner", "parts": {"objects": {"uses": "local"}, "postgres": {"uses": "local"}}}


@pytest.mark.parametrize("case, deployed, raw, expected", [
    ("nothing_deployed", {}, external(), None),
    ("same_sides", DEPLOYED_LOCAL, settings(), None),
    ("deployed_before_parts_existed", {"provider": "hetzner"}, settings(), None),
    ("external_objects_without_migrate", DEPLOYED_LOCAL, settings(services={"seaweedfs": {"external": S3}}),
     "stacks/Pulumi.prod.yaml: mlox:services.seaweedfs.external: stack prod keeps its buckets on the server; this file "
     "puts them on an external store, where the services would find none of their data (allowed: the deployed side; "
     "to move the data run: mlox-iac migrate --stack prod --part objects --to external)"),
    ("old_deploy_external_postgres", {"provider": "hetzner"}, settings(services={"postgres": {"external": PG}}),
     "stacks/Pulumi.prod.yaml: mlox:services.postgres.external: stack prod keeps its databases on the server; this file "
     "puts them on an external store, where the services would find none of their data (allowed: the deployed side; "
     "to move the data run: mlox-iac migrate --stack prod --part postgres --to external)"),
    ("back_home_without_migrate", {"provider": "hetzner", "parts": {"objects": {"uses": "external"}}}, settings(),
     "stacks/Pulumi.prod.yaml: mlox:services.seaweedfs.external: stack prod keeps its buckets on an external store; "
     "this file puts them on the server, where the services would find none of their data (allowed: the deployed "
     "side; to move the data run: mlox-iac migrate --stack prod --part objects --to local)"),
    ("during_a_move", DEPLOYED_LOCAL,
     settings(services={"seaweedfs": {"external": S3}}, part_move={"part": "objects", "to": "external",
                                                                    "state": "cutover"}), None),
])
def test_up_refuses_to_switch_a_deployed_part_without_migrate(case, deployed, raw, expected):
    assert part_change_problem("prod", deployed, _config(raw), "stacks/Pulumi.prod.yaml") == expected


def test_env_points_boto3_at_a_bundle_with_the_external_stores_ca(tmp_path):
    from mlox_iac import connect

    caddy = tmp_path / "caddy-root.crt"
    caddy.write_text(root_ca("caddy local").cert_pem)
    outputs = {"s3_endpoint": "https://s3.provider.example", "s3_access_key": "a", "s3_secret_key": "b",
               "parts": {"objects": {"uses": "external", "endpoint": "https://s3.provider.example", "ca": CA}}}
    bundle = connect.write_ca_bundle(caddy, connect.external_s3_ca(outputs))
    env = connect.env_exports(outputs, caddy)
    assert env["AWS_ENDPOINT_URL_S3"] == "https://s3.provider.example"
    assert env["AWS_CA_BUNDLE"] == str(bundle) and CA in bundle.read_text() and caddy.read_text() in bundle.read_text()
    # The server's own store: boto3 trusts the server's CA alone, as before.
    local = {**outputs, "parts": {"objects": {"uses": "local"}}}
    assert connect.env_exports(local, caddy)["AWS_CA_BUNDLE"] == str(caddy)
    assert connect.external_s3_ca(local) is None
