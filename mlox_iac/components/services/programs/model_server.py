"""Serve registered MLflow models by alias, and switch versions without a failed request.

For each model in the config file (``MLOX_SERVING_CONFIG``, JSON: name, alias, port,
workers, log_sample) this program:

- polls the registry every ``poll_seconds`` for the version the alias names;
- when it changes: downloads that version, installs its ``requirements.txt`` where the
  image does not already satisfy it (a per-version environment on the cache volume, wheels
  only, so nothing compiles on a small server), starts ``mlflow models serve`` for it on a
  free local port and waits until its ``/ping`` answers; only then does the model's port
  send new requests to it. The old version finishes the requests it has, then stops. If
  anything fails, the old version keeps serving and the switch is retried on a later poll;
- answers on the model's port (``/invocations``, ``/ping``, ``/version``) by passing each
  request to the version being served (503 until one is);
- counts requests, errors and latency per model and the served and wanted versions on
  ``/metrics`` (port ``METRICS_PORT``);
- if ``log_sample`` > 0, logs that fraction of requests with their responses as JSON lines
  to the bucket ``MLOX_LOG_BUCKET`` (``<model>/<date>/<time>-<id>.jsonl``) for later drift
  analysis.

Runs in the pinned MLflow image (MLflow, boto3); otherwise the standard library.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("mlox-serving")
CACHE = Path(os.environ.get("MLOX_SERVING_CACHE", "/cache"))
METRICS_PORT = int(os.environ.get("MLOX_METRICS_PORT", "9200"))
START_TIMEOUT = 600  # seconds for a new version to answer /ping (download, pip, model load)
DRAIN_TIMEOUT = 60  # seconds the old version gets to finish its requests
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FLUSH_SECONDS, FLUSH_RECORDS, MAX_BUFFER, MAX_BODY = 30, 100, 10000, 262144


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """One running version: ``mlflow models serve`` on a local port, and its in-flight count."""

    def __init__(self, version: str, port: int, process: subprocess.Popen):
        self.version, self.port, self.process = version, port, process
        self.inflight = 0
        self.lock = threading.Lock()

    def ping(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/ping")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def stop(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        self.process.terminate()  # uvicorn finishes open connections on SIGTERM
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Metrics:
    """Counters and a latency histogram per model, in Prometheus' text format."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.latency: dict[str, list[float]] = {}  # per model: counts per bucket, then sum, count
        self.gauges: dict[tuple[str, str], float] = {}
        self.counters: dict[tuple[str, str], int] = {}

    def observe(self, model: str, code: int, seconds: float) -> None:
        with self.lock:
            key = (model, str(code))
            self.requests[key] = self.requests.get(key, 0) + 1
            row = self.latency.setdefault(model, [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    row[i] += 1
            row[-2] += seconds
            row[-1] += 1

    def set(self, name: str, model: str, value: float) -> None:
        with self.lock:
            self.gauges[(name, model)] = value

    def inc(self, name: str, model: str, by: int = 1) -> None:
        with self.lock:
            self.counters[(name, model)] = self.counters.get((name, model), 0) + by

    def render(self) -> str:
        with self.lock:
            out = ["# TYPE mlox_model_requests_total counter"]
            out += [f'mlox_model_requests_total{{model="{m}",code="{c}"}} {n}' for (m, c), n in sorted(self.requests.items())]
            out.append("# TYPE mlox_model_request_duration_seconds histogram")
            for model, row in sorted(self.latency.items()):
                for bound, count in zip(BUCKETS, row):
                    out.append(f'mlox_model_request_duration_seconds_bucket{{model="{model}",le="{bound}"}} {count:.0f}')
                out.append(f'mlox_model_request_duration_seconds_bucket{{model="{model}",le="+Inf"}} {row[-1]:.0f}')
                out.append(f'mlox_model_request_duration_seconds_sum{{model="{model}"}} {row[-2]:.6f}')
                out.append(f'mlox_model_request_duration_seconds_count{{model="{model}"}} {row[-1]:.0f}')
            for name in sorted({n for n, _ in self.gauges}):
                out.append(f"# TYPE {name} gauge")
                out += [f'{name}{{model="{m}"}} {v:g}' for (n, m), v in sorted(self.gauges.items()) if n == name]
            for name in sorted({n for n, _ in self.counters}):
                out.append(f"# TYPE {name} counter")
                out += [f'{name}{{model="{m}"}} {v}' for (n, m), v in sorted(self.counters.items()) if n == name]
        return "\n".join(out) + "\n"


METRICS = Metrics()


class RequestLog:
    """Sampled requests and responses, uploaded to the bucket as JSON lines in batches."""

    def __init__(self, model: str, sample: float, bucket: str):
        self.model, self.sample, self.bucket = model, sample, bucket
        self.records: list[str] = []
        self.lock = threading.Lock()
        if sample > 0:
            threading.Thread(target=self._flusher, daemon=True).start()

    def maybe_add(self, version: str, path: str, request: bytes, status: int, response: bytes, seconds: float) -> None:
        if self.sample <= 0 or random.random() >= self.sample:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": self.model, "version": version,
                  "path": path, "status": status, "latency_s": round(seconds, 6),
                  "request": request[:MAX_BODY].decode("utf-8", "replace"),
                  "response": response[:MAX_BODY].decode("utf-8", "replace")}
        with self.lock:
            self.records.append(json.dumps(record))
            if len(self.records) > MAX_BUFFER:  # the bucket is unreachable for long: keep the newest
                METRICS.inc("mlox_model_log_dropped_total", self.model, len(self.records) - MAX_BUFFER)
                del self.records[: len(self.records) - MAX_BUFFER]

    def flush(self) -> None:
        with self.lock:
            batch, self.records = self.records, []
        if not batch:
            return
        import boto3

        key = f"{self.model}/{time.strftime('%Y-%m-%d/%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}.jsonl"
        try:
            boto3.client("s3", endpoint_url=os.environ["MLOX_S3_ENDPOINT"]).put_object(
                Bucket=self.bucket, Key=key, Body=("\n".join(batch) + "\n").encode())
            METRICS.inc("mlox_model_logged_records_total", self.model, len(batch))
        except Exception as exc:  # keep them for the next try
            log.warning("request log upload for %s failed: %s", self.model, exc)
            with self.lock:
                self.records = batch + self.records

    def _flusher(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(1)
            with self.lock:
                due = len(self.records) >= FLUSH_RECORDS
            if due or time.monotonic() - last >= FLUSH_SECONDS:
                self.flush()
                last = time.monotonic()


class Model:
    """One served model: the alias watcher and the version switch."""

    def __init__(self, spec: dict, poll_seconds: float, bucket: str):
        self.name, self.alias, self.port = spec["name"], spec["alias"], spec["port"]
        self.workers = spec.get("workers", 1)
        self.poll_seconds = poll_seconds
        self.active: Backend | None = None
        self.lock = threading.Lock()
        self.requests = RequestLog(self.name, spec.get("log_sample", 0.0), bucket)

    def acquire(self) -> Backend | None:
        with self.lock:
            backend = self.active
            if backend is not None:
                with backend.lock:
                    backend.inflight += 1
            return backend

    def watch(self) -> None:
        from mlflow import MlflowClient

        while True:
            try:
                wanted = MlflowClient().get_model_version_by_alias(self.name, self.alias).version
                METRICS.set("mlox_model_desired_version", self.name, float(wanted))
                if self.active is None or self.active.version != str(wanted):
                    self.switch(str(wanted))
            except Exception as exc:  # registry down, alias not set yet, a broken version: keep serving
                METRICS.inc("mlox_model_switch_failures_total", self.name)
                log.warning("model %s@%s: %s", self.name, self.alias, exc)
            time.sleep(self.poll_seconds)

    def switch(self, version: str) -> None:
        log.info("model %s: starting version %s", self.name, version)
        path = download(self.name, version)
        env = dict(os.environ, PYTHONPATH=prepare_environment(self.name, version, path))
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(path), "-h", "127.0.0.1", "-p", str(port),
             "--env-manager", "local", "-w", str(self.workers)], env=env)
        backend = Backend(version, port, process)
        deadline = time.monotonic() + START_TIMEOUT
        while not backend.ping():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"version {version} did not become healthy (exit {process.poll()})")
            time.sleep(0.5)
        with self.lock:
            old, self.active = self.active, backend
        METRICS.set("mlox_model_served_version", self.name, float(version))
        METRICS.inc("mlox_model_switches_total", self.name)
        log.info("model %s: serving version %s", self.name, version)
        if old is not None:
            old.stop()


