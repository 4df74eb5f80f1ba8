"""What connect() gives for each service, against the settings mlox-iac exports; local HTTPS
services behind a throwaway CA where the client talks HTTP itself (models, Airflow, Feast's
feature server)."""

from __future__ import annotations

import json
import os

import pytest
from client_helpers import basic, clean, exported, service, write_profile  # noqa: F401 (fixtures)

import mlox_client
from mlox_client import InsecureTLS, MissingExtra, NotInStack, RemoteError, Secret, SettingMissing


def _connect(clean, port=443, ca=None, **changes):
    write_profile(clean, "dev", exported(port, ca_path=ca, **changes))
    return mlox_client.connect()


# ----- MLflow --------------------------------------------------------------------------

def test_connect_points_mlflow_at_the_stack_with_its_ca(clean):
    ca = clean / "root.crt"
    _connect(clean, ca=ca)
    assert {k: os.environ[k] for k in os.environ if k.startswith("MLFLOW_")} == {
        "MLFLOW_TRACKING_URI": "https://127.0.0.1:443/mlflow",
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "ui-pass",
        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca),
    }
    assert os.environ["REQUESTS_CA_BUNDLE"] == f"{ca}.bundle.pem"  # presigned S3 downloads (plain requests)


def test_mlflow_module_and_client_are_the_stacks(clean):
    import mlflow  # noqa: F401 (setup installs every extra the tests use: a missing one fails)
    stack = _connect(clean)
    assert stack.mlflow.module().get_tracking_uri() == "https://127.0.0.1:443/mlflow"
    assert stack.mlflow.client()._registry_uri == "https://127.0.0.1:443/mlflow"


