"""Helpers for CLI tests: run ``mlox-iac`` through its real entry point (``run``, which turns
errors into exit codes and one-line messages) with captured output; local HTTPS endpoints
signed by a throwaway CA for ``status``.

The fixtures are imported by the test modules that use them (a conftest.py here would
shadow the suite's top-level ``conftest`` module that other tests import from).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def invoke(*args: str, input: str | None = None) -> Result:
    """``mlox-iac ARGS`` through ``mlox_iac.cli.main.run``; stdin is not a terminal."""
    from mlox_iac.cli.main import run

    runner = CliRunner()
    with runner.isolation(input=input) as (stdout, stderr, _):
        try:
            run(list(args))
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        return Result(code, stdout.getvalue().decode(), stderr.getvalue().decode())


# ----- a local HTTPS "server" behind a throwaway CA -------------------------------------

@dataclass
class Tls:
    ca_path: Path
    cert_path: Path
    key_path: Path
    not_after: datetime.datetime


def make_tls(directory: Path, days: int = 30) -> Tls:
    """A root CA and a certificate for 127.0.0.1 signed by it (like Caddy's ``tls internal``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlox test root")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = now + datetime.timedelta(days=days)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    tls = Tls(directory / "root.crt", directory / "server.crt", directory / "server.key", not_after)
    tls.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return tls


class Handler(BaseHTTPRequestHandler):
    """MLflow's /mlflow/health behind basic auth, SeaweedFS' S3 /healthz, and an S3 root that denies
    anonymous access.
    ``server.broken`` answers 502 everywhere, as Caddy does when the upstream is gone."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        import base64

        if getattr(self.server, "broken", False):
            return self._send(502, b"bad gateway")
        if self.path == "/mlflow/health":
            expected = "Basic " + base64.b64encode(b"admin:ui-pass").decode()
            if self.headers.get("Authorization") != expected:
                return self._send(401, b"unauthorized")
            return self._send(200, b"OK")
        if self.path == "/healthz":
            return self._send(200, b"")
        if self.path == "/":
            return self._send(403, b"<Error><Code>AccessDenied</Code></Error>")
        return self._send(404, b"not found")

    def _send(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outputs_for(port: int, *, s3_port: int | None = None, tls: str = "internal", provider: str = "onprem") -> dict:
    """Stack outputs of a deployment without a domain, served at 127.0.0.1:port."""
    base = f"https://127.0.0.1:{port}"
    s3 = f"https://127.0.0.1:{s3_port or port}"
    return {
        "provider": provider, "server_address": "127.0.0.1", "ssh_user": "root", "ssh_port": 22,
        "services": ["postgres", "seaweedfs", "mlflow", "caddy"], "urls": {"mlflow": f"{base}/mlflow", "s3": s3},
        "bundle_hash": "abc", "tls": tls, "ui_user": "admin", "ui_passwords": {"mlflow": "ui-pass"},
        "s3_endpoint": s3, "s3_access_key": "AKTEST", "s3_secret_key": "SKTEST", "s3_buckets": ["mlflow", "data"],
        "mlflow_tracking_uri": f"{base}/mlflow",
    }


# ----- fixtures -------------------------------------------------------------------------

@pytest.fixture
def cli():
    """``cli("validate", "--stack", "dev") -> Result(exit_code, stdout, stderr)``."""
    return invoke


@pytest.fixture
def terminal(monkeypatch):
    """Pretend stdin is a terminal, so commands may ask questions."""
    import mlox_iac.cli.common as common
    import mlox_iac.cli.init_cmd as init_cmd

    monkeypatch.setattr(common, "interactive", lambda: True)
    monkeypatch.setattr(init_cmd, "interactive", lambda: True)


@pytest.fixture
def no_pulumi(monkeypatch, tmp_path):
    """No Pulumi CLI anywhere (PATH without it, an empty PULUMI_HOME)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "no-pulumi-home"))


@pytest.fixture
def https_server(tmp_path):
    """Start HTTPS servers on 127.0.0.1: ``start(broken=False) -> (port, tls)``; one CA for all."""
    servers = []
    tls = make_tls(tmp_path / "tls")

    def start(broken: bool = False):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.broken = broken
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_path, tls.key_path)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server.server_address[1], tls

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def outputs_file(tmp_path):
    """``outputs_file(outputs) -> Path`` of a JSON outputs file."""
    def write(outputs: dict) -> Path:
        path = tmp_path / "outputs.json"
        path.write_text(json.dumps(outputs))
        return path

    return write
