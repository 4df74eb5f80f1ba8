"""Load on a deployed stack with the real clients: large objects, and many concurrent users.

Used by tests/e2e/test_load.py and benchmarks/load.py. Everything reaches the stack the
way user code does: boto3 at the S3 endpoint and the MLflow client at the tracking URI,
through Caddy, trusting its CA; credentials come from the environment that
``mlox-iac env`` prints (MLFLOW_TRACKING_*, AWS_*, AWS_ENDPOINT_URL_S3, AWS_CA_BUNDLE).

    python -m tests.e2e.loadgen users --clients 16 --seconds 60   # prints one JSON report

No object is held in memory whole: uploads read a stream of random bytes and hash it
as it is read, downloads hash what arrives.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
BUCKET = "data"


class RandomStream:
    """``size`` random bytes as a read-only, non-seekable stream; ``sha256`` of what was read."""

    def __init__(self, size: int):
        self.left = size
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = os.urandom(n)
        self.left -= n
        self.sha256.update(data)
        return data


class HashingWriter:
    """A write-only sink that keeps only the SHA-256 and the size of what it was given."""

    def __init__(self):
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


def s3_client():
    """boto3's S3 client as user code makes it, from the environment (default retries).

    ``MLOX_S3_SIGN_PAYLOAD=1`` makes it hash every upload body for the signature over
    HTTPS too, as botocore always does over plain HTTP: benchmarks/load.py sets it so a
    transfer through Caddy and one straight to SeaweedFS cost the client the same.
    """
    import boto3
    from botocore.config import Config

    options = {"addressing_style": "path"}
    if os.environ.get("MLOX_S3_SIGN_PAYLOAD") == "1":
        options["payload_signing_enabled"] = True
    return boto3.session.Session().client("s3", config=Config(s3=options))


def roundtrip(key: str, size: int, bucket: str = BUCKET) -> dict:
    """Upload ``size`` random bytes with boto3's default transfer settings (multipart, 10
    threads), download them the same way; return the hashes and the rates."""
    s3 = s3_client()
    source = RandomStream(size)
    start = time.monotonic()
    s3.upload_fileobj(source, bucket, key)
    up = time.monotonic() - start
    sink = HashingWriter()
    start = time.monotonic()
    s3.download_fileobj(bucket, key, sink)
    down = time.monotonic() - start
    return {"key": key, "size": size, "sent_sha256": source.sha256.hexdigest(), "got_sha256": sink.sha256.hexdigest(),
            "got_size": sink.size, "up_MBps": size / MiB / up, "down_MBps": size / MiB / down}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def mlflow_artifact_roundtrip(size: int, workdir: Path) -> dict:
    """Log a ``size``-byte artifact through MLflow's artifact proxy and download it again."""
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("load-artifacts")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("load-artifacts")
    run = client.create_run(experiment_id)
    path = workdir / "model.bin"
    sent = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            sent.update(block)
            f.write(block)
    start = time.monotonic()
    client.log_artifact(run.info.run_id, str(path))
    up = time.monotonic() - start
    path.unlink()
    start = time.monotonic()
    local = Path(client.download_artifacts(run.info.run_id, "model.bin", str(workdir)))
    down = time.monotonic() - start
    client.set_terminated(run.info.run_id)
    result = {"size": size, "sent_sha256": sent.hexdigest(), "got_sha256": file_sha256(local),
              "got_size": local.stat().st_size, "up_MBps": size / MiB / up, "down_MBps": size / MiB / down}
    local.unlink()
    return result


# ----- many users at once -------------------------------------------------------------------

