"""The stack's home page program (``programs/home_page.py``) on the listing the home service
renders: each service with its link and health (probed for real, here against servers on
loopback), the last backup's age and result, the monitoring pages; no secret."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import settings
from mlox_iac.components.services import home
from mlox_iac.components.services.base import Context
from mlox_iac.config.loader import validate
from test_programs import load


def ctx(raw: dict) -> Context:
    return Context(validate(raw, {"onprem.private_key"} if raw["provider"] == "onprem" else set(), "test.yaml", "test"))


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path.endswith("health") else 302)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()


def test_listing_links_every_route_and_probes_it_past_the_proxy():
    plain = home.listing(ctx(settings("onprem", services={"preset": "full"})))
    by_name = {r["name"]: r for r in plain["routes"]}
    assert set(by_name) == {"s3", "mlflow", "feast", "label-studio", "airflow", "jupyter", "prometheus", "alertmanager"}
    assert by_name["mlflow"]["link"] == "/mlflow/" and by_name["mlflow"]["probe"] == "http://mlflow:5000/mlflow/health"
    assert by_name["feast"]["probe"] == "http://feast:6566/health"  # its prefix is stripped by the proxy
    assert by_name["s3"]["link"] is None and by_name["s3"]["api"] and by_name["s3"]["probe"] == "http://seaweedfs:8333/healthz"
    # Feast's root answers 404 (an API, like a served model's): shown by its address, not linked.
    assert by_name["feast"]["link"] is None and by_name["feast"]["api"] and by_name["feast"]["address"] == "/feast/"
    served = home.listing(ctx(settings("onprem", services={"serving": {"enabled": True, "models": [{"name": "churn"}]}})))
    model = next(r for r in served["routes"] if r["service"] == "serving")
    assert model["link"] is None and model["api"] and model["address"] == f"/{model['name']}/"
    assert plain["monitoring"] == {"prometheus": "/prometheus/", "alertmanager": "/alertmanager/"}
    assert plain["internal"] == ["postgres", "redis", "serving"] and plain["backup"] is False
    domain = home.listing(ctx(settings("onprem", domain="ml.example.com", acme_email="ops@example.com")))
    links = {r["name"]: r["link"] for r in domain["routes"]}
    assert links == {"s3": None, "mlflow": "https://mlflow.ml.example.com/"}
    assert {r["name"]: r["probe"] for r in domain["routes"]}["mlflow"] == "http://mlflow:5000/health"


def test_page_shows_health_backup_and_monitoring(monkeypatch, tmp_path, upstream):
    listing = {"stack": "prod", "backup": True, "internal": ["postgres"],
               "monitoring": {"prometheus": "/prometheus/", "alertmanager": "/alertmanager/"},
               "routes": [
                   {"name": "mlflow", "service": "mlflow", "version": "v3", "link": "/mlflow/", "api": False,
                    "auth": "basic", "probe": f"http://{upstream}/mlflow/health"},
                   {"name": "jupyter", "service": "jupyter", "version": "lab", "link": "/jupyter/", "api": False,
                    "auth": "own", "probe": f"http://{upstream}/jupyter/"},
                   {"name": "s3", "service": "seaweedfs", "version": "4.48", "link": None, "api": True, "auth": "own",
                    "probe": "http://127.0.0.1:9/healthz"},
                   {"name": "feast", "service": "feast", "version": "0.67", "link": None, "address": "/feast/",
                    "api": True, "auth": "basic", "probe": f"http://{upstream}/health"}]}
    (tmp_path / "home.json").write_text(json.dumps(listing))
    state = tmp_path / "backup"
    state.mkdir()
    finished = time.time() - 2 * 3600
    (state / "status.json").write_text(json.dumps({"last": {"ok": True, "finished_at": finished, "snapshot": "4f2a91c0aa",
                                                            "check": "ok"}, "last_ok": {"finished_at": finished}}))
    page = load("home_page.py", monkeypatch, LISTING=tmp_path / "home.json", BACKUP_STATE=state, PROBE_TIMEOUT_S=2)
    data = page.Snapshot().get()
    health = {s["name"]: s["health"] for s in data["services"]}
    assert health["mlflow"]["up"] and health["mlflow"]["status"] == 200
    assert health["jupyter"]["up"] and health["jupyter"]["status"] == 302  # a login redirect is an answer
    assert not health["s3"]["up"] and health["s3"]["detail"].startswith("no answer")
    assert data["backup"]["ok"] and 7100 < data["backup"]["age_s"] < 7300
    text = page.render(data, "192.0.2.50")
    assert '<a href="/mlflow/">/mlflow/</a>' in text and "https://192.0.2.50" in text
    assert "<code>https://192.0.2.50/feast/</code>" in text and 'href="/feast/' not in text
    assert "last backup 2 h ago" in text and "4f2a91c0" in text and '<a href="/prometheus/">' in text
    assert "probe" not in json.dumps(data)  # where it probes stays on the server


def test_page_serves_html_json_and_its_health_check(monkeypatch, tmp_path):
    (tmp_path / "home.json").write_text(json.dumps({"stack": "s<x>", "routes": [], "monitoring": {}, "backup": False}))
    page = load("home_page.py", monkeypatch, LISTING=tmp_path / "home.json", BACKUP_STATE=tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), page.Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert urllib.request.urlopen(f"{base}/healthz").read() == b"ok\n"
        response = urllib.request.urlopen(f"{base}/")
        text = response.read().decode()
        assert response.headers["Cache-Control"] == "no-store"
        assert "Stack s&lt;x&gt;" in text and "no backups configured" in text and "Monitoring is not enabled" in text
        data = json.loads(urllib.request.urlopen(urllib.request.Request(f"{base}/", headers={"Accept": "application/json"})).read())
        assert data["stack"] == "s<x>" and data["backup"]["configured"] is False
    finally:
        server.shutdown()
