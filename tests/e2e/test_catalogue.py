"""End to end: the full preset on one real Debian host, without serving and monitoring
(they have their own host in ``test_serving.py``, and their images would add minutes here).

One systemd-nspawn target host (prefix ``mlxsvc``, index 61); the real program for an
onprem stack with ``mlox:services.preset: full`` minus serving and monitoring is deployed by the real
Pulumi engine as in
``test_deploy.py`` (with the ``Deployment`` helper of ``tests/e2e/stack.py``). The tests run in
file order and build on each other: stack up, each service used the way a user would
(from outside, through the proxy, with the generated credentials only), unauthenticated
requests refused, idle memory measured, an unchanged redeploy, a reboot.

Its images (the full preset's nine stand-ins; for JupyterLab the base that the bundle's
Dockerfile builds on, on the host) build in the background while the host boots
(``images.BackgroundBuild``); warm, the module takes 8 to 12 minutes, most of it loading
the images onto the host and the services' first start.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import uuid

import pytest

from mlox_iac.components.services import jupyter
from mlox_iac.components.services.registry import SERVICES

try:
    from . import hosts, images
    from .stack import COMPOSE, Deployment, deployment_on_host, timed
except ImportError:  # pragma: no cover
    import hosts  # type: ignore[no-redef]
    import images  # type: ignore[no-redef]
    from stack import COMPOSE, Deployment, deployment_on_host, timed  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

PREFIX, FIRST_INDEX = "mlxsvc", 61
# The full preset's long-running containers (provisioning steps idle once done).
LONG_RUNNING = ("postgres", "seaweedfs", "mlflow", "redis", "feast", "label-studio", "airflow", "airflow-scheduler",
                "airflow-dag-processor", "jupyter", "caddy")
GIT_PORT = 9418
# The services this module deploys (the full preset minus serving and monitoring) and their images.
FULL = ("postgres", "seaweedfs", "mlflow", "redis", "feast", "label-studio", "airflow", "jupyter", "caddy")
FULL_IMAGES = sorted({SERVICES[s].image for s in FULL})

# The DAG the test commits to the repository Airflow syncs: it uses only the connections
# mlox creates (aws_default for the bucket, mlflow_default for the tracking server).
DAG = """
import json, urllib.request

import pendulum
from airflow.sdk import BaseHook, dag, task


