"""Helpers for the mlox-client tests: a stack's settings as mlox-iac exports them, a clean
environment, and local HTTPS services behind a throwaway CA.

The settings come from mlox-iac's own exporter (``connect.env_exports``), so these tests
check that the client reads exactly what ``mlox-iac env`` writes.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlox_iac import connect
from tests.cli.cli_helpers import make_tls, outputs_for

SECRETS = {"ui-pass", "AKTEST", "SKTEST", "feast-ui", "model-pass", "af-pass", "ls-token", "pg-pass", "feast-db",
           "redis-pw"}
PREFIXES = ("MLOX_", "MLFLOW_", "AWS_", "FEAST_", "LABEL_STUDIO_", "REQUESTS_CA_BUNDLE")


def full_outputs(port: int = 443) -> dict:
    """A full stack's outputs (no domain), served at 127.0.0.1:port, with one served model."""
    base = f"https://127.0.0.1:{port}"
    outputs = outputs_for(port)
    outputs["services"] = ["postgres", "seaweedfs", "mlflow", "redis", "feast", "label-studio", "airflow", "jupyter",
                           "serving", "caddy"]
    outputs["urls"].update({route: f"{base}/{route}" for route in ("feast", "label-studio", "airflow", "jupyter",
                                                                   "model-churn")})
    outputs["ui_passwords"] = {"mlflow": "ui-pass", "feast": "feast-ui", "model-churn": "model-pass"}
    outputs["login_passwords"] = {"airflow": "af-pass", "jupyter": "jp-pass", "label-studio": "ls-pass"}
    outputs["api_tokens"] = {"label-studio": "ls-token"}
    outputs["client_secrets"] = {"MLOX_POSTGRES_PASSWORD": "pg-pass", "FEAST_DB_PASSWORD": "feast-db",
                                 "FEAST_REDIS_PASSWORD": "redis-pw"}
    outputs["server_address"] = "203.0.113.9"
    return outputs


def exported(port: int = 443, ca_path: Path | None = None, stack: str = "dev", **changes) -> dict[str, str]:
    """What ``mlox-iac env --show-secrets`` exports for :func:`full_outputs`."""
    return connect.env_exports({**full_outputs(port), **changes}, ca_path, stack=stack)


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """No stack settings in the environment; profiles in tmp_path/config/mlox; no settings file.
    What connect() sets in the environment (MLflow's variables) is undone afterwards."""
    before = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("MLOX_CLIENT_SETTINGS", str(tmp_path / "etc" / "client.json"))
    yield tmp_path
    os.environ.clear()
    os.environ.update(before)


def write_profile(directory: Path, stack: str, env: dict, mode: int = 0o600) -> Path:
    path = connect.write_profile(stack, env, directory / "config" / "mlox")
    path.chmod(mode)
    return path


def write_inside(directory: Path, document: dict) -> Path:
    path = directory / "etc" / "client.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


# ----- local HTTPS services --------------------------------------------------------------

class Recorder(BaseHTTPRequestHandler):
    """Answers from ``server.routes``: (method, path) -> function(handler, body) -> (status, dict|bytes)."""

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append((self.command, self.path, dict(self.headers), body))
        route = self.server.routes.get((self.command, self.path.split("?")[0]))
        status, payload = route(self, body) if route else (404, {"detail": "not found"})
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _answer  # noqa: N815 (http.server's naming)

    def log_message(self, *args):
        pass


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def service(tmp_path):
    """Start a local HTTPS server with the given routes; yields a function -> (port, tls, server)."""
    started = []

    def start(routes: dict):
        import ssl

        tls = make_tls(tmp_path / f"tls{len(started)}")
        server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        server.routes, server.requests = routes, []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_path, tls.key_path)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server.server_address[1], tls, server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()
