"""The Airflow DAG that runs ``day_one.py`` inside the stack, in a task (Airflow 3).

Put both files in the stack's DAGs (the ``mlox:services.airflow.dags_repo`` repository, or
the ``airflow-dags`` volume); the Airflow image needs ``mlox-client[mlflow,s3,sql,feast]``
and pandas. From a laptop: ``python day_one.py --dag mlox_day_one``.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from airflow.sdk import dag, task


@dag(dag_id="mlox_day_one", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["mlox"])
def mlox_day_one():
    @task
    def day_one(**context) -> None:
        sys.path.insert(0, str(Path(__file__).parent))
        import day_one as script

        marker = (context["dag_run"].conf or {}).get("marker", "")
        print(f"MLOX-DAY-ONE marker={marker}")
        # The DAG's own run is the one step left out: a task cannot wait for its own DAG.
        if script.main(["--parquet-mb", "100"]) != 0:
            raise RuntimeError("a day-one step failed: see the JSON lines above")

    day_one()


mlox_day_one()
