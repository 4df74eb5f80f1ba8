"""End to end: monitoring and model serving on a real Debian host (the real Pulumi engine).

One systemd-nspawn target host (prefix ``mlxsrv``, index 71) gets the core stack with
monitoring and model serving enabled. The tests run in file order and build on each
other: stack up; Prometheus scrapes every target; a model registered with the MLflow
client is served through the proxy, then its alias moves while a client polls without a
single failed request; sampled requests land in the bucket; stopping a service fires an
alert that Alertmanager delivers to a webhook receiver run by this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlox_iac.components.services import monitoring, serving

try:
    from . import images
    from .stack import COMPOSE, deployment_on_host, timed
except ImportError:  # pragma: no cover
    import images  # type: ignore[no-redef]
    from stack import COMPOSE, deployment_on_host, timed  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tests" / "e2e" / "serving_client.py"
# The core stack's images, and monitoring's and serving's (serving runs MLflow's image).
NEEDED_IMAGES = sorted(set(images.preset_images("core")) | {
    monitoring.IMAGE, monitoring.ALERTMANAGER_IMAGE, monitoring.NODE_EXPORTER_IMAGE,
    monitoring.POSTGRES_EXPORTER_IMAGE, monitoring.BLACKBOX_IMAGE, serving.IMAGE})

MODEL = "e2e-model"
ROUTE = "model-e2e-model"
WEBHOOK_PORT = 9871
LONG_RUNNING = ("postgres", "seaweedfs", "mlflow", "caddy", "serving", "monitoring", "alertmanager",
                "node-exporter", "container-metrics", "blackbox-exporter", "postgres-exporter")


class Webhook:
    """Alertmanager's webhook receiver: records every notification it is sent."""

    def __init__(self, address: str, port: int):
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[dict]:
        return [a for message in self.received for a in message.get("alerts", [])]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with deployment_on_host(tmp_path_factory.mktemp("serving"), "mlxsrv", 71, NEEDED_IMAGES) as d:
        gateway = d.host.gateway  # the target reaches the CI machine at its gateway
        d.webhook = Webhook(gateway, WEBHOOK_PORT)
        d.raw["services"] = {
            "monitoring": {"enabled": True, "alerts": {"webhook_url": f"http://{gateway}:{WEBHOOK_PORT}/alerts"}},
            "serving": {"enabled": True, "poll_seconds": 3,
                        "models": [{"name": MODEL, "alias": "champion", "log_sample": 1.0}]},
        }
        try:
            yield d
        finally:
            d.webhook.server.shutdown()


def _auth(d, route: str) -> tuple[str, str]:
    return d.outputs["ui_user"], d.outputs["ui_passwords"][route]