def trust_server_ca() -> None:
    """Without a domain, MLflow hands out presigned S3 URLs at the server's own address, whose
    certificate comes from Caddy's internal CA: trust it besides the public roots."""
    root = Path(os.environ.get("MLOX_SERVER_CA", "/mlox/caddy-ca/root.crt"))
    if not root.is_file():
        return
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle = CACHE / "ca-bundle.pem"
    bundle.write_text((system.read_text() if system.is_file() else "") + "\n" + root.read_text())
    os.environ["REQUESTS_CA_BUNDLE"] = os.environ["AWS_CA_BUNDLE"] = str(bundle)


def download(name: str, version: str) -> Path:
    import mlflow

    trust_server_ca()

    target = CACHE / "models" / name / version
    if not (target / ".complete").exists():
        partial = target.with_name(f"{version}.partial")
        subprocess.run(["rm", "-rf", str(partial)], check=True)
        partial.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(partial))
        (partial / ".complete").touch()
        subprocess.run(["rm", "-rf", str(target)], check=True)
        partial.rename(target)
    return target


def prepare_environment(name: str, version: str, path: Path) -> str:
    """A per-version environment with the model's requirements the image lacks; its site-packages.

    The environment sees the image's packages (a ``.pth`` file), so pip installs only what is
    missing or pinned differently; the model server later puts it first on ``PYTHONPATH``.
    """
    env_dir = CACHE / "envs" / f"{name}-{version}"
    site_packages = env_dir / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if not (env_dir / ".complete").exists():
        subprocess.run(["rm", "-rf", str(env_dir)], check=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
        site_packages.mkdir(parents=True, exist_ok=True)
        image_paths = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
        (site_packages / "mlox-image.pth").write_text("\n".join(image_paths) + "\n")
        requirements = path / "requirements.txt"
        if requirements.exists():
            subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install",
                            "--disable-pip-version-check", "--only-binary=:all:", "--cache-dir", str(CACHE / "pip"),
                            "-r", str(requirements)], check=True, timeout=1800)
        (env_dir / ".complete").touch()
    return str(site_packages)


