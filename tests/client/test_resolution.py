"""Where mlox_client.connect() reads a stack from, in order, and each way it refuses."""

from __future__ import annotations

import os

import pytest
from client_helpers import clean, exported, write_inside, write_profile  # noqa: F401 (clean: a fixture)

import mlox_client
from mlox_client import NotConfigured, ProfileError


def test_explicit_profile_path_comes_first(clean, monkeypatch):
    path = write_profile(clean, "prod", exported(stack="prod"))
    monkeypatch.setenv("MLOX_STACK", "dev")  # an environment for another stack does not matter
    stack = mlox_client.connect(profile=path, configure_mlflow=False)
    assert (stack.name, stack.source) == ("prod", f"profile {path}")


def test_named_stack_takes_its_profile_over_another_stacks_environment(clean, monkeypatch):
    write_profile(clean, "prod", exported(stack="prod"))
    for key, value in exported(stack="dev").items():
        monkeypatch.setenv(key, value)
    assert mlox_client.connect("prod", configure_mlflow=False).source.startswith("profile ")
    assert mlox_client.connect("dev", configure_mlflow=False).source == "environment variables"


def test_environment_comes_before_profiles(clean, monkeypatch):
    write_profile(clean, "prod", exported(stack="prod"))
    for key, value in exported(stack="dev").items():
        monkeypatch.setenv(key, value)
    stack = mlox_client.connect(configure_mlflow=False)
    assert (stack.name, stack.source) == ("dev", "environment variables")
    assert stack.s3.endpoint == "https://127.0.0.1:443"


def test_the_only_profile_is_used(clean):
    path = write_profile(clean, "prod", exported(stack="prod"))
    stack = mlox_client.connect(configure_mlflow=False)
    assert (stack.name, stack.source) == ("prod", f"profile {path}")
    assert "feast" in stack.services


def test_several_profiles_need_a_name(clean):
    write_profile(clean, "prod", exported(stack="prod"))
    write_profile(clean, "dev", exported(stack="dev"))
    with pytest.raises(NotConfigured) as err:
        mlox_client.connect()
    assert str(err.value) == (f"several profiles in {clean}/config/mlox (dev, prod): say which, e.g. "
                              "mlox_client.connect('dev')")
    assert mlox_client.connect("prod", configure_mlflow=False).name == "prod"


def test_inside_the_stack_the_settings_file_and_the_containers_secrets(clean, monkeypatch):
    write_inside(clean, {"format": 1, "stack": "prod", "secrets": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
                         "env": {"MLOX_STACK": "prod", "MLOX_SERVICES": "postgres,seaweedfs,mlflow",
                                 "AWS_ENDPOINT_URL_S3": "http://seaweedfs:8333", "MLFLOW_TRACKING_URI": "http://mlflow:5000/mlflow",
                                 "MLOX_POSTGRES_ADDRESS": "postgres:5432", "MLOX_POSTGRES_DATABASE": "data",
                                 "MLOX_POSTGRES_USER": "data"}})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIN")  # from the container's env file
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SKIN")
    stack = mlox_client.connect("prod")
    assert stack.settings.inside and stack.source == f"the stack's settings file {clean}/etc/client.json"
    assert stack.s3.storage_options["key"] == "AKIN" and stack.s3.endpoint == "http://seaweedfs:8333"
    assert stack.postgres.address() == ("postgres", 5432)  # directly: no tunnel inside
    # MLflow past the proxy: no login, no CA.
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow:5000/mlflow"
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ and "MLFLOW_TRACKING_SERVER_CERT_PATH" not in os.environ


def test_nothing_found_names_all_four_sources(clean):
    with pytest.raises(NotConfigured) as err:
        mlox_client.connect()
    assert str(err.value) == (
        "mlox-client found no settings for a stack. It looks, in order, at:\n"
        "  1. connect('STACK') or connect(profile=PATH): neither given;\n"
        "  2. environment variables: MLOX_STACK is not set (set them with: eval \"$(mlox-iac env --stack STACK "
        "--show-secrets)\");\n"
        f"  3. profiles: none in {clean}/config/mlox (write one with: mlox-iac env --stack STACK --write-profile);\n"
        "  4. inside the stack's containers (JupyterLab, Airflow tasks, served models): "
        f"no {clean}/etc/client.json.")


def test_a_named_stack_found_nowhere_says_what_was_found(clean, monkeypatch):
    monkeypatch.setenv("MLOX_STACK", "dev")
    write_inside(clean, {"stack": "staging", "env": {}})
    with pytest.raises(NotConfigured) as err:
        mlox_client.connect("prod")
    assert str(err.value) == (
        "mlox-client found no settings for the stack 'prod'. It looks, in order, at:\n"
        "  1. connect('prod') or connect(profile=PATH): no profile or settings of that name;\n"
        "  2. environment variables: MLOX_STACK is 'dev' (set them with: eval \"$(mlox-iac env --stack prod "
        "--show-secrets)\");\n"
        f"  3. profiles: no prod.json in {clean}/config/mlox (write one with: mlox-iac env --stack prod "
        "--write-profile);\n"
        "  4. inside the stack's containers (JupyterLab, Airflow tasks, served models): "
        f"{clean}/etc/client.json is for the stack 'staging'.")


# ----- profiles: mode and content, as a table of the exact complaints ------------------

def _cases(tmp):
    return {
        "readable_by_others": (0o644, None,
                               f"profile {tmp}/config/mlox/prod.json can be read by other users (mode 644); it holds "
                               f"credentials: chmod 600 {tmp}/config/mlox/prod.json"),
        "readable_by_group": (0o640, None,
                              f"profile {tmp}/config/mlox/prod.json can be read by other users (mode 640); it holds "
                              f"credentials: chmod 600 {tmp}/config/mlox/prod.json"),
        "not_json": (0o600, "{oops",
                     f"profile {tmp}/config/mlox/prod.json is not JSON: write it again with mlox-iac env --write-profile"),
        "not_a_profile": (0o600, '{"hello": 1}',
                          f"profile {tmp}/config/mlox/prod.json is not an mlox profile: write it again with mlox-iac "
                          "env --write-profile"),
        "newer_format": (0o600, '{"format": 9, "stack": "prod", "env": {}}',
                         f"profile {tmp}/config/mlox/prod.json is of a newer format: upgrade mlox-client"),
    }


@pytest.mark.parametrize("case", sorted(_cases("x")))
def test_profile_refused(clean, case):
    mode, text, message = _cases(clean)[case]
    path = write_profile(clean, "prod", exported(stack="prod"), mode=mode)
    if text is not None:
        path.write_text(text)
    with pytest.raises(ProfileError) as err:
        mlox_client.connect("prod")
    assert str(err.value) == message


def test_profile_of_another_stack_or_missing(clean):
    path = write_profile(clean, "prod", exported(stack="prod"))
    with pytest.raises(ProfileError, match=r"is for the stack 'prod', not 'dev'"):
        mlox_client.connect("dev", profile=path)
    with pytest.raises(ProfileError) as err:
        mlox_client.connect(profile=clean / "nope.json")
    assert str(err.value) == (f"profile {clean}/nope.json does not exist: write it with mlox-iac env --stack STACK "
                              "--write-profile")


def test_profile_written_by_mlox_iac_is_private_and_read_back(clean):
    from mlox_iac import connect

    path = connect.write_profile("prod", exported(stack="prod"))  # the default directory, as the CLI writes it
    assert path == mlox_client._settings.profile_path("prod")
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert mlox_client.connect(configure_mlflow=False).name == "prod"