def test_nothing_turns_tls_verification_off(clean, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    with pytest.raises(InsecureTLS) as err:
        _connect(clean)
    assert str(err.value) == ("MLFLOW_TRACKING_INSECURE_TLS is set: mlox-client verifies the stack's certificate "
                              "against its CA instead; unset it")


# ----- S3 ------------------------------------------------------------------------------

def test_s3_for_boto3_is_path_style_and_verifies_with_the_ca(clean):
    import boto3  # noqa: F401
    ca = clean / "root.crt"
    stack = _connect(clean, ca=ca)
    client = stack.s3.client()
    assert client.meta.endpoint_url == "https://127.0.0.1:443"
    assert client.meta.config.s3 == {"addressing_style": "path"}
    assert client._endpoint.http_session._verify == str(ca)
    assert client._request_signer._credentials.access_key == "AKTEST"
    assert stack.s3.url("data", "/x/y.parquet") == "s3://data/x/y.parquet"
    assert stack.s3.buckets == ["mlflow", "data"]


def test_s3_storage_options_for_pandas_and_fsspec(clean):
    ca = clean / "root.crt"
    assert _connect(clean, ca=ca).s3.storage_options == {
        "key": "AKTEST", "secret": "SKTEST", "endpoint_url": "https://127.0.0.1:443",
        "client_kwargs": {"region_name": "us-east-1", "verify": str(ca)},
        "config_kwargs": {"s3": {"addressing_style": "path"}},
    }


def test_s3_for_pyarrow_passes_endpoint_and_ca_itself(clean):
    import pyarrow.fs as fs
    stack = _connect(clean, ca=clean / "root.crt")
    filesystem = stack.s3.filesystem()
    assert isinstance(filesystem, fs.S3FileSystem)
    assert filesystem.region == "us-east-1"


def test_without_the_extra_the_error_names_it(clean):
    stack = _connect(clean)
    for module, call, message in (
        ("feast", lambda: stack.feast.store(), "stack.feast.store() needs feast: pip install 'mlox-client[feast]'"),
        ("label_studio_sdk", lambda: stack.label_studio.client(),
         "stack.label_studio.client() needs label_studio_sdk: pip install 'mlox-client[labelstudio]'"),
        ("sqlalchemy", lambda: stack.postgres.url(), "stack.postgres.url() needs sqlalchemy: pip install 'mlox-client[sql]'"),
        ("pyarrow", lambda: stack.s3.filesystem(), "stack.s3.filesystem() needs pyarrow: pip install 'mlox-client[s3]'"),
    ):
        if __import__("importlib").util.find_spec(module) is not None:
            continue  # installed here
        with pytest.raises(MissingExtra) as err:
            call()
        assert str(err.value) == message


# ----- services the stack does not run, settings it lacks --------------------------------

def test_a_service_the_stack_does_not_run_names_what_enables_it(clean):
    stack = _connect(clean, services=["postgres", "seaweedfs", "mlflow", "caddy"])
    cases = {
        "feast": "the stack 'dev' does not run feast: set mlox:services.preset: full (or mlox:services.feast.enabled: "
                 "true) in its stack file and run mlox-iac up",
        "airflow": "the stack 'dev' does not run airflow: set mlox:services.preset: full (or "
                   "mlox:services.airflow.enabled: true) in its stack file and run mlox-iac up",
        "label_studio": "the stack 'dev' does not run label-studio: set mlox:services.preset: full (or "
                        "mlox:services.label-studio.enabled: true) in its stack file and run mlox-iac up",
    }
    for attribute, message in cases.items():
        with pytest.raises(NotInStack) as err:
            getattr(stack, attribute)
        assert str(err.value) == message
    with pytest.raises(NotInStack) as err:
        stack.model("churn")
    assert str(err.value) == ("the stack 'dev' does not run serving: set mlox:services.preset: full (or "
                              "mlox:services.serving.enabled: true) in its stack file and run mlox-iac up")


def test_a_model_the_stack_does_not_serve(clean):
    with pytest.raises(NotInStack) as err:
        _connect(clean).model("fraud")
    assert str(err.value) == ("the stack 'dev' serves no model 'fraud' (it serves: churn): add it to "
                              "mlox:services.serving.models and run mlox-iac up")


def test_a_setting_a_stack_predating_it_lacks(clean):
    stack = _connect(clean, client_secrets={})  # deployed before mlox-client: no database passwords in its outputs
    with pytest.raises(SettingMissing) as err:
        stack.feast.config()
    assert str(err.value) == (f"FEAST_DB_PASSWORD is not set in profile {clean}/config/mlox/dev.json: run mlox-iac "
                              "up if the stack predates it, then export the settings again (mlox-iac env "
                              "--show-secrets, or --write-profile)")


# ----- Postgres and Feast ----------------------------------------------------------------

def test_postgres_and_feast_from_outside_go_through_tunnels(clean, monkeypatch):
    stack = _connect(clean)
    opened = []

    def tunnel(remote):
        opened.append(remote)
        return "127.0.0.1", {"127.0.0.1:15432": 50001, "127.0.0.1:16379": 50002}[remote]

    monkeypatch.setattr(stack, "tunnel", tunnel)
    assert stack.postgres.address() == ("127.0.0.1", 50001)
    config = stack.feast.config(repo_path="/repo")
    assert config["registry"]["path"] == "postgresql+psycopg://feast@127.0.0.1:50001/feast"  # no password in it
    assert config["registry"]["sqlalchemy_config_kwargs"] == {"pool_pre_ping": True, "connect_args": {"password": "feast-db"}}
    assert config["offline_store"] == {"type": "postgres", "host": "127.0.0.1", "port": 50001, "database": "feast",
                                       "db_schema": "public", "user": "feast", "password": "feast-db", "sslmode": "disable"}
    assert config["online_store"] == {"type": "redis", "connection_string": "127.0.0.1:50002,password=redis-pw"}
    assert (config["project"], config["repo_path"], config["entity_key_serialization_version"]) == ("mlox", "/repo", 3)
    assert set(opened) == {"127.0.0.1:15432", "127.0.0.1:16379"}


def test_postgres_url_hides_its_password(clean, monkeypatch):
    import sqlalchemy  # noqa: F401
    stack = _connect(clean)
    monkeypatch.setattr(stack, "tunnel", lambda remote: ("127.0.0.1", 50001))
    url = stack.postgres.url()
    assert (url.username, url.password, url.host, url.port, url.database) == ("data", "pg-pass", "127.0.0.1", 50001, "data")
    assert "pg-pass" not in str(url) and "pg-pass" not in repr(url)


def test_feast_online_features_through_the_feature_server(clean, service):
    def online(handler, body):
        assert handler.headers["Authorization"] == basic("admin", "feast-ui")
        return 200, {"metadata": {"feature_names": ["driver_id", "rate"]}, "echo": json.loads(body)}

    port, tls, _ = service({("POST", "/feast/get-online-features"): online})
    stack = _connect(clean, port, ca=tls.ca_path)
    answer = stack.feast.online_features(["stats:rate"], {"driver_id": [1001]})
    assert answer["echo"] == {"features": ["stats:rate"], "entities": {"driver_id": [1001]}}


# ----- served models ----------------------------------------------------------------------

def test_model_predict_with_its_password_and_the_stacks_ca(clean, service):
    def invocations(handler, body):
        if handler.headers.get("Authorization") != basic("admin", "model-pass"):
            return 401, b"unauthorized"
        return 200, {"predictions": [len(json.loads(body)["dataframe_split"]["data"])]}

    port, tls, server = service({("POST", "/model-churn/invocations"): invocations})
    stack = _connect(clean, port, ca=tls.ca_path)
    model = stack.model("churn")
    assert model.url == f"https://127.0.0.1:{port}/model-churn"
    assert model.headers() == {"Content-Type": "application/json", "Authorization": basic("admin", "model-pass")}
    import pandas
    assert model.predict(pandas.DataFrame({"x": [1.0, 2.0, 3.0]})) == [3]
    sent = json.loads(server.requests[-1][3])
    assert sent == {"dataframe_split": {"columns": ["x"], "index": [0, 1, 2], "data": [[1.0], [2.0], [3.0]]}}
    assert stack.models == ["model-churn"]


def test_tls_is_verified_against_the_stack_ca_only(clean, service):
    port, _, _ = service({("POST", "/model-churn/invocations"): lambda h, b: (200, {"predictions": []})})
    other = __import__("tests.cli.cli_helpers", fromlist=["make_tls"]).make_tls(clean / "other").ca_path
    stack = _connect(clean, port, ca=other)  # a root that did not issue the server's certificate
    with pytest.raises(RemoteError) as err:
        stack.model("churn").predict({"inputs": [1]})
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)