@dag(dag_id="mlox_e2e", schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False)
def mlox_e2e():
    @task
    def write_and_track(**context):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        marker = context["dag_run"].conf["marker"]
        S3Hook(aws_conn_id="aws_default").load_string(f"written by airflow {marker}", key=f"airflow/{marker}.txt",
                                                      bucket_name="data", replace=True)
        mlflow = BaseHook.get_connection("mlflow_default").host

        def call(path, body):
            request = urllib.request.Request(f"{mlflow}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            return json.load(urllib.request.urlopen(request, timeout=30))

        experiment = call("experiments/create", {"name": f"airflow-{marker}"})["experiment_id"]
        run = call("runs/create", {"experiment_id": experiment})["run"]["info"]["run_id"]
        call("runs/log-metric", {"run_id": run, "key": "rows", "value": 42, "timestamp": 0, "step": 0})
        call("runs/update", {"run_id": run, "status": "FINISHED"})
        print(f"MLOX-E2E marker={marker} run={run}")

    write_and_track()


mlox_e2e()
"""


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    with deployment_on_host(tmp_path_factory.mktemp("catalogue"), PREFIX, FIRST_INDEX, FULL_IMAGES) as d:
        daemon = _serve_dags_repo(d.work / "git", d.host.gateway)
        d.raw["services"] = {"preset": "full", "airflow": {"dags_repo": f"git://{d.host.gateway}:{GIT_PORT}/dags.git"},
                             "serving": {"enabled": False}, "monitoring": {"enabled": False}}
        d.raw["onprem"]["memory_mb"] = 8192  # an 8 GB server (Hetzner cx33 class)
        try:
            yield d
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)


def _serve_dags_repo(root, address: str):
    """A bare git repository with the DAG, served read-only by `git daemon` on the target's
    gateway address (the host side of its veth): the target clones it as from any git server."""
    import subprocess

    work, bare = root / "work", root / "dags.git"
    work.mkdir(parents=True)
    (work / "dags").mkdir()
    (work / "dags" / "mlox_e2e.py").write_text(DAG)
    git = ["git", "-c", "user.name=e2e", "-c", "user.email=e2e@mlox", "-C", str(work)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "dags"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={root}",
                             f"--listen={address}", f"--port={GIT_PORT}", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _healthy(d: Deployment, timeout: float = 600) -> dict:
    rows = d.wait_healthy_services(LONG_RUNNING, timeout)
    for service in LONG_RUNNING:
        assert rows.get(service, {}).get("Health") == "healthy", (service, rows.get(service))
    return rows


def test_1_full_preset_comes_up(catalogue):
    d = catalogue
    start = time.monotonic()
    d.up(bootstrap_only=True)
    d.build.wait()
    images.load_images(d.host, FULL_IMAGES)
    timed("catalogue images loaded", time.monotonic() - start)
    start = time.monotonic()
    try:
        d.up()
    finally:  # the tests of the services that did come up still run
        d.outputs = d.outputs or {}
        d.host.ssh(f"{COMPOSE} ps --all", check=False)
        if d.host.ssh("test -f /mnt/mlox-data/volumes/caddy-data/caddy/pki/authorities/local/root.crt",
                      check=False).returncode == 0:
            d.fetch_ca()
    rows = _healthy(d)
    timed("full preset up", time.monotonic() - start)
    def published(loopback: bool) -> set:
        return {s for s, row in rows.items() for p in row.get("Publishers") or []
                if p.get("PublishedPort") and (p.get("URL") == "127.0.0.1") == loopback}

    assert published(loopback=False) == {"caddy"}
    # The ends of users' SSH tunnels (mlox-client): on the server's loopback only.
    assert published(loopback=True) == {"postgres", "redis"}
    modes = d.host.ssh("stat -c '%a %U %n' /opt/mlox/secrets/*.env").stdout.split("\n")
    assert {line.split()[-1].rsplit("/", 1)[1] for line in modes if line} == {f"{s}.env" for s in FULL}  # one per service
    assert all(line.startswith("600 root ") for line in modes if line), modes
    # JupyterLab's image was built on the host from the bundle's Dockerfile, on the loaded base.
    assert d.host.ssh(f"docker inspect -f '{{{{.Config.Image}}}}' mlox-jupyter-1").stdout.strip() \
        == jupyter.LOCAL_IMAGE
    history = d.host.ssh(f"docker history --no-trunc --format '{{{{.CreatedBy}}}}' {jupyter.LOCAL_IMAGE}").stdout
    assert "pip install --no-cache-dir --requirement /tmp/mlox-requirements.txt" in history, history[-2000:]


def test_2_redis_is_internal_password_protected_and_persistent(catalogue):
    d = catalogue
    for port in (6379, 16379):  # not published beyond the loopback; the host firewall
        assert hosts.client_connect(d.host.address, port) == "refused", port
    anonymous = d.host.ssh(f"{COMPOSE} exec -T redis redis-cli set probe 1", check=False)
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr
    marker = uuid.uuid4().hex
    d.host.ssh(f"{COMPOSE} exec -T redis sh -c 'REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli set mlox-e2e {marker}'")
    d.redis_marker = marker
    # (no ps in the image; Redis rewrites its process title) PID 1 is redis-server, run as the
    # user redis, with the config file written at start.
    assert d.host.ssh(f"{COMPOSE} exec -T redis cat /proc/1/comm").stdout.strip() == "redis-server"
    assert d.host.ssh(f"{COMPOSE} exec -T redis cat /proc/1/status").stdout.count(f"Uid:\t{_redis_uid(d)}\t") == 1
    info = d.host.ssh(f"{COMPOSE} exec -T redis sh -c 'REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli info server'")
    assert "config_file:/tmp/redis.conf" in info.stdout, info.stdout


def _redis_uid(d: Deployment) -> str:
    return d.host.ssh(f"{COMPOSE} exec -T redis id -u redis").stdout.strip()


def _jupyter_login(d: Deployment):
    import requests

    base = d.outputs["urls"]["jupyter"]
    session = requests.Session()
    session.verify = str(d.ca_path)
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify (psf/requests#3829)
    session.get(f"{base}/login", timeout=20).raise_for_status()
    xsrf = session.cookies["_xsrf"]
    answer = session.post(f"{base}/login", data={"password": d.outputs["login_passwords"]["jupyter"], "_xsrf": xsrf},
                          allow_redirects=False, timeout=20)
    assert answer.status_code == 302, answer.text[:500]
    session.headers["X-XSRFToken"] = xsrf
    return session


def run_in_kernel(d: Deployment, code: str, timeout: float = 180) -> str:
    """Start a kernel through Jupyter's REST API, run ``code`` over its websocket, return stdout."""
    import websocket

    session = _jupyter_login(d)
    base = d.outputs["urls"]["jupyter"]
    kernel = session.post(f"{base}/api/kernels", json={"name": "python3"}, timeout=60)
    assert kernel.status_code == 201, kernel.text[:500]
    kernel_id = kernel.json()["id"]
    session_id = uuid.uuid4().hex
    cookies = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    ws = websocket.create_connection(
        base.replace("https://", "wss://") + f"/api/kernels/{kernel_id}/channels?session_id={session_id}",
        header=[f"Cookie: {cookies}"], sslopt={"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(d.ca_path)},
        timeout=timeout,
    )
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "e2e", "session": session_id, "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        # The reply (shell channel) can overtake the output (iopub channel) on the websocket:
        # the output is complete once the kernel reports itself idle for this request.
        out, errors, deadline = [], [], time.monotonic() + timeout
        reply, idle = None, False
        while time.monotonic() < deadline and (reply is None or not idle):
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                errors.append("\n".join(msg["content"]["traceback"]))
            elif kind == "status" and msg["content"].get("execution_state") == "idle":
                idle = True
            elif kind == "execute_reply":
                reply = msg
        if reply is None or not idle:
            raise AssertionError(f"no complete answer within {timeout}s; output so far: {''.join(out)[-2000:]}")
        assert reply["content"]["status"] == "ok", "".join(errors)[-3000:]
        return "".join(out)
    finally:
        ws.close()
        session.delete(f"{base}/api/kernels/{kernel_id}", timeout=30)


def test_3_jupyter_kernel_logs_to_mlflow_and_reads_the_bucket(catalogue):
    from mlflow import MlflowClient

    d = catalogue
    marker = uuid.uuid4().hex[:8]
    d.s3().put_object(Bucket="data", Key=f"e2e/{marker}.txt", Body=f"object {marker}".encode())
    code = f"""
import boto3, mlflow, pathlib
mlflow.set_experiment("jupyter-{marker}")
with mlflow.start_run() as run:
    mlflow.log_param("marker", "{marker}")
    mlflow.log_metric("accuracy", 0.9)
print("RUN", run.info.run_id)
print("OBJECT", boto3.client("s3").get_object(Bucket="data", Key="e2e/{marker}.txt")["Body"].read().decode())
pathlib.Path("notebook-{marker}.txt").write_text("kept {marker}")
"""
    out = run_in_kernel(d, code)
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("RUN ", "OBJECT ")))
    assert lines["OBJECT"] == f"object {marker}"
    # The run is there for a user outside, through the proxy with the generated credentials.
    os.environ.update(d.mlflow_env())
    run = MlflowClient().get_run(lines["RUN"])
    assert run.data.params["marker"] == marker and run.data.metrics["accuracy"] == 0.9
    d.jupyter_marker = marker


