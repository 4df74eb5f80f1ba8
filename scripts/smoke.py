"""Smoke test of a deployed stack from this machine, through its proxy, as user code does.

Configured only by what ``eval "$(mlox-iac env --stack NAME --show-secrets)"`` exports: the
real MLflow client logs a run with parameters, a metric, an artifact and a model (registered
as a new version), and reads the artifact back; boto3 puts an object into a bucket and gets
it back. Prints one JSON line (the run, the model version, the object, the URLs); exits
non-zero on any failure. Run by scripts/quickstart and the sandbox's end-to-end test.

    eval "$(mlox-iac env --stack sandbox --show-secrets)" && python scripts/smoke.py [--bucket data]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import uuid
import warnings
from pathlib import Path

import mlflow

warnings.filterwarnings("ignore", message="Add type hints", category=UserWarning)  # a demo model needs none


class Doubler(mlflow.pyfunc.PythonModel):
    """The smallest model worth serving: x -> 2x."""

    def predict(self, context, model_input, params=None):
        return [2 * float(x) for x in model_input["x"]]


def log_run(marker: str) -> dict:
    from mlflow import MlflowClient

    mlflow.set_experiment(f"smoke-{marker}")
    with mlflow.start_run() as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({"marker": marker, "alpha": 0.5})
        mlflow.log_metric("loss", 0.25)
        notes = Path(tmp) / "notes.txt"
        notes.write_text(f"smoke {marker}\n")
        mlflow.log_artifact(str(notes))
        model = mlflow.pyfunc.log_model(name="model", python_model=Doubler(), registered_model_name=f"smoke-{marker}")
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        back = Path(client.download_artifacts(run.info.run_id, "notes.txt", tmp)).read_text()
    if back != f"smoke {marker}\n":
        raise SystemExit(f"the artifact came back as {back!r}")
    return {"run_id": run.info.run_id, "model": f"smoke-{marker}", "version": str(model.registered_model_version)}


def put_get(bucket: str, marker: str) -> dict:
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")  # endpoint, keys and CA from the environment
    key = f"smoke/{marker}.txt"
    body = f"object {marker}\n".encode()
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    back = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    if back != body:
        raise SystemExit(f"s3://{bucket}/{key} came back as {back!r}")
    return {"bucket": bucket, "key": key, "bytes": len(body)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket", default="data", help="Bucket to put the object into (default: data)")
    args = parser.parse_args()
    missing = [v for v in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD", "AWS_ENDPOINT_URL_S3", "AWS_SECRET_ACCESS_KEY")
               if not os.environ.get(v)]
    if missing:
        raise SystemExit(f"not set: {', '.join(missing)} (run: eval \"$(mlox-iac env --stack NAME --show-secrets)\")")
    marker = uuid.uuid4().hex[:8]
    report = {"mlflow": log_run(marker), "s3": put_get(args.bucket, marker),
              "urls": {"mlflow": os.environ["MLFLOW_TRACKING_URI"], "s3": os.environ["AWS_ENDPOINT_URL_S3"]}}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
