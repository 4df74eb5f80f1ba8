"""A data scientist's first day with an mlox stack, end to end, through mlox-client only.

The same file runs unchanged on a laptop (with a profile or ``mlox-iac env`` exports), in a
JupyterLab kernel of the stack, and in an Airflow task (``day_one_dag.py``). Each run:

1. logs an MLflow run and registers its model as a new version of ``--model`` (alias
   ``champion``), the one the stack serves (``mlox:services.serving.models: [{name: ...}]``);
2. writes a ``--parquet-mb`` MB Parquet file with pandas through ``s3://`` and reads it back
   with pyarrow;
3. writes and reads a Postgres table in the team's database;
4. applies a Feast feature view over a Postgres table, materializes it, reads online features;
5. calls the served model until it answers with the version this run registered;
6. with ``--dag``: triggers that DAG and waits for it to succeed (from a laptop: the DAG in
   ``day_one_dag.py`` runs this file inside the stack).

Needs ``pip install 'mlox-client[mlflow,s3,sql,feast]' pandas``. Prints one JSON line per
step and a summary; exits 1 if a step failed.

    python day_one.py                         # the stack of the one profile, or of the environment
    python day_one.py --stack prod --dag mlox_day_one
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import mlox_client

# Where this run is, for the run names and object keys (the DAG sets MLOX_DAY_ONE_WHERE: its
# task runs in the stack's client virtualenv, a process of its own).
WHERE = os.environ.get("MLOX_DAY_ONE_WHERE") or (
    "airflow" if os.environ.get("AIRFLOW_CTX_DAG_ID") else ("jupyter" if os.environ.get("JPY_PARENT_PID") else "laptop"))


def step(name):
    """Run a step, time it, print its result as one JSON line; a failure is reported, not raised."""
    def wrap(fn):
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                result = {"step": name, "ok": True, **(fn(*args, **kwargs) or {})}
            except Exception as error:  # noqa: BLE001 (every step is reported)
                result = {"step": name, "ok": False, "error": f"{type(error).__name__}: {error}"}
            result["seconds"] = round(time.perf_counter() - started, 2)
            print(json.dumps(result), flush=True)
            return result
        return run
    return wrap


# ----- 1. MLflow ---------------------------------------------------------------------------

def _scale_model(factor: float):
    import mlflow

    class Scale(mlflow.pyfunc.PythonModel):
        """x -> x * factor: each run's version answers differently."""

        def __init__(self, factor: float):
            self.factor = factor

        def predict(self, context, model_input, params=None):
            return [float(x) * self.factor for x in model_input["x"]]

    return Scale(factor)


@step("mlflow")
def log_and_register(stack, model: str, factor: float, marker: str):
    mlflow = stack.mlflow.module()
    mlflow.set_experiment("day-one")
    with mlflow.start_run(run_name=f"{WHERE}-{marker}") as run:
        mlflow.log_params({"where": WHERE, "factor": factor})
        mlflow.log_metric("rmse", 0.5)
        info = mlflow.pyfunc.log_model(name="model", python_model=_scale_model(factor), registered_model_name=model)
    version = str(info.registered_model_version)
    stack.mlflow.client().set_registered_model_alias(model, "champion", version)
    return {"run_id": run.info.run_id, "model": model, "version": version}


# ----- 2. S3 -------------------------------------------------------------------------------

@step("s3-parquet")
def parquet_round_trip(stack, megabytes: int, marker: str):
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    rows = megabytes * 1_000_000 // 64  # 8 random float64 columns: about 64 bytes a row, incompressible
    frame = pd.DataFrame(np.random.default_rng(7).random((rows, 8)), columns=[f"c{i}" for i in range(8)])
    bucket = "data" if "data" in stack.s3.buckets else stack.s3.buckets[0]
    key = f"day-one/{WHERE}-{marker}.parquet"
    started = time.perf_counter()
    frame.to_parquet(stack.s3.url(bucket, key), storage_options=stack.s3.storage_options)
    written = time.perf_counter() - started
    size = stack.s3.client().head_object(Bucket=bucket, Key=key)["ContentLength"]
    started = time.perf_counter()
    table = pq.read_table(f"{bucket}/{key}", filesystem=stack.s3.filesystem())
    read = time.perf_counter() - started
    assert table.num_rows == rows and abs(table.column("c3").to_pandas().sum() - frame["c3"].sum()) < 1e-6
    stack.s3.client().delete_object(Bucket=bucket, Key=key)
    return {"url": stack.s3.url(bucket, key), "bytes": size, "write_MBps": round(size / written / 1e6, 1),
            "read_MBps": round(size / read / 1e6, 1)}


# ----- 3. Postgres -------------------------------------------------------------------------

