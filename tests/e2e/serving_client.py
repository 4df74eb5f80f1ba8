"""The real MLflow client registering a model version and moving its alias, configured only
by the environment (MLFLOW_TRACKING_URI / _USERNAME / _PASSWORD / _SERVER_CERT_PATH).

    python serving_client.py register NAME FACTOR   # log a pyfunc model (x -> x * FACTOR) as a new version
    python serving_client.py alias NAME ALIAS VERSION
"""

from __future__ import annotations

import json
import sys

import mlflow
from mlflow import MlflowClient


class Scale(mlflow.pyfunc.PythonModel):
    """Multiplies column ``x`` by a factor: each version answers differently."""

    def __init__(self, factor: float):
        self.factor = factor

    def predict(self, context, model_input, params=None):
        return [float(x) * self.factor for x in model_input["x"]]


def register(name: str, factor: str) -> None:
    mlflow.set_experiment(f"serving-{name}")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=Scale(float(factor)), registered_model_name=name)
    print(json.dumps({"version": str(info.registered_model_version)}))


def alias(name: str, alias_: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias_, version)
    print(json.dumps({"alias": alias_, "version": version}))


if __name__ == "__main__":
    {"register": register, "alias": alias}[sys.argv[1]](*sys.argv[2:])