FEAST_REPO = """
import datetime as dt, os
import psycopg2
from feast import Entity, FeatureStore, FeatureView, Field
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Float32, Int64

table = "driver_stats_{marker}"
now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
db = psycopg2.connect(host="postgres", dbname="feast", user="feast", password=os.environ["FEAST_DB_PASSWORD"])
with db, db.cursor() as cur:
    cur.execute(f"CREATE TABLE {{table}} (driver_id bigint, conv_rate real, event_timestamp timestamptz, created timestamptz)")
    cur.executemany(f"INSERT INTO {{table}} VALUES (%s, %s, %s, %s)",
                    [(1001, 0.25, now - dt.timedelta(minutes=30), now), (1001, 0.5, now - dt.timedelta(minutes=5), now),
                     (1002, 0.75, now - dt.timedelta(minutes=5), now)])
driver = Entity(name="driver", join_keys=["driver_id"])
view = FeatureView(
    name=table, entities=[driver], ttl=dt.timedelta(days=1), online=True,
    schema=[Field(name="driver_id", dtype=Int64), Field(name="conv_rate", dtype=Float32)],
    source=PostgreSQLSource(name=table, table=table, timestamp_field="event_timestamp", created_timestamp_column="created"),
)
store = FeatureStore()  # configured by FEAST_FS_YAML_FILE_PATH, nothing else
store.apply([driver, view])
store.materialize(start_date=now - dt.timedelta(hours=1), end_date=now + dt.timedelta(minutes=1))
print("MATERIALIZED", table)
"""


