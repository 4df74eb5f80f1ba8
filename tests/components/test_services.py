"""The services under mocks: their resources, secrets, and what a change touches."""

from __future__ import annotations

import pytest

from conftest import settings
from mlox_iac.plan import is_secret, unwrap


def named(resources):
    return {r.name: r for r in resources}


def children_of(resources, parent_name):
    parent = named(resources)[parent_name].urn
    return sorted(r.name for r in resources if r.parent == parent)


def test_each_service_is_a_component_with_its_secrets_and_env_file(record):
    resources, _ = record(settings())
    assert children_of(resources, "postgres") == ["postgres-db-data", "postgres-db-mlflow", "postgres-env",
                                                  "postgres-superuser"]
    assert children_of(resources, "seaweedfs") == ["seaweedfs-access-key", "seaweedfs-env", "seaweedfs-secret-key"]
    assert children_of(resources, "mlflow") == ["mlflow-env", "mlflow-flask-secret"]
    assert children_of(resources, "caddy") == ["caddy-env", "caddy-ui-home", "caddy-ui-mlflow"]
    assert children_of(resources, "main-bundle") == ["main-bundle-compose-up", "main-bundle-copy", "main-bundle-prepare"]
    types = {r.name: r.type for r in resources}
    assert types["mlflow"] == "mlox:service:Mlflow" and types["main"] == "mlox:server:Server"


@pytest.mark.parametrize("service, keys", [
    ("postgres", ["MLOX_DB_PASSWORD_DATA", "MLOX_DB_PASSWORD_MLFLOW", "POSTGRES_DB", "POSTGRES_PASSWORD",
                  "POSTGRES_USER"]),
    ("seaweedfs", ["S3_ACCESS_KEY", "S3_SECRET_KEY"]),
    ("mlflow", ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_S3_ENDPOINT_URL",
                "PGPASSWORD"]),
    ("caddy", ["MLOX_ADDRESS", "MLOX_AUTH_HOME", "MLOX_AUTH_MLFLOW", "MLOX_UI_USER"]),
])
def test_env_files_hold_the_service_credentials(record, service, keys):
    resources, _ = record(settings())
    env = named(resources)[f"{service}-env"]
    assert is_secret(env.inputs["stdin"])
    content = unwrap(env.inputs["stdin"])
    assert sorted(line.split("=", 1)[0] for line in content.splitlines()) == keys
    assert f"/opt/mlox/secrets/{service}.env" in env.inputs["create"]