def test_an_error_answer_names_status_and_url_never_the_credentials(clean, service):
    port, tls, _ = service({("POST", "/model-churn/invocations"): lambda h, b: (503, {"error": "no version yet"})})
    stack = _connect(clean, port, ca=tls.ca_path)
    with pytest.raises(RemoteError) as err:
        stack.model("churn").predict({"inputs": [[1.0]]})
    assert str(err.value) == (f'POST https://127.0.0.1:{port}/model-churn/invocations: HTTP 503: '
                              '{"error": "no version yet"}')
    assert err.value.status == 503


# ----- Airflow ---------------------------------------------------------------------------

def _airflow(states, failed_task=None):
    """A fake Airflow 3 API under /airflow: token, unpause, trigger, run state, tasks, logs."""
    answers = iter(states)
    issued = []

    def token(handler, body):
        assert json.loads(body) == {"username": "admin", "password": "af-pass"}
        issued.append(f"jwt{len(issued)}")
        return 201, {"access_token": issued[-1]}

    def authed(fn):
        def wrapped(handler, body):
            if handler.headers.get("Authorization") != f"Bearer {issued[-1] if issued else ''}":
                return 401, {"detail": "Not authenticated"}
            return fn(handler, body)
        return wrapped

    run = "manual__2026-01-01T00:00:00+00:00"
    quoted = "manual__2026-01-01T00%3A00%3A00%2B00%3A00"
    task_state = "failed" if failed_task else "success"
    return {
        ("POST", "/airflow/auth/token"): token,
        ("PATCH", "/airflow/api/v2/dags/train"): authed(lambda h, b: (200, {"is_paused": json.loads(b)["is_paused"]})),
        ("POST", "/airflow/api/v2/dags/train/dagRuns"): authed(lambda h, b: (200, {"dag_run_id": run, "conf": json.loads(b)["conf"]})),
        ("GET", f"/airflow/api/v2/dags/train/dagRuns/{quoted}"): authed(lambda h, b: (200, {"state": next(answers)})),
        ("GET", f"/airflow/api/v2/dags/train/dagRuns/{quoted}/taskInstances"): authed(lambda h, b: (200, {
            "task_instances": [{"task_id": "fit", "state": task_state, "try_number": 1}]
            # A task after a failed one never starts: no try, no log (its log answers 404).
            + ([{"task_id": "deploy", "state": "upstream_failed", "try_number": 0}] if failed_task else [])})),
        ("GET", f"/airflow/api/v2/dags/train/dagRuns/{quoted}/taskInstances/fit/logs/1"): authed(lambda h, b: (200, {
            "content": [{"event": "starting"}, {"event": "MLOX fitted"}]})),
    }, run, issued


