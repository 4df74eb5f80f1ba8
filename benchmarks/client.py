"""mlox-client's cost, as ratios against a floor measured in the same run.

Floor: ``import boto3`` in a fresh Python (what any code that reads the stack's S3 pays).
Measured, each in a fresh Python, timed inside it around the statement (interpreter start
left out), median of ``--repeat`` runs:

- ``import mlox_client``                                     (goal <= 1.0 of the floor)
- ``import mlox_client; mlox_client.connect()`` from environment variables  (goal <= 1.0)
- the same from a profile file                                               (goal <= 1.0)

With ``--s3 STACK`` (a deployed stack; needs its profile or exports, and pandas, pyarrow,
s3fs, boto3): S3 Parquet round-trip throughput through the client (pandas encodes and writes
through ``s3://`` with ``stack.s3.storage_options``, pyarrow reads and decodes with
``stack.s3.filesystem()``) as a ratio to raw boto3 doing the same (encode to a buffer,
``upload_fileobj``, ``get_object``, decode) with the same endpoint, keys and CA (goal >= 0.9);
median of three rounds, the two paths alternating.

    python benchmarks/client.py [--repeat 15] [--s3 prod --mb 100] [--s3-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GOAL_IMPORT = 1.0
GOAL_S3 = 0.9


def timed(statement: str, setup: str = "", env: dict | None = None) -> float:
    """Seconds ``statement`` takes in a fresh Python (after ``setup``, which is not timed)."""
    code = f"{setup}\nimport time\n_t = time.perf_counter()\n{statement}\nprint(time.perf_counter() - _t)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "client" / "src"), **(env or {})})
    return float(done.stdout.strip().splitlines()[-1])


def median_of(repeat: int, *args, **kwargs) -> float:
    return statistics.median(timed(*args, **kwargs) for _ in range(repeat))


def settings_env(config: Path) -> tuple[dict, dict]:
    """Environment variables of a full stack (as mlox-iac env exports them), and the same as a
    profile in ``config``: the two ways connect() reads a laptop's settings."""
    from mlox_iac import connect
    from tests.client.client_helpers import full_outputs

    exports = connect.env_exports(full_outputs(), Path("/nonexistent/root.crt"), stack="bench")
    connect.write_profile("bench", exports, config / "mlox")
    quiet = {"MLOX_CLIENT_SETTINGS": str(config / "none.json")}
    from_env = {**exports, **quiet, "XDG_CONFIG_HOME": str(config / "empty")}
    from_profile = {"XDG_CONFIG_HOME": str(config), **quiet}
    return from_env, from_profile


def imports(repeat: int) -> float:
    clear = {k: "" for k in os.environ if k.startswith(("MLOX_", "MLFLOW_", "AWS_"))}
    with tempfile.TemporaryDirectory() as tmp:
        from_env, from_profile = settings_env(Path(tmp))
        rows = [
            ("import boto3 (floor)", median_of(repeat, "import boto3")),
            ("import mlox_client", median_of(repeat, "import mlox_client")),
            ("connect() from env", median_of(repeat, "import mlox_client; mlox_client.connect()", env=from_env)),
            ("connect() from profile", median_of(repeat, "import mlox_client; mlox_client.connect()",
                                                 env={**clear, **from_profile})),
        ]
    floor = rows[0][1]
    print(f"{'measured':<26} {'median ms':>10} {'ratio':>7}  goal <= {GOAL_IMPORT} (runs: {repeat})")
    worst = 0.0
    for name, seconds in rows:
        ratio = seconds / floor
        if name != rows[0][0]:
            worst = max(worst, ratio)
        print(f"{name:<26} {seconds * 1000:10.1f} {ratio:7.3f}  {'' if name == rows[0][0] else ('ok' if ratio <= GOAL_IMPORT else 'OVER')}")
    print(f"worst ratio {worst:.3f} ({'meets' if worst <= GOAL_IMPORT else 'misses'} the goal of {GOAL_IMPORT})")
    return worst


def s3_throughput(stack_name: str, megabytes: int = 100, repeat: int = 3) -> float:
    """Parquet round trip (encode, write, read, decode) through mlox-client vs raw boto3 with
    the same endpoint, keys, CA and addressing; median of ``repeat`` rounds, the two paths
    alternating in each. Returns the throughput ratio (goal >= 0.9). Needs a deployed stack."""
    import io

    import boto3
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    import mlox_client

    stack = mlox_client.connect(stack_name)
    bucket = "data" if "data" in stack.s3.buckets else stack.s3.buckets[0]
    frame = pd.DataFrame(np.random.default_rng(1).random((megabytes * 1_000_000 // 64, 8)),
                         columns=[f"c{i}" for i in range(8)])
    raw = boto3.session.Session().client("s3", **stack.s3.client_kwargs())

    def through_client() -> float:
        started = time.perf_counter()
        frame.to_parquet(stack.s3.url(bucket, "bench/client.parquet"), storage_options=stack.s3.storage_options)
        pq.read_table(f"{bucket}/bench/client.parquet", filesystem=stack.s3.filesystem())
        return time.perf_counter() - started

    def through_boto3() -> float:
        started = time.perf_counter()
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        buffer.seek(0)
        raw.upload_fileobj(buffer, bucket, "bench/raw.parquet")
        pq.read_table(io.BytesIO(raw.get_object(Bucket=bucket, Key="bench/raw.parquet")["Body"].read()))
        return time.perf_counter() - started

    client_runs, raw_runs = [], []
    for i in range(repeat):
        for run, into in ((through_client, client_runs), (through_boto3, raw_runs))[::1 if i % 2 == 0 else -1]:
            into.append(run())
    size = raw.head_object(Bucket=bucket, Key="bench/raw.parquet")["ContentLength"]
    for key in ("bench/client.parquet", "bench/raw.parquet"):
        raw.delete_object(Bucket=bucket, Key=key)
    stack.close()
    client_s, raw_s = statistics.median(client_runs), statistics.median(raw_runs)
    ratio = raw_s / client_s
    print(json.dumps({"bytes": size, "rounds": repeat, "client_MBps": round(2 * size / client_s / 1e6, 1),
                      "boto3_MBps": round(2 * size / raw_s / 1e6, 1), "ratio": round(ratio, 3), "goal": GOAL_S3,
                      "meets": ratio >= GOAL_S3}))
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--s3", metavar="STACK", help="also measure S3 Parquet throughput against this stack")
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--s3-only", action="store_true", help="only the S3 measurement (a laptop's Python with "
                        "mlox-client[s3] and pandas, no mlox-iac)")
    args = parser.parse_args()
    if not args.s3_only:
        imports(args.repeat)
    if args.s3:
        s3_throughput(args.s3, args.mb)
    else:
        print("S3 Parquet throughput: not run (needs a deployed stack: --s3 STACK)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
