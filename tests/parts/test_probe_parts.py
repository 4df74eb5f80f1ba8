"""``status`` probes the external stores a stack uses, from the user's machine, verifying TLS.

The Postgres probe talks to a real TLS listener that answers Postgres' SSLRequest as a server
does ('S', then the handshake); the S3 probe to an HTTPS server. Each with a certificate from
a test CA, given to the probe as the part's ``ca`` (as the ``parts`` output carries it).
"""

from __future__ import annotations

import http.server
import socket
import ssl
import threading

import pytest
from testca import root_ca, server_cert

from mlox_iac import connect


def _tls_context(cert) -> ssl.SSLContext:
    import tempfile

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as c, tempfile.NamedTemporaryFile("w", suffix=".pem") as k:
        c.write(cert.cert_pem)
        k.write(cert.key_pem)
        c.flush()
        k.flush()
        context.load_cert_chain(c.name, k.name)
    return context


@pytest.fixture
def postgres_tls():
    """A listener on 127.0.0.1 that answers SSLRequest with 'S' (or 'N' when told) and then TLS."""
    state = {"answer": b"S"}
    ca = root_ca()
    context = _tls_context(server_cert(ca, "localhost"))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(8)
                if request != connect._PG_SSL_REQUEST:
                    continue
                conn.sendall(state["answer"])
                if state["answer"] == b"S":
                    try:
                        with context.wrap_socket(conn, server_side=True) as tls:
                            tls.recv(1)
                    except (ssl.SSLError, OSError):
                        pass

    threading.Thread(target=serve, daemon=True).start()
    yield ca, listener.getsockname()[1], state
    listener.close()


def test_external_postgres_is_up_when_its_tls_verifies(postgres_tls):
    ca, port, _ = postgres_tls
    result = connect.probe_postgres_tls("localhost", port, ca_pem=ca.cert_pem)
    assert (result.up, result.detail, result.url) == (True, "ok (TLS verified)", f"postgres://localhost:{port}")
    assert result.cert_expires_in_s > 0


def test_external_postgres_with_another_ca_is_down_naming_the_certificate(postgres_tls):
    _, port, _ = postgres_tls
    result = connect.probe_postgres_tls("localhost", port, ca_pem=root_ca("another root").cert_pem)
    assert not result.up and result.detail.startswith("TLS certificate not trusted")


def test_verify_full_checks_the_name_and_verify_ca_does_not(postgres_tls):
    ca, port, _ = postgres_tls
    # The certificate names localhost only, not the address it is reached at here.
    wrong = connect.probe_postgres_tls("127.0.0.1", port, ca_pem=ca.cert_pem)
    assert not wrong.up and "TLS certificate not trusted" in wrong.detail
    chain_only = connect.probe_postgres_tls("127.0.0.1", port, ca_pem=ca.cert_pem, check_hostname=False)
    assert chain_only.up


def test_external_postgres_without_tls_is_down(postgres_tls):
    ca, port, state = postgres_tls
    state["answer"] = b"N"
    result = connect.probe_postgres_tls("localhost", port, ca_pem=ca.cert_pem)
    assert not result.up and result.detail == "the server does not offer TLS (answered b'N' to SSLRequest)"


def test_unreachable_external_postgres_is_down(postgres_tls):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    result = connect.probe_postgres_tls("127.0.0.1", port, ca_pem=None, timeout=2)
    assert not result.up and result.detail.startswith("no answer")


@pytest.fixture
def s3_https():
    ca = root_ca()
    context = _tls_context(server_cert(ca, "localhost"))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - anonymous S3 answers 403 AccessDenied
            self.send_response(403)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield ca, server.server_address[1]
    server.shutdown()


def test_probe_parts_reads_the_parts_output(s3_https, postgres_tls):
    s3_ca, s3_port = s3_https
    pg_ca, pg_port, _ = postgres_tls
    outputs = {"parts": {
        "objects": {"uses": "external", "endpoint": f"https://localhost:{s3_port}", "ca": s3_ca.cert_pem},
        "postgres": {"uses": "external", "host": "localhost", "port": pg_port, "sslmode": "verify-full",
                     "ca": pg_ca.cert_pem}}}
    results = connect.probe_parts(outputs)
    assert [(r.name, r.up, r.status) for r in results] == [("s3 (external)", True, 403),
                                                           ("postgres (external)", True, None)]
    # A stack whose parts are on the server: nothing external to probe.
    assert connect.probe_parts({"parts": {"objects": {"uses": "local"}, "postgres": {"uses": "local"}}}) == []


def test_probe_parts_fails_an_s3_endpoint_whose_certificate_does_not_verify(s3_https):
    _, port = s3_https
    outputs = {"parts": {"objects": {"uses": "external", "endpoint": f"https://localhost:{port}", "ca": None}}}
    [result] = connect.probe_parts(outputs)
    assert not result.up and "TLS certificate not trusted" in result.detail