@step("postgres")
def table_round_trip(stack, marker: str):
    import pandas as pd

    engine = stack.postgres.engine()
    table = f"day_one_{WHERE}"
    frame = pd.DataFrame({"id": range(1000), "marker": marker})
    frame.to_sql(table, engine, if_exists="replace", index=False)
    back = pd.read_sql(f"SELECT count(*) AS n, max(marker) AS marker FROM {table}", engine)
    assert (int(back.n[0]), back.marker[0]) == (1000, marker)
    engine.dispose()
    return {"table": table, "rows": 1000}


# ----- 4. Feast ----------------------------------------------------------------------------

@step("feast")
def features(stack, marker: str):
    import pandas as pd
    from feast import Entity, FeatureView, Field
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
    from feast.types import Float64, Int64

    # The source table lives in Feast's own database (its offline store), written with its login.
    offline = stack.feast.config()["offline_store"]
    engine = stack.postgres.engine(offline["database"], user=offline["user"], password=offline["password"])
    now = datetime.now(timezone.utc).replace(microsecond=0)
    table = f"day_one_drivers_{WHERE}"
    pd.DataFrame({"driver_id": [1001, 1002], "rate": [0.5, 0.9], "trips": [10, 20],
                  "event_timestamp": [now - timedelta(minutes=5)] * 2}).to_sql(table, engine, if_exists="replace",
                                                                              index=False)
    engine.dispose()
    driver = Entity(name="driver", join_keys=["driver_id"])
    view = FeatureView(name=f"driver_stats_{WHERE}", entities=[driver], ttl=timedelta(days=1),
                       schema=[Field(name="rate", dtype=Float64), Field(name="trips", dtype=Int64)],
                       source=PostgreSQLSource(name=table, query=f"SELECT * FROM {table}",
                                               timestamp_field="event_timestamp"))
    store = stack.feast.store()
    store.apply([driver, view])
    store.materialize(start_date=now - timedelta(hours=1), end_date=now + timedelta(minutes=1))
    online = store.get_online_features(features=[f"{view.name}:rate", f"{view.name}:trips"],
                                       entity_rows=[{"driver_id": 1001}, {"driver_id": 1002}]).to_dict()
    assert online["rate"] == [0.5, 0.9], online
    return {"feature_view": view.name, "online": online}


# ----- 5. the served model -----------------------------------------------------------------

@step("served-model")
def call_served_model(stack, model: str, factor: float, timeout: float):
    import pandas as pd

    served = stack.model(model)
    deadline = time.monotonic() + timeout
    while True:  # the model server picks the new alias up within its poll interval
        try:
            predictions = served.predict(pd.DataFrame({"x": [1.0, 2.0]}))
            if predictions == [factor, 2 * factor]:
                return {"url": served.url, "predictions": predictions}
            last = f"still the previous version: {predictions}"
        except mlox_client.RemoteError as error:
            last = str(error)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{model} did not serve this run's version within {timeout:.0f}s ({last})")
        time.sleep(5)


# ----- 6. Airflow --------------------------------------------------------------------------

@step("airflow")
def run_dag(stack, dag: str, marker: str, timeout: float):
    run_id = stack.airflow.trigger(dag, {"marker": marker})
    state = stack.airflow.wait(dag, run_id, timeout=timeout)
    logs = stack.airflow.task_logs(dag, run_id)
    return {"dag": dag, "run_id": run_id, "state": state, "tasks": sorted(logs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", help="the stack's name (default: what connect() finds)")
    parser.add_argument("--profile", help="a profile file (default: what connect() finds)")
    parser.add_argument("--model", default="mlox-day-one", help="a model the stack serves (mlox:services.serving.models)")
    parser.add_argument("--parquet-mb", type=int, default=100)
    parser.add_argument("--dag", help="trigger this DAG and wait for it (from a laptop)")
    parser.add_argument("--skip", action="append", default=[], help="a step to leave out (repeatable)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the served model and the DAG")
    args = parser.parse_args(argv)

    marker = uuid.uuid4().hex[:8]
    factor = float(int(marker[:4], 16) % 97 + 2)  # this run's model answers x * factor
    with mlox_client.connect(args.stack, profile=args.profile) as stack:
        print(json.dumps({"where": WHERE, "stack": stack.name, "source": stack.source, "marker": marker}), flush=True)
        steps = {
            "mlflow": lambda: log_and_register(stack, args.model, factor, marker),
            "s3-parquet": lambda: parquet_round_trip(stack, args.parquet_mb, marker),
            "postgres": lambda: table_round_trip(stack, marker),
            "feast": lambda: features(stack, marker),
            "served-model": lambda: call_served_model(stack, args.model, factor, args.timeout),
        }
        if args.dag:
            steps["airflow"] = lambda: run_dag(stack, args.dag, marker, args.timeout)
        results = [run() for name, run in steps.items() if name not in args.skip]
    failed = [r["step"] for r in results if not r["ok"]]
    print(json.dumps({"where": WHERE, "ok": not failed, "failed": failed}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