def handler_for(model: Model) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive with the proxy

        def _forward(self, method: str) -> None:
            started = time.monotonic()
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            backend = model.acquire()
            status, payload, ctype, version = 503, b'{"error": "no version of this model is being served yet"}', "application/json", ""
            if backend is not None:
                version = backend.version
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=300)
                    headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
                    conn.request(method, self.path, body=body or None, headers=headers)
                    answer = conn.getresponse()
                    status, payload = answer.status, answer.read()
                    ctype = answer.getheader("Content-Type", "application/json")
                    conn.close()
                except OSError as exc:
                    status, payload = 502, json.dumps({"error": f"model server: {exc}"}).encode()
                finally:
                    with backend.lock:
                        backend.inflight -= 1
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            if version:
                self.send_header("X-Model-Version", version)
            self.end_headers()
            self.wfile.write(payload)
            seconds = time.monotonic() - started
            METRICS.observe(model.name, status, seconds)
            if self.path.startswith("/invocations"):
                model.requests.maybe_add(version, self.path, body, status, payload, seconds)

        def do_GET(self) -> None:  # noqa: N802
            self._forward("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._forward("POST")

        def log_message(self, *args) -> None:  # the proxy logs requests; metrics count them
            pass

    return Handler


class MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = METRICS.render().encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = json.loads(Path(os.environ.get("MLOX_SERVING_CONFIG", "/mlox/models.json")).read_text())
    for spec in config["models"]:
        model = Model(spec, config["poll_seconds"], config["log_bucket"])
        METRICS.set("mlox_model_served_version", model.name, 0)
        server = ThreadingHTTPServer(("0.0.0.0", model.port), handler_for(model))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        threading.Thread(target=model.watch, daemon=True, name=f"watch-{model.name}").start()
    ThreadingHTTPServer(("0.0.0.0", METRICS_PORT), MetricsHandler).serve_forever()


if __name__ == "__main__":
    main()