def test_4_feast_apply_materialize_and_online_lookup_through_the_feature_server(catalogue):
    import requests

    d = catalogue
    marker = uuid.uuid4().hex[:8]
    out = run_in_kernel(d, FEAST_REPO.format(marker=marker), timeout=300)
    assert f"MATERIALIZED driver_stats_{marker}" in out, out[-2000:]
    # From outside, with what `mlox-iac env` prints: the feature server's URL and credentials.
    from mlox_iac import connect

    env = connect.env_exports(d.outputs, d.ca_path)
    url = env["FEAST_FEATURE_SERVER_URL"] + "/get-online-features"
    auth = (env["FEAST_FEATURE_SERVER_USERNAME"], env["FEAST_FEATURE_SERVER_PASSWORD"])
    body = {"features": [f"driver_stats_{marker}:conv_rate"], "entities": {"driver_id": [1001, 1002]}}
    deadline = time.monotonic() + 60  # the feature server re-reads the registry every 10 s
    while True:
        answer = requests.post(url, json=body, auth=auth, verify=str(d.ca_path), timeout=30)
        if answer.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert answer.status_code == 200, answer.text[:1000]
    result = answer.json()
    names = result["metadata"]["feature_names"]
    values = dict(zip(names, (r["values"] for r in result["results"])))
    assert values["driver_id"] == [1001, 1002]
    assert values["conv_rate"] == [0.5, 0.75]  # the latest value of each driver
    assert requests.post(url, json=body, verify=str(d.ca_path), timeout=30).status_code == 401
    assert requests.post(url, json=body, auth=(auth[0], "wrong"), verify=str(d.ca_path), timeout=30).status_code == 401
    d.feast_marker = marker