def test_airflow_trigger_wait_and_logs(clean, service):
    routes, run, _ = _airflow(["queued", "running", "success"])
    port, tls, server = service(routes)
    airflow = _connect(clean, port, ca=tls.ca_path).airflow
    assert airflow.trigger("train", {"epochs": 3}) == run
    assert airflow.wait("train", run, poll=0.01) == "success"
    assert airflow.task_logs("train", run) == {"fit": "starting\nMLOX fitted"}
    methods = [(m, p.split("/api/v2")[-1]) for m, p, _, _ in server.requests]
    assert methods[:3] == [("POST", "/airflow/auth/token"), ("PATCH", "/dags/train"), ("POST", "/dags/train/dagRuns")]
    assert json.loads(server.requests[2][3]) == {"logical_date": None, "conf": {"epochs": 3}}


def test_airflow_failed_run_names_its_failed_tasks(clean, service):
    routes, run, _ = _airflow(["running", "failed"], failed_task="fit")
    port, tls, _ = service(routes)
    airflow = _connect(clean, port, ca=tls.ca_path).airflow
    with pytest.raises(RemoteError) as err:
        airflow.wait("train", run, poll=0.01)
    assert str(err.value) == (f"the run {run} of train failed (tasks: fit); stack.airflow.task_logs('train', "
                              f"{run!r}) has their logs")
    assert airflow.task_logs("train", run) == {"fit": "starting\nMLOX fitted", "deploy": ""}


def test_airflow_logs_in_again_when_the_token_expires(clean, service):
    routes, run, issued = _airflow(["success"])
    port, tls, _ = service(routes)
    airflow = _connect(clean, port, ca=tls.ca_path).airflow
    airflow._token = "expired"
    assert airflow.state("train", run) == "success"
    assert issued == ["jwt0"]


# ----- Label Studio ----------------------------------------------------------------------

def test_label_studio_token(clean):
    labeling = _connect(clean).label_studio
    assert labeling.url == "https://127.0.0.1:443/label-studio"
    assert labeling.headers() == {"Authorization": "Token ls-token"}


# ----- no secret in any repr, str or message ----------------------------------------------

def test_no_secret_in_reprs(clean, monkeypatch):
    from client_helpers import SECRETS

    stack = _connect(clean)
    monkeypatch.setattr(stack, "tunnel", lambda remote: ("127.0.0.1", 50001))
    shown = [repr(stack), str(stack), repr(stack.settings), repr(stack.s3), repr(stack.mlflow), repr(stack.postgres),
             repr(stack.feast), repr(stack.airflow), repr(stack.label_studio), repr(stack.model("churn"))]
    for text in shown:
        assert not any(secret in text for secret in SECRETS), text
    password = stack.settings.value("postgres", "password")
    assert isinstance(password, Secret) and password.reveal() == "pg-pass"
    assert (repr(password), str(password), f"{password}", "%s" % password) == ("Secret('[secret]')",) + ("[secret]",) * 3
    assert password == Secret("pg-pass") and password != Secret("other")
    with pytest.raises(TypeError, match="a Secret is not pickled"):
        __import__("pickle").dumps(password)
