"""Fixtures of the UI's tests: a project on fixture data, the app under a test client, and
the app served on loopback for the browser. The test modules import them (a conftest.py
here would shadow the suite's own ``conftest`` module, which tests import by name)."""

from __future__ import annotations

import pytest

from fixture import FixtureBackend, LiveUI, make_project

PORT = 8765  # the port the test client's requests name (the app checks the Host header)


@pytest.fixture
def ui_env(tmp_path, monkeypatch):
    """A project on fixture data, with the environment a user's shell would give the UI."""
    project, outputs = make_project(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("PULUMI_BACKEND_URL", "PULUMI_ACCESS_TOKEN", "PULUMI_HOME", "PULUMI_CONFIG_PASSPHRASE_FILE",
                 "MLOX_SECRETS_PROVIDER", "MLOX_STACK", "MLOX_OUTPUTS_FILE", "MLOX_SSH_IDENTITY", "MLOX_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "correct horse battery staple")
    monkeypatch.setenv("MLOX_PROJECT_DIR", str(project))
    monkeypatch.chdir(project)
    return project, outputs


@pytest.fixture
def backend(ui_env):
    project, outputs = ui_env
    return FixtureBackend(project, outputs)


@pytest.fixture
def guard():
    from mlox_iac.ui.security import Guard

    return Guard("test-token-" + "x" * 32, PORT)


@pytest.fixture
def client(backend, guard):
    """A logged-in test client (the token cookie set by the first request, as a browser's)."""
    from fastapi.testclient import TestClient

    from mlox_iac.ui.app import create_app

    app = create_app(backend, guard)
    with TestClient(app, base_url=f"http://127.0.0.1:{PORT}") as c:
        response = c.get(f"/?token={guard.token}", follow_redirects=False)
        assert response.status_code == 303 and "httponly" in response.headers["set-cookie"].lower()
        c.app_state = app.state
        yield c


@pytest.fixture
def anonymous(backend, guard):
    from fastapi.testclient import TestClient

    from mlox_iac.ui.app import create_app

    with TestClient(create_app(backend, guard), base_url=f"http://127.0.0.1:{PORT}") as c:
        yield c


@pytest.fixture
def live_ui(backend):
    with LiveUI(backend) as ui:
        yield ui