LABEL_CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="label" toName="image"><Choice value="cat"/><Choice value="dog"/></Choices></View>"""


def test_4a_label_studio_project_and_imported_file_in_the_bucket(catalogue):
    import requests

    d = catalogue
    base = d.outputs["urls"]["label-studio"]
    api = requests.Session()
    api.verify = str(d.ca_path)
    api.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify (psf/requests#3829)
    api.headers["Authorization"] = "Token " + d.outputs["api_tokens"]["label-studio"]
    marker = uuid.uuid4().hex[:8]
    project = api.post(f"{base}/api/projects", json={"title": f"e2e-{marker}", "label_config": LABEL_CONFIG}, timeout=60)
    assert project.status_code == 201, project.text[:1000]
    project_id = project.json()["id"]
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(2048)  # bytes to find again in the bucket
    imported = api.post(f"{base}/api/projects/{project_id}/import", files={"file": (f"cat-{marker}.png", image)},
                        timeout=120)
    assert imported.status_code == 201, imported.text[:1000]
    assert imported.json()["task_count"] == 1
    tasks = api.get(f"{base}/api/tasks", params={"project": project_id}, timeout=60).json()["tasks"]
    file_url = tasks[0]["data"]["image"]
    assert marker in file_url, file_url
    keys = [o["Key"] for o in d.s3().list_objects_v2(Bucket="labelstudio").get("Contents", [])]
    stored = [k for k in keys if marker in k]
    assert len(stored) == 1, keys
    assert d.s3().get_object(Bucket="labelstudio", Key=stored[0])["Body"].read() == image
    # Streamed back through Label Studio (the bucket itself is not public).
    from urllib.parse import urlsplit

    # Links are absolute (built from LABEL_STUDIO_HOST) or paths, which may carry the prefix
    # ("/label-studio" on the bare address) already.
    prefix = urlsplit(base).path
    if urlsplit(file_url).scheme:
        full = file_url
    elif prefix and file_url.startswith(prefix + "/"):
        full = f"https://{urlsplit(base).netloc}{file_url}"
    else:
        full = base + file_url
    served = api.get(full, timeout=60)
    assert served.status_code == 200 and served.content == image, (file_url, served.status_code)
    # An export snapshot is written to the bucket too (Label Studio's default storage).
    export = api.post(f"{base}/api/projects/{project_id}/exports", json={}, timeout=120)
    assert export.status_code == 201 and export.json()["status"] == "completed", export.text[:1000]
    exported = [o["Key"] for o in d.s3().list_objects_v2(Bucket="labelstudio", Prefix=f"media/export/{project_id}/")
                .get("Contents", [])]
    assert len(exported) == 1, exported
    snapshot = json.loads(d.s3().get_object(Bucket="labelstudio", Key=exported[0])["Body"].read())
    assert len(snapshot) == 1 and marker in snapshot[0]["data"]["image"], snapshot
    # Under uWSGI, as the upstream image runs in production (not Django's development
    # server), and the static files collected in the image are served through the proxy.
    cmdline = d.host.ssh(f"{COMPOSE} exec -T label-studio cat /proc/1/cmdline").stdout.replace("\0", " ")
    assert "uwsgi --ini /label-studio/deploy/uwsgi.ini" in cmdline, cmdline
    css = requests.get(f"{base}/static/css/main.css", verify=str(d.ca_path), timeout=60)
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css") and len(css.content) > 1000, \
        (css.status_code, css.headers)
    unauthenticated = requests.get(f"{base}/api/projects", verify=str(d.ca_path), timeout=30)
    assert unauthenticated.status_code in (401, 403), unauthenticated.status_code
    wrong = requests.get(f"{base}/api/projects", headers={"Authorization": "Token " + "x" * 40},
                         verify=str(d.ca_path), timeout=30)
    assert wrong.status_code in (401, 403), wrong.status_code


def _airflow_api(d: Deployment):
    import requests

    base = d.outputs["urls"]["airflow"]
    api = requests.Session()
    api.verify = str(d.ca_path)
    api.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify (psf/requests#3829)
    token = api.post(f"{base}/auth/token", json={"username": "admin", "password": d.outputs["login_passwords"]["airflow"]},
                     timeout=60)
    assert token.status_code in (200, 201), token.text[:500]
    api.headers["Authorization"] = "Bearer " + token.json()["access_token"]
    return base, api


def test_4c_airflow_runs_a_dag_from_the_synced_repository(catalogue):
    from mlflow import MlflowClient

    d = catalogue
    base, api = _airflow_api(d)
    deadline = time.monotonic() + 300  # the DAG processor clones the repository and parses it
    while api.get(f"{base}/api/v2/dags/mlox_e2e", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, api.get(f"{base}/api/v2/importErrors", timeout=30).text[:2000]
        time.sleep(5)
    assert api.patch(f"{base}/api/v2/dags/mlox_e2e", json={"is_paused": False}, timeout=30).status_code == 200
    marker = uuid.uuid4().hex[:8]
    run = api.post(f"{base}/api/v2/dags/mlox_e2e/dagRuns", json={"logical_date": None, "conf": {"marker": marker}},
                   timeout=30)
    assert run.status_code == 200, run.text[:1000]
    run_id = run.json()["dag_run_id"]
    deadline = time.monotonic() + 300

    def run_state() -> str:
        # A poll that times out on the busy CI machine (Airflow's API server took over 30 s
        # once while both migration modules ran) is "not finished yet", not a failure.
        import requests

        try:
            return api.get(f"{base}/api/v2/dags/mlox_e2e/dagRuns/{run_id}", timeout=30).json()["state"]
        except requests.exceptions.Timeout:
            return "unknown (the poll timed out)"

    while (state := run_state()) not in ("success", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(5)
    # Airflow 3 serves task logs as structured events (JSON), the task's stdout among them.
    # The worker uploads the log to the bucket after the task has reported its state, so for a
    # moment the API server still reads it from the worker (a CI run saw that): wait for the
    # bucket to be the source, bounded.
    remote = f"s3://airflow-logs/logs/dag_id=mlox_e2e/run_id={run_id}/"
    deadline = time.monotonic() + 180
    while True:
        log = api.get(f"{base}/api/v2/dags/mlox_e2e/dagRuns/{run_id}/taskInstances/write_and_track/logs/1",
                      headers={"Accept": "application/json"}, timeout=60)
        assert log.status_code == 200, log.text[-3000:]
        text = "\n".join(str(event.get("event")) for event in log.json()["content"])
        if remote in text or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert state == "success", text[-3000:]
    assert f"MLOX-E2E marker={marker}" in text, text[-3000:]
    assert remote in text, text[-3000:]  # read back from the bucket
    mlflow_run = text.split(f"MLOX-E2E marker={marker} run=", 1)[1][:32]
    assert d.s3().get_object(Bucket="data", Key=f"airflow/{marker}.txt")["Body"].read() == f"written by airflow {marker}".encode()
    # The task log is in the bucket (remote logging), under Airflow's log path for this run.
    logs = [o["Key"] for o in d.s3().list_objects_v2(Bucket="airflow-logs").get("Contents", [])]
    ours = [k for k in logs if f"dag_id=mlox_e2e/run_id={run_id}/task_id=write_and_track/" in k]
    assert ours, logs
    assert f"MLOX-E2E marker={marker}" in d.s3().get_object(Bucket="airflow-logs", Key=ours[0])["Body"].read().decode()
    os.environ.update(d.mlflow_env())
    assert MlflowClient().get_run(mlflow_run).data.metrics["rows"] == 42


def test_4b_new_routes_refuse_unauthenticated_requests(catalogue):
    import requests

    d = catalogue
    for route in ("feast",):  # behind the proxy's basic auth
        assert requests.get(d.outputs["urls"][route] + "/health", verify=str(d.ca_path), timeout=20).status_code == 401
    airflow = d.outputs["urls"]["airflow"]
    for path in ("/api/v2/dags", "/api/v2/connections", "/api/v2/config"):
        assert requests.get(airflow + path, verify=str(d.ca_path), timeout=20).status_code in (401, 403), path
    wrong = requests.post(f"{airflow}/auth/token", json={"username": "admin", "password": "wrong"},
                          verify=str(d.ca_path), timeout=20)
    assert wrong.status_code in (401, 403), wrong.status_code
    base = d.outputs["urls"]["jupyter"]
    for path in ("/api/kernels", "/api/contents", "/api/sessions", "/api/terminals"):
        answer = requests.get(base + path, verify=str(d.ca_path), timeout=20, allow_redirects=False)
        assert answer.status_code == 403, (path, answer.status_code)
    lab = requests.get(base + "/lab", verify=str(d.ca_path), timeout=20, allow_redirects=False)
    assert lab.status_code == 302 and "/login" in lab.headers["Location"], lab.status_code
    wrong = requests.Session()
    wrong.verify = str(d.ca_path)
    wrong.trust_env = False
    wrong.get(f"{base}/login", timeout=20)
    answer = wrong.post(f"{base}/login", data={"password": "wrong", "_xsrf": wrong.cookies["_xsrf"]},
                        allow_redirects=False, timeout=20)
    assert answer.status_code != 302
    assert wrong.get(base + "/api/kernels", timeout=20).status_code == 403


def _memory_mib(d: Deployment) -> dict[str, float]:
    out = d.host.ssh("docker stats --no-stream --format '{{.Name}} {{.MemUsage}}'").stdout
    units = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
    usage = {}
    for line in out.splitlines():
        name, used = line.split(" ", 2)[:2]
        number = used.rstrip("BKMGi")
        usage[name.removeprefix("mlox-").removesuffix("-1")] = float(number) * units[used[len(number):]]
    return usage


PEAKS = r"""for id in $(docker ps -q --no-trunc); do
  dir=$(find /sys/fs/cgroup/memory -maxdepth 4 -type d -name "*$id*" | head -n 1)
  echo "$(docker inspect -f '{{.Name}}' "$id") $(cat "$dir/memory.max_usage_in_bytes")"
