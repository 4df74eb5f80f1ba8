"""Our programs that run inside containers: the container exporter and the model server's
metrics, on fixture files shaped like Docker's and the kernel's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).resolve().parents[2] / "mlox_iac" / "components" / "services" / "programs"
CID = "a" * 64


def load(name: str, monkeypatch, **env):
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), PROGRAMS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def container(docker: Path, cid: str, service: str, running=True, health="healthy", project="mlox", memory=1 << 30):
    d = docker / "containers" / cid
    d.mkdir(parents=True)
    state = {"Running": running, **({"Health": {"Status": health}} if health else {})}
    labels = {"com.docker.compose.project": project, "com.docker.compose.service": service}
    (d / "config.v2.json").write_text(json.dumps({"ID": cid, "Name": f"/{project}-{service}-1", "State": state,
                                                  "Config": {"Labels": labels}}))
    (d / "hostconfig.json").write_text(json.dumps({"Memory": memory}))


@pytest.mark.parametrize("layout", ["cgroup_v1", "cgroup_v2_systemd"])
def test_container_metrics_read_state_memory_and_cpu(tmp_path, monkeypatch, layout):
    docker, cgroup = tmp_path / "docker", tmp_path / "cgroup"
    container(docker, CID, "mlflow")
    container(docker, "b" * 64, "postgres", running=False, health="unhealthy")
    container(docker, "c" * 64, "other", project="someone-else")
    if layout == "cgroup_v1":
        (cgroup / "memory/docker" / CID).mkdir(parents=True)
        (cgroup / "memory/docker" / CID / "memory.usage_in_bytes").write_text("300000000\n")
        (cgroup / "memory/docker" / CID / "memory.stat").write_text("cache 1\ntotal_inactive_file 100000000\n")
        (cgroup / "cpu,cpuacct/docker" / CID).mkdir(parents=True)
        (cgroup / "cpu,cpuacct/docker" / CID / "cpuacct.usage").write_text("2500000000\n")
    else:
        scope = cgroup / "system.slice" / f"docker-{CID}.scope"
        scope.mkdir(parents=True)
        (scope / "memory.current").write_text("300000000\n")
        (scope / "memory.stat").write_text("anon 1\ninactive_file 100000000\n")
        (scope / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 1\n")
    exporter = load("container_metrics.py", monkeypatch, DOCKER_DIR=docker, CGROUP_DIR=cgroup)
    page = exporter.collect()
    rows = [line for line in page.splitlines() if not line.startswith("#")]
    assert rows == [
        'mlox_container_running{service="mlflow",container="mlox-mlflow-1"} 1',
        'mlox_container_healthy{service="mlflow",container="mlox-mlflow-1"} 1',
        f'mlox_container_memory_limit_bytes{{service="mlflow",container="mlox-mlflow-1"}} {1 << 30}',
        'mlox_container_memory_bytes{service="mlflow",container="mlox-mlflow-1"} 200000000',
        'mlox_container_cpu_seconds_total{service="mlflow",container="mlox-mlflow-1"} 2.500000',
        'mlox_container_running{service="postgres",container="mlox-postgres-1"} 0',
        'mlox_container_healthy{service="postgres",container="mlox-postgres-1"} 0',
        f'mlox_container_memory_limit_bytes{{service="postgres",container="mlox-postgres-1"}} {1 << 30}',
    ]


def test_container_metrics_skip_a_file_being_rewritten(tmp_path, monkeypatch):
    docker = tmp_path / "docker"
    container(docker, CID, "mlflow")
    (docker / "containers" / CID / "config.v2.json").write_text('{"ID": "trunc')
    exporter = load("container_metrics.py", monkeypatch, DOCKER_DIR=docker, CGROUP_DIR=tmp_path / "none")
    assert [line for line in exporter.collect().splitlines() if not line.startswith("#")] == []


def test_model_server_metrics_count_requests_latency_and_versions(monkeypatch):
    server = load("model_server.py", monkeypatch)
    metrics = server.Metrics()
    metrics.observe("iris", 200, 0.02)
    metrics.observe("iris", 200, 0.3)
    metrics.observe("iris", 503, 0.001)
    metrics.set("mlox_model_served_version", "iris", 3)
    metrics.inc("mlox_model_switch_failures_total", "iris")
    page = metrics.render().splitlines()
    assert 'mlox_model_requests_total{model="iris",code="200"} 2' in page
    assert 'mlox_model_requests_total{model="iris",code="503"} 1' in page
    assert 'mlox_model_request_duration_seconds_bucket{model="iris",le="0.005"} 1' in page
    assert 'mlox_model_request_duration_seconds_bucket{model="iris",le="0.025"} 2' in page
    assert 'mlox_model_request_duration_seconds_bucket{model="iris",le="+Inf"} 3' in page
    assert 'mlox_model_request_duration_seconds_count{model="iris"} 3' in page
    assert 'mlox_model_served_version{model="iris"} 3' in page
    assert 'mlox_model_switch_failures_total{model="iris"} 1' in page


def test_request_log_samples_and_keeps_records_when_the_upload_fails(monkeypatch):
    server = load("model_server.py", monkeypatch)
    off = server.RequestLog("iris", 0.0, "model-logs")
    off.maybe_add("1", "/invocations", b"{}", 200, b"[1]", 0.01)
    assert off.records == []
    everything = server.RequestLog.__new__(server.RequestLog)  # no flusher thread in a unit test
    everything.model, everything.sample, everything.bucket, everything.records = "iris", 1.0, "model-logs", []
    everything.lock = server.threading.Lock()
    everything.maybe_add("2", "/invocations", b'{"x": 1}', 200, b'{"predictions": [2]}', 0.01)
    record = json.loads(everything.records[0])
    assert (record["version"], record["request"], record["response"]) == ("2", '{"x": 1}', '{"predictions": [2]}')
    monkeypatch.setenv("MLOX_S3_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the upload fails
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    everything.flush()
    assert len(everything.records) == 1  # kept for the next try


def test_model_server_with_no_models_is_healthy_and_ready_for_models(tmp_path, monkeypatch):
    """`preset: full` enables serving before any model is listed: the server then runs its
    metrics endpoint only (what its health check reads) and serves no model route."""
    import subprocess
    import sys
    import time
    import urllib.request

    config = tmp_path / "models.json"
    config.write_text(json.dumps({"poll_seconds": 30, "log_bucket": "model-logs", "models": []}))
    port = load("model_server.py", monkeypatch).free_port()
    env = {"MLOX_SERVING_CONFIG": str(config), "MLOX_METRICS_PORT": str(port), "MLOX_SERVING_CACHE": str(tmp_path)}
    process = subprocess.Popen([sys.executable, str(PROGRAMS / "model_server.py")], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                    assert answer.status == 200
                    assert "mlox_model_served_version{" not in answer.read().decode()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read().decode()
                assert time.monotonic() < deadline, "the model server did not answer /metrics"
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=10)
