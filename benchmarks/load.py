"""Concurrent users and S3 throughput through Caddy, against a floor measured in the same run.

Deploys the core stack onto a fresh target host (the e2e harness: a systemd-nspawn
Debian host on this machine, the program replayed over SSH; needs root), then:

1. Users: N concurrent clients on this machine for S seconds, each alternating MLflow
   logging (run, params, 50 metrics, a small artifact) and S3 put/get of 1-16 MiB
   objects, through Caddy with TLS (tests/e2e/loadgen.py). Prints requests/s, p50/p95
   latency per request kind, and failures.
2. Throughput ratio: the same boto3 transfer (upload then download of one object with
   boto3's default transfer settings: multipart, 8 MiB parts, 10 threads) through Caddy
   (https://<server address>, TLS, the internal CA) and straight to SeaweedFS's S3 port
   (http://<container address>:8333). To make the comparison fair, both run from the same
   place, inside the server's own network namespace (a container of the MLflow image,
   which has boto3, with --network host), one after the other, alternating, several
   times; and the client hashes upload bodies in both (botocore always does over plain
   HTTP; MLOX_S3_SIGN_PAYLOAD=1 makes it do so over HTTPS too). What differs is only TLS
   and the proxy hop. Ratio = MB/s through Caddy / MB/s direct (goal >= 0.7).

    sudo .venv/bin/python benchmarks/load.py [--clients 16] [--seconds 60] [--mib 256] [--repeat 3]

It uses the e2e host group prefix mlxbench (index 101: no e2e module uses it) unless MLOX_BENCH_PREFIX / _INDEX say otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.e2e.stack import deployment_on_host  # noqa: E402

GOAL = 0.7
BENCH_DIR = "/root/mlox-bench"  # on the server: loadgen.py, the CA, a 0600 env file with the S3 keys
MLFLOW_IMAGE = "ghcr.io/mlflow/mlflow:v3.17.2-full"


def users(d, clients: int, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    result = subprocess.run([sys.executable, "-m", "tests.e2e.loadgen", "users", "--clients", str(clients),
                             "--seconds", str(seconds)], cwd=ROOT, capture_output=True, text=True,
                            env={**env, **d.client_env()}, timeout=seconds + 900)
    if result.returncode != 0:
        raise SystemExit(f"load generator failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def prepare_server(d) -> tuple[str, str]:
    """Ship loadgen.py, the CA and the S3 keys (stdin, mode 0600) to the server; the two endpoints."""
    host = d.host
    host.ssh(f"mkdir -p {BENCH_DIR} && chmod 700 {BENCH_DIR}")
    host.put_file(f"{BENCH_DIR}/loadgen.py", (ROOT / "tests/e2e/loadgen.py").read_text())
    host.put_file(f"{BENCH_DIR}/ca.crt", d.ca_path.read_text())
    keys = (f"AWS_ACCESS_KEY_ID={d.outputs['s3_access_key']}\nAWS_SECRET_ACCESS_KEY={d.outputs['s3_secret_key']}\n"
            "AWS_DEFAULT_REGION=us-east-1\n")
    host.ssh(f"umask 077; cat > {BENCH_DIR}/s3.env", input=keys)
    name = d.containers()["seaweedfs"]["name"]
    ip = host.ssh(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name]).stdout.split()[0]
    return f"http://{ip}:8333", d.outputs["s3_endpoint"]


def transfer_on_server(d, endpoint: str, mib: int) -> dict:
    """One boto3 upload + download of ``mib`` MiB from the server's own network namespace."""
    argv = ["docker", "run", "--rm", "--network", "host", "--env-file", f"{BENCH_DIR}/s3.env",
            "-e", f"AWS_ENDPOINT_URL_S3={endpoint}", "-e", f"AWS_CA_BUNDLE={BENCH_DIR}/ca.crt",
            "-e", "MLOX_S3_SIGN_PAYLOAD=1", "-v", f"{BENCH_DIR}:{BENCH_DIR}:ro", "-w", BENCH_DIR,
            MLFLOW_IMAGE, "python", "loadgen.py", "roundtrip", "--mib", str(mib)]
    out = d.host.ssh(" ".join(shlex.quote(a) for a in argv), timeout=1800).stdout
    report = json.loads(out.strip().splitlines()[-1])
    if report["got_sha256"] != report["sent_sha256"]:
        raise SystemExit(f"{endpoint}: the downloaded object differs from the uploaded one")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--mib", type=int, default=256, help="object size of the throughput transfer")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    prefix = os.environ.get("MLOX_BENCH_PREFIX", "mlxbench")
    index = int(os.environ.get("MLOX_BENCH_INDEX", "101"))
    with tempfile.TemporaryDirectory(prefix="mlox-bench-") as work, \
            deployment_on_host(Path(work), prefix=prefix, first_index=index) as d:
        d.bring_up()
        before = d.containers()

        report = users(d, args.clients, args.seconds)
        print(f"users: {report['clients']} clients for {report['seconds']} s through Caddy: "
              f"{report['requests']} requests, {report['requests_per_s']} requests/s, "
              f"p50 {report['p50_ms']} ms, p95 {report['p95_ms']} ms, S3 {report['s3_MBps']} MiB/s, "
              f"{len(report['failures'])} failed")
        for kind, row in report["by_kind"].items():
            print(f"  {kind:<24} n={row['n']:<5} p50 {row['p50_ms']:>8} ms  p95 {row['p95_ms']:>8} ms")
        for failure in report["failures"][:10]:
            print(f"  failed: {failure}")

        direct, proxied = prepare_server(d)
        rates: dict[str, dict[str, list[float]]] = {"direct": {"up": [], "down": []},
                                                    "caddy": {"up": [], "down": []}}
        for _ in range(args.repeat):
            for path, endpoint in (("direct", direct), ("caddy", proxied)):
                r = transfer_on_server(d, endpoint, args.mib)
                rates[path]["up"].append(r["up_MBps"])
                rates[path]["down"].append(r["down_MBps"])
        print(f"S3 throughput, {args.mib} MiB object, boto3 defaults, from the server itself, median of {args.repeat}:")
        print(f"{'':<10} {'direct MiB/s':>13} {'caddy MiB/s':>12} {'ratio':>6}  goal >= {GOAL}")
        worst = float("inf")
        for direction in ("up", "down"):
            a = statistics.median(rates["direct"][direction])
            b = statistics.median(rates["caddy"][direction])
            worst = min(worst, b / a)
            print(f"{direction:<10} {a:13.1f} {b:12.1f} {b / a:6.2f}  {'ok' if b / a >= GOAL else 'UNDER'}")
        print(f"worst ratio {worst:.2f} ({'meets' if worst >= GOAL else 'misses'} the goal of {GOAL})")

        after = d.containers()
        changed = {s: (before[s], after.get(s)) for s in before
                   if after.get(s, {}).get("restarts") != before[s]["restarts"] or after.get(s, {}).get("oom_killed")}
        print("containers: no OOM kill, no restart" if not changed else f"containers changed: {changed}")
        d.host.ssh(f"rm -rf {BENCH_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