def test_mlflow_shares_credentials_with_postgres_and_seaweedfs(record):
    resources, _ = record(settings())
    env = {name: dict(line.split("=", 1) for line in unwrap(named(resources)[f"{name}-env"].inputs["stdin"]).splitlines())
           for name in ("postgres", "seaweedfs", "mlflow")}
    assert env["mlflow"]["PGPASSWORD"] == env["postgres"]["MLOX_DB_PASSWORD_MLFLOW"]
    assert env["mlflow"]["AWS_ACCESS_KEY_ID"] == env["seaweedfs"]["S3_ACCESS_KEY"]
    assert env["mlflow"]["AWS_SECRET_ACCESS_KEY"] == env["seaweedfs"]["S3_SECRET_KEY"]
    assert len(env["mlflow"]["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == 48 + 2  # quoted


def test_caddy_env_holds_a_bcrypt_hash_not_the_password(record):
    resources, outputs = record(settings())
    content = unwrap(named(resources)["caddy-env"].inputs["stdin"])
    password = unwrap(outputs["ui_passwords"])["mlflow"]
    assert password not in content
    assert "MLOX_AUTH_MLFLOW='$2a$" in content


def _inputs(resources):
    """Each resource's inputs as text; assets by their path (their objects differ per run)."""
    import json

    def asset(value):
        return f"{type(value).__name__}({getattr(value, 'path', None)})"

    return {r.name: json.dumps(unwrap(r.inputs), sort_keys=True, default=asset) for r in resources}


def test_changing_one_service_setting_touches_only_the_bundle(record):
    a, _ = record(settings(services={"seaweedfs": {"buckets": ["data"]}}))
    b, _ = record(settings(services={"seaweedfs": {"buckets": ["data", "more"]}}))
    before, after = _inputs(a), _inputs(b)
    assert sorted(n for n in before if before[n] != after[n]) == ["main-bundle-compose-up", "main-bundle-copy"]


def test_changing_the_ui_user_touches_only_caddys_env_file(record):
    a, _ = record(settings())
    b, _ = record(settings(services={"caddy": {"ui_user": "ops"}}))
    before, after = _inputs(a), _inputs(b)
    assert sorted(n for n in before if before[n] != after[n]) == ["caddy-env"]


def test_unchanged_stack_gives_identical_inputs(record):
    a, _ = record(settings())
    b, _ = record(settings())
    assert _inputs(a) == _inputs(b)


def test_disabling_mlflow_removes_its_resources_and_database(record):
    resources, outputs = record(settings(services={"mlflow": {"enabled": False}}))
    names = named(resources)
    assert "mlflow" not in names and "postgres-db-mlflow" not in names and "caddy-ui-mlflow" not in names
    assert "mlflow_tracking_uri" not in outputs
    assert set(outputs["urls"]) == {"s3", "home"}


def test_stack_delete_keeps_data_unless_told(record):
    keep, _ = record(settings())
    drop, _ = record(settings(keep_data_on_destroy=False))
    assert "rm -rf" not in named(keep)["main-bundle-compose-up"].inputs["delete"]
    assert "rm -rf /mnt/mlox-data/volumes" in named(drop)["main-bundle-compose-up"].inputs["delete"]
    assert "down --remove-orphans" in named(keep)["main-bundle-compose-up"].inputs["delete"]


def test_outputs_name_every_service_url(record):
    _, outputs = record(settings(domain="ml.example.com", acme_email="ops@example.com"))
    assert outputs["urls"] == {"s3": "https://s3.ml.example.com", "mlflow": "https://mlflow.ml.example.com",
                              "home": "https://home.ml.example.com"}
    _, outputs = record(settings("onprem"))
    assert outputs["urls"] == {"s3": "https://192.0.2.50", "mlflow": "https://192.0.2.50/mlflow",
                              "home": "https://192.0.2.50/"}
    assert outputs["tls"] == "internal" and outputs["ui_user"] == "admin"
    assert outputs["s3_buckets"] == ["data", "mlflow-artifacts"]


FULL = settings("onprem", services={"preset": "full"})
# What the full preset's client containers get for mlox-client (faces.inside_secrets).
CLIENT_SECRETS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FEAST_DB_PASSWORD", "FEAST_REDIS_PASSWORD",
                  "LABEL_STUDIO_API_KEY", "MLOX_AIRFLOW_PASSWORD", "MLOX_POSTGRES_PASSWORD"]


@pytest.mark.parametrize("service, keys", [
    ("redis", ["REDIS_PASSWORD"]),
    ("feast", ["FEAST_DB_PASSWORD", "FEAST_REDIS_PASSWORD"]),
    ("label-studio", ["CSRF_TRUSTED_ORIGINS", "LABEL_STUDIO_HOST", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN",
                      "POSTGRE_PASSWORD", "SECRET_KEY", "STORAGE_AWS_ACCESS_KEY_ID", "STORAGE_AWS_SECRET_ACCESS_KEY"]),
    # Airflow and JupyterLab run user code: they also hold what mlox-client needs there.
    ("airflow", ["AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_CONN_AWS_DEFAULT", "AIRFLOW__API_AUTH__JWT_SECRET",
                 "AIRFLOW__API__BASE_URL", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY",
                 "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", *CLIENT_SECRETS]),
    ("jupyter", sorted([*CLIENT_SECRETS, "MLOX_JUPYTER_PASSWORD"])),
])
def test_full_preset_env_files_hold_the_service_credentials(record, service, keys):
    resources, _ = record(FULL)
    env = named(resources)[f"{service}-env"]
    assert is_secret(env.inputs["stdin"])
    assert sorted(line.split("=", 1)[0] for line in unwrap(env.inputs["stdin"]).splitlines()) == keys


def test_full_preset_shares_credentials_and_exports_logins_as_secrets(record):
    resources, outputs = record(FULL)
    env = {name: dict(line.split("=", 1) for line in unwrap(named(resources)[f"{name}-env"].inputs["stdin"]).splitlines())
           for name in ("postgres", "redis", "feast", "jupyter", "label-studio")}
    assert env["feast"]["FEAST_DB_PASSWORD"] == env["postgres"]["MLOX_DB_PASSWORD_FEAST"] == env["jupyter"]["FEAST_DB_PASSWORD"]
    assert env["feast"]["FEAST_REDIS_PASSWORD"] == env["redis"]["REDIS_PASSWORD"] == env["jupyter"]["FEAST_REDIS_PASSWORD"]
    assert env["label-studio"]["POSTGRE_PASSWORD"] == env["postgres"]["MLOX_DB_PASSWORD_LABELSTUDIO"]
    assert env["label-studio"]["LABEL_STUDIO_HOST"] == "'https://192.0.2.50/label-studio'"
    assert env["label-studio"]["CSRF_TRUSTED_ORIGINS"] == "'https://192.0.2.50'"
    for key in ("login_passwords", "api_tokens", "ui_passwords"):
        assert is_secret(outputs[key]), key
    assert sorted(unwrap(outputs["login_passwords"])) == ["airflow", "jupyter", "label-studio"]
    airflow = {name: dict(line.split("=", 1) for line in unwrap(named(resources)["airflow-env"].inputs["stdin"]).splitlines())
               for name in ("airflow",)}["airflow"]
    import base64

    assert len(base64.urlsafe_b64decode(airflow["AIRFLOW__CORE__FERNET_KEY"].strip("'"))) == 32  # a valid Fernet key
    assert env["postgres"]["MLOX_DB_PASSWORD_AIRFLOW"].strip("'") in airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert sorted(unwrap(outputs["api_tokens"])) == ["label-studio"]
    # Monitoring's UIs are behind the proxy's basic auth; serving with no models has no route yet.
    assert sorted(unwrap(outputs["ui_passwords"])) == ["alertmanager", "feast", "home", "mlflow", "prometheus"]
    assert not [url for url in unwrap(outputs["urls"]) if url.startswith("model-")]
    assert unwrap(outputs["urls"])["feast"] == "https://192.0.2.50/feast"
    # A change to Redis' password re-applies Feast, then JupyterLab (which takes it from Feast's).
    feast_env = named(resources)["feast-env"]
    assert named(resources)["redis-env"].urn in feast_env.dependencies
    assert feast_env.urn in named(resources)["jupyter-env"].dependencies
    # mlox-client's credentials: the same values in the client containers and, for those no
    # other output holds, in the client_secrets output.
    assert is_secret(outputs["client_secrets"])
    secrets = unwrap(outputs["client_secrets"])
    assert sorted(secrets) == ["FEAST_DB_PASSWORD", "FEAST_REDIS_PASSWORD", "MLOX_POSTGRES_PASSWORD"]
    assert env["jupyter"]["MLOX_POSTGRES_PASSWORD"] == env["postgres"]["MLOX_DB_PASSWORD_DATA"]
    assert env["jupyter"]["MLOX_POSTGRES_PASSWORD"].strip("'") == secrets["MLOX_POSTGRES_PASSWORD"]
    assert airflow["MLOX_AIRFLOW_PASSWORD"] == airflow["AIRFLOW_ADMIN_PASSWORD"]
    assert env["jupyter"]["LABEL_STUDIO_API_KEY"].strip("'") == unwrap(outputs["api_tokens"])["label-studio"]


def test_the_whole_catalogue_records_with_every_service_enabled(record):
    """Every service's component builds under mocks with everything on (monitoring and a served model too)."""
    raw = settings("onprem", services={"preset": "full", "monitoring": {"enabled": True},
                                       "serving": {"enabled": True, "models": [{"name": "iris"}]}})
    raw["onprem"]["memory_mb"] = 65536
    resources, outputs = record(raw)
    envs = {r.name for r in resources if r.name.endswith("-env")}
    assert {"monitoring-env", "serving-env", "airflow-env", "mlflow-env"} <= envs, sorted(envs)
    assert "model-iris" in outputs["urls"]
