"""The Airflow DAG that runs ``day_one.py`` inside the stack, in a task (Airflow 3).

Put both files in the stack's DAGs (the ``mlox:services.airflow.dags_repo`` repository, or
the ``airflow-dags`` volume). The task runs in the stack's mlox-client virtualenv
(``/opt/mlox/client-venv``, built into the stack's Airflow image), not in Airflow's own
Python: that is where ``mlox_client``, MLflow, Feast and pandas are. From a laptop:
``python day_one.py --dag mlox_day_one``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, task

CLIENT_PYTHON = "/opt/mlox/client-venv/bin/python"  # the stack's image has it
HERE = str(Path(__file__).resolve().parent)


@dag(dag_id="mlox_day_one", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["mlox"])
def mlox_day_one():
    @task.external_python(python=CLIENT_PYTHON, expect_airflow=False)
    def day_one(folder: str, marker: str) -> None:
        # Runs in CLIENT_PYTHON: imports only what is there, and nothing from this module.
        import os
        import sys

        os.environ["MLOX_DAY_ONE_WHERE"] = "airflow"
        sys.path.insert(0, folder)
        import day_one as script

        print(f"MLOX-DAY-ONE marker={marker}")
        # The DAG's own run is the one step left out: a task cannot wait for its own DAG.
        if script.main(["--parquet-mb", "100"]) != 0:
            raise RuntimeError("a day-one step failed: see the JSON lines above")

    day_one(HERE, "{{ (dag_run.conf or {}).get('marker', '') }}")


mlox_day_one()