done"""


def test_5_idle_memory_of_the_full_preset(catalogue):
    d = catalogue
    # Peak per container since it started: the workload of the tests above (cgroup v1 counter).
    peaks = {}
    for line in d.host.ssh(PEAKS).stdout.splitlines():
        name, peak = line.split()
        peaks[name.strip("/").removeprefix("mlox-").removesuffix("-1")] = int(peak) / 2**20
    time.sleep(30)  # let the kernels from the tests above go and the services settle
    usage = _memory_mib(d)
    total = sum(usage.values())
    report = ", ".join(f"{name} {mib:.0f} (peak {peaks.get(name, 0):.0f})"
                       for name, mib in sorted(usage.items(), key=lambda kv: -kv[1]))
    print(f"[e2e] full preset idle memory: {total:.0f} MiB, peak sum {sum(peaks.values()):.0f} MiB; "
          f"per container idle (peak under the tests' workload): {report}", file=sys.stderr)
    assert set(peaks) == set(usage), (peaks, usage)
    limits = {}
    for line in d.host.ssh("docker inspect -f '{{.Name}} {{.HostConfig.Memory}}' $(docker ps -q)").stdout.splitlines():
        name, limit = line.split()
        limits[name.strip("/").removeprefix("mlox-").removesuffix("-1")] = int(limit) / 2**20
    # Each budget has headroom: the peak under the tests' workload stayed below 90 % of it.
    tight = {n: (round(peaks[n]), limits[n]) for n in LONG_RUNNING if peaks[n] > 0.9 * limits[n]}
    assert not tight, tight


def test_6_unchanged_redeploy_restarts_nothing(catalogue):
    d = catalogue
    before = d.started_at()
    result = d.up()
    assert result.changed() == []
    assert d.started_at() == before


def test_7_reboot_brings_everything_back_with_data(catalogue):
    d = catalogue
    start = time.monotonic()
    d.host.reboot()
    _healthy(d)
    timed("full preset reboot to healthy", time.monotonic() - start)
    value = d.host.ssh(f"{COMPOSE} exec -T redis sh -c 'REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli get mlox-e2e'")
    assert value.stdout.strip() == d.redis_marker
    out = run_in_kernel(d, f"print(open('notebook-{d.jupyter_marker}.txt').read())")
    assert out.strip() == f"kept {d.jupyter_marker}"