@dataclass
class Tally:
    """Every request a simulated user made: (kind, seconds), and the failures."""

    latencies: list[tuple[str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    s3_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, kind: str, call, *args, **kwargs):
        start = time.monotonic()
        try:
            result = call(*args, **kwargs)
        except Exception as exc:  # the client's own retries are exhausted: a failed request
            with self.lock:
                self.failures.append(f"{kind}: {type(exc).__name__}: {str(exc)[:300]}")
            raise
        with self.lock:
            self.latencies.append((kind, time.monotonic() - start))
        return result


def _mlflow_user(tally: Tally, experiment_id: str, rng: random.Random, workdir: Path) -> None:
    """One MLflow session: a run with params, a batch of metrics, a small artifact."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient()
    run = tally.timed("mlflow create_run", client.create_run, experiment_id)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric("loss", rng.random(), now, step) for step in range(50)]
    tally.timed("mlflow log_batch", client.log_batch, run_id, metrics=metrics,
                params=[Param("lr", str(rng.random()))])
    path = workdir / f"notes-{uuid.uuid4().hex[:8]}.txt"
    path.write_bytes(os.urandom(rng.randint(1, 64) * 1024))
    tally.timed("mlflow log_artifact", client.log_artifact, run_id, str(path))
    path.unlink()
    tally.timed("mlflow set_terminated", client.set_terminated, run_id)


def _s3_user(tally: Tally, s3, rng: random.Random) -> None:
    """One S3 session: put an object of 1-16 MiB, get it back, compare."""
    size = rng.randint(1, 16) * MiB
    body = os.urandom(size)
    key = f"load/{uuid.uuid4().hex}"
    tally.timed("s3 put_object", s3.put_object, Bucket=BUCKET, Key=key, Body=body)
    got = tally.timed("s3 get_object", lambda: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    if hashlib.sha256(got).digest() != hashlib.sha256(body).digest():
        with tally.lock:
            tally.failures.append(f"s3 get_object: {key} came back different ({len(got)} of {size} bytes)")
    with tally.lock:
        tally.s3_bytes += 2 * size


def users(clients: int, seconds: float, seed: int = 0) -> dict:
    """``clients`` concurrent users for ``seconds``, each alternating MLflow logging and
    S3 put/get at random; returns requests/s, latency percentiles and every failure."""
    from mlflow import MlflowClient

    client = MlflowClient()
    name = f"load-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)
    tally = Tally()
    deadline = time.monotonic() + seconds
    workdir = Path(tempfile.mkdtemp(prefix="mlox-load-"))

    def user(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        s3 = s3_client()
        while time.monotonic() < deadline:
            try:
                if rng.random() < 0.5:
                    _mlflow_user(tally, experiment_id, rng, workdir)
                else:
                    _s3_user(tally, s3, rng)
            except Exception:  # already counted as a failure; the user carries on
                pass

    start = time.monotonic()
    threads = [threading.Thread(target=user, args=(i,), name=f"user-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    return summary(tally, clients, elapsed)


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


def summary(tally: Tally, clients: int, elapsed: float) -> dict:
    by_kind: dict[str, list[float]] = {}
    for kind, seconds in tally.latencies:
        by_kind.setdefault(kind, []).append(seconds)
    every = [s for _, s in tally.latencies]
    return {
        "clients": clients, "seconds": round(elapsed, 1), "requests": len(every),
        "requests_per_s": round(len(every) / elapsed, 2),
        "p50_ms": round(1000 * percentile(every, 50), 1), "p95_ms": round(1000 * percentile(every, 95), 1),
        "s3_MBps": round(tally.s3_bytes / MiB / elapsed, 2),
        "by_kind": {k: {"n": len(v), "p50_ms": round(1000 * statistics.median(v), 1),
                        "p95_ms": round(1000 * percentile(v, 95), 1)} for k, v in sorted(by_kind.items())},
        "failures": tally.failures,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    u = sub.add_parser("users", help="concurrent users mixing MLflow logging and S3 put/get")
    u.add_argument("--clients", type=int, default=16)
    u.add_argument("--seconds", type=float, default=60)
    r = sub.add_parser("roundtrip", help="upload and download one object with boto3's defaults")
    r.add_argument("--mib", type=int, required=True)
    r.add_argument("--key", default=None)
    a = sub.add_parser("artifact", help="an artifact through MLflow's artifact proxy, and back")
    a.add_argument("--mib", type=int, required=True)
    args = ap.parse_args(argv)
    if args.command == "users":
        report = users(args.clients, args.seconds)
    elif args.command == "roundtrip":
        report = roundtrip(args.key or f"roundtrip/{uuid.uuid4().hex}", args.mib * MiB)
    else:
        with tempfile.TemporaryDirectory(prefix="mlox-artifact-") as tmp:
            report = mlflow_artifact_roundtrip(args.mib * MiB, Path(tmp))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
