"""The real MLflow client against a deployed stack, configured only by environment variables
(MLFLOW_TRACKING_URI / _USERNAME / _PASSWORD / _SERVER_CERT_PATH), as user code would be.

    python mlflow_client.py log MARKER      # experiment, params, metrics, artifact, model version
    python mlflow_client.py check RUN MARKER  # the run, its metric and artifact are still there
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient


def log(marker: str) -> None:
    experiment = f"e2e-{marker}"
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_params({"alpha": 0.5, "marker": marker})
        for step in range(3):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"notes-{marker}.txt"
            path.write_text(f"artifact {marker}\n")
            mlflow.log_artifact(str(path))
    client = MlflowClient()
    name = f"model-{marker}"
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}", run_id=run.info.run_id)
    print(json.dumps({"run_id": run.info.run_id, "marker": marker, "experiment": experiment,
                      "version": str(version.version)}))


def check(run_id: str, marker: str) -> None:
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.data.params["marker"] == marker, run.data.params
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5, 1.0 / 3]
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, f"notes-{marker}.txt", tmp)
        assert Path(local).read_text() == f"artifact {marker}\n"
    versions = client.search_model_versions(f"name='model-{marker}'")
    assert [v.version for v in versions] == ["1"], versions
    print("ok")


if __name__ == "__main__":
    {"log": log, "check": check}[sys.argv[1]](*sys.argv[2:])