def _client(d, *args: str) -> dict:
    result = subprocess.run([sys.executable, str(CLIENT), *args], env={**os.environ, **d.mlflow_env()},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _wait(what: str, check, timeout: float, every: float = 2.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 (report the last one on timeout)
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def test_1_stack_with_monitoring_and_serving_comes_up(stack):
    d = stack
    start = time.monotonic()
    d.up(bootstrap_only=True)
    d.build.wait()
    images.load_images(d.host, NEEDED_IMAGES)
    d.up()
    rows = d.wait_healthy_services(LONG_RUNNING, timeout=420)
    timed("stack with monitoring and serving up", time.monotonic() - start)
    for service in LONG_RUNNING:
        assert rows.get(service, {}).get("Health") == "healthy", (service, rows.get(service))
    # Beyond the server's loopback only Caddy is published (Postgres is, on loopback, for SSH tunnels).
    published = {s for s, row in rows.items()
                 if any(p.get("PublishedPort") and p.get("URL") != "127.0.0.1" for p in row.get("Publishers") or [])}
    assert published == {"caddy"}
    d.fetch_ca()
    # The rendered configurations pass the pinned tools' own checks.
    check = d.host.ssh(
        "docker run --rm --network=none -v /opt/mlox/bundle/monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro "
        "-v /opt/mlox/bundle/monitoring/rules.yml:/etc/prometheus/rules.yml:ro --entrypoint /bin/promtool "
        "prom/prometheus:v2.42.0 check config /etc/prometheus/prometheus.yml && "
        "docker run --rm --network=none -v /opt/mlox/bundle/monitoring:/m:ro --entrypoint /bin/amtool "
        "prom/alertmanager:v0.25.0 check-config /m/alertmanager.yml", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout + check.stderr


def test_2_prometheus_scrapes_every_target(stack):
    import requests

    d = stack
    base = d.outputs["urls"]["prometheus"]
    assert requests.get(base + "/api/v1/targets", verify=str(d.ca_path), timeout=10).status_code == 401

    def all_up():
        answer = requests.get(base + "/api/v1/targets", auth=_auth(d, "prometheus"), verify=str(d.ca_path), timeout=10)
        targets = answer.json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health if set(health.values()) == {"up"} else None

    health = _wait("every scrape target up", all_up, timeout=120, every=5)
    assert set(health) == {"prometheus", "alertmanager", "node", "containers", "blackbox", "caddy", "postgres",
                           "models", "certificates"}, health

    def query(expr: str) -> list[dict]:
        answer = requests.get(base + "/api/v1/query", params={"query": expr}, auth=_auth(d, "prometheus"),
                              verify=str(d.ca_path), timeout=10)
        return answer.json()["data"]["result"]

    def every_service_running():
        running = {r["metric"]["service"]: r["value"][1] for r in query("mlox_container_running")}
        return running if all(running.get(s) == "1" for s in LONG_RUNNING) else None

    # Polled, bounded: one CI run's single query lacked a running service (which one was cut from
    # the message) on the overloaded machine; a service that stays down still fails here, named.
    try:
        _wait("every long-running service reported running", every_service_running, timeout=120, every=5)
    except AssertionError as exc:
        running = {r["metric"]["service"]: r["value"][1] for r in query("mlox_container_running")}
        not_running = {s: running.get(s, "absent") for s in LONG_RUNNING if running.get(s) != "1"}
        states = d.host.ssh("docker ps -a --format '{{.Names}} {{.Status}}'", check=False).stdout
        raise AssertionError(f"not reported running: {not_running}; containers:\n{states}") from exc
    memory = {r["metric"]["service"]: float(r["value"][1]) for r in query("mlox_container_memory_bytes")}
    assert memory.get("mlflow", 0) > 50e6, memory  # a real working set from the cgroup
    assert query("pg_up")[0]["value"][1] == "1"
    assert float(query("probe_ssl_earliest_cert_expiry - time()")[0]["value"][1]) > 3600
    assert query('node_filesystem_size_bytes{mountpoint="/"}'), "node-exporter sees the host's disks"
    assert query("sum(caddy_http_request_duration_seconds_count)"), "Caddy counts the proxied requests"
    rules = requests.get(base + "/api/v1/rules", auth=_auth(d, "prometheus"), verify=str(d.ca_path), timeout=10).json()
    names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert {"ServiceDown", "DiskAlmostFull", "MemoryPressure", "CertificateExpiring", "BackupFailed",
            "BackupStale"} <= names
    # The dashboard: Prometheus renders the console page from live data.
    page = requests.get(base + "/consoles/mlox.html", auth=_auth(d, "prometheus"), verify=str(d.ca_path), timeout=20)
    assert page.status_code == 200, page.text[:500]
    assert "<td>mlflow</td>" in page.text and "<td>serving</td>" in page.text


def test_3_registered_model_is_served_and_an_alias_move_fails_no_request(stack):
    import requests

    d = stack
    url = d.outputs["urls"][ROUTE] + "/invocations"
    body = {"dataframe_split": {"columns": ["x"], "data": [[2.0], [3.0]]}}
    auth = _auth(d, ROUTE)
    assert requests.post(url, json=body, verify=str(d.ca_path), timeout=10).status_code == 401
    assert requests.post(url, json=body, auth=(auth[0], "wrong"), verify=str(d.ca_path), timeout=10).status_code == 401

    assert _client(d, "register", MODEL, "10")["version"] == "1"
    _client(d, "alias", MODEL, "champion", "1")
    start = time.monotonic()

    def answers(version: str):
        answer = requests.post(url, json=body, auth=auth, verify=str(d.ca_path), timeout=30)
        return answer.json() if answer.status_code == 200 and answer.headers.get("X-Model-Version") == version else None

    assert _wait("version 1 served", lambda: answers("1"), timeout=420, every=3) == {"predictions": [20.0, 30.0]}
    timed("model version 1 served", time.monotonic() - start)
    from mlox_iac import connect

    probes = {p.name: (p.up, p.detail) for p in connect.probe(d.outputs, d.ca_path)}  # what `mlox-iac status` checks
    assert probes == {name: (True, "ok") for name in ("s3", "mlflow", ROUTE, "prometheus", "alertmanager", "home")}, probes

    # A client polls throughout the switch; every answer must be a 200 from one of the versions.
    seen: list[tuple[int, str, object]] = []
    errors: list[str] = []
    stop = threading.Event()

    def poll():
        session = requests.Session()
        while not stop.is_set():
            try:
                answer = session.post(url, json=body, auth=auth, verify=str(d.ca_path), timeout=30)
                seen.append((answer.status_code, answer.headers.get("X-Model-Version", ""), answer.json()))
            except Exception as exc:  # noqa: BLE001 (a failed request is what this test looks for)
                errors.append(repr(exc))
            time.sleep(0.05)

    pollers = [threading.Thread(target=poll) for _ in range(2)]
    for thread in pollers:
        thread.start()
    try:
        assert _client(d, "register", MODEL, "100")["version"] == "2"
        _client(d, "alias", MODEL, "champion", "2")
        start = time.monotonic()
        _wait("version 2 served", lambda: any(v == "2" for _, v, _ in seen[-5:]) and seen[-1][1] == "2", timeout=420)
        timed("alias switch to version 2", time.monotonic() - start)
        time.sleep(5)  # and keeps answering after the old version stopped
    finally:
        stop.set()
        for thread in pollers:
            thread.join()
    assert not errors, errors[:5]
    bad = [s for s in seen if s[0] != 200]
    assert not bad, bad[:5]
    expected = {"1": {"predictions": [20.0, 30.0]}, "2": {"predictions": [200.0, 300.0]}}
    assert all(result == expected[version] for _, version, result in seen), [s for s in seen if s[2] != expected.get(s[1])][:5]
    versions = [v for _, v, _ in seen]
    assert versions[0] == "1" and versions[-1] == "2" and versions.index("2") > 10, versions[:20]
    assert "1" not in versions[versions.index("2"):], "after the switch only the new version answers"
    d.requests_made = len(seen)

    # `mlox-iac env` exports the model's URL, user and password.
    from mlox_iac import connect

    exports = connect.env_exports(d.outputs, d.ca_path)
    assert exports["MLOX_MODEL_E2E_MODEL_URL"] == d.outputs["urls"][ROUTE]
    assert exports["MLOX_MODEL_E2E_MODEL_PASSWORD"] == auth[1]


def test_4_sampled_requests_and_responses_land_in_the_bucket(stack):
    d = stack
    s3 = d.s3()

    def logged():
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="model-logs", Prefix=f"{MODEL}/").get("Contents", [])]
        records = [json.loads(line) for k in keys
                   for line in s3.get_object(Bucket="model-logs", Key=k)["Body"].read().decode().splitlines()]
        return records if {r["version"] for r in records} >= {"1", "2"} else None

    records = _wait("request log in the bucket", logged, timeout=90, every=5)
    assert all(r["model"] == MODEL for r in records)
    # Requests before any version was served (the test waiting for version 1) were answered 503.
    assert all(r["status"] == (200 if r["version"] else 503) for r in records), [r for r in records if r["status"] != 200][:3]
    sample = next(r for r in records if r["version"] == "2")
    assert json.loads(sample["request"])["dataframe_split"]["data"] == [[2.0], [3.0]]
    assert json.loads(sample["response"]) == {"predictions": [200.0, 300.0]}


def test_5_stopping_a_service_fires_an_alert_to_the_webhook(stack):
    d = stack
    start = time.monotonic()
    d.host.ssh(f"{COMPOSE} stop mlflow")
    try:
        def fired():
            return [a for a in d.webhook.alerts() if a["labels"].get("alertname") == "ServiceDown"
                    and a["labels"].get("service") == "mlflow" and a["status"] == "firing"]

        alerts = _wait("ServiceDown for mlflow at the webhook", fired, timeout=300, every=5)
        timed("service stopped to alert delivered", time.monotonic() - start)
        assert alerts[0]["annotations"]["summary"] == "mlflow is not running"
        down = [a for a in d.webhook.alerts() if a["labels"].get("alertname") == "ServiceDown" and a["status"] == "firing"]
        others = {a["labels"].get("service") for a in down}
        # nothing else reported down (when and what, if something was)
        assert others == {"mlflow"}, [(a["labels"].get("service"), a.get("startsAt"), a.get("endsAt")) for a in down]
    finally:
        d.host.ssh(f"{COMPOSE} start mlflow")
    rows = d.wait_healthy_services(("mlflow",))
    assert rows["mlflow"]["Health"] == "healthy"
