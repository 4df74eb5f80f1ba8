"""End to end: mlox-client's day-one script on the shared full stack, from three places.

The same file, ``client/examples/day_one.py``, runs unchanged (each run logs an MLflow run
and registers a model version that it makes the served ``champion``; writes a 100 MB Parquet
file through ``s3://`` with pandas and reads it back with pyarrow; writes and reads a
Postgres table; applies and materializes a Feast feature view and reads online features;
calls the served model until it answers with this run's version):

1. from this machine, as a data scientist's laptop: settings from the profile that
   ``mlox-iac env --write-profile`` writes (no exports in the environment), Postgres through
   the SSH tunnel the client opens with the user's key; it also triggers the DAG
   ``mlox_day_one`` and waits for it;
2. inside an Airflow task: that DAG (``client/examples/day_one_dag.py``, put in the stack's
   DAG volume) runs the script in the stack's mlox-client virtualenv;
3. inside a JupyterLab kernel: a notebook that imports the script, executed by nbconvert in
   the JupyterLab container (a real ipykernel started by jupyter_client, with the kernel's
   environment).

Then, from outside with the real clients: MLflow has the three runs and their model
versions, the bucket has the three Parquet files at full size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

try:
    from .stack import ROOT
except ImportError:  # pragma: no cover
    from stack import ROOT  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e
EXAMPLES = ROOT / "client" / "examples"
# A laptop's Python: mlox-client[all] at the images' pins, no Pulumi (scripts/setup --e2e).
LAPTOP_PYTHON = ROOT / ".venv-client" / "bin" / "python"
DAGS = "/opt/airflow/dags"
WORK = "/home/jovyan/work"
PARQUET_MB = 100
RESULTS: dict[str, dict[str, dict]] = {}  # where -> the script's steps (the tests build on each other)


def _steps(output: str) -> dict[str, dict]:
    """The script's JSON lines by step (and ``summary``), wherever a log put them: plain, or as
    the ``event`` of Airflow 3's structured log lines, after a prefix."""
    decoder = json.JSONDecoder()
    steps: dict[str, dict] = {}

    def scan(text: str) -> None:
        for line in text.splitlines():
            start = line.find("{")
            while start != -1:
                try:
                    item, _ = decoder.raw_decode(line, start)
                except ValueError:
                    start = line.find("{", start + 1)
                    continue
                if isinstance(item, dict) and "step" in item:
                    steps[item["step"]] = item
                elif isinstance(item, dict) and "failed" in item and "where" in item:
                    steps["summary"] = item
                elif isinstance(item, dict) and isinstance(item.get("event"), str):
                    scan(item["event"])
                break

    scan(output)
    return steps


def _copy_in(full_stack, service: str, source: Path, target: str) -> None:
    """A file of this machine into a service's container (through the machine)."""
    remote = f"/tmp/{source.name}"
    full_stack.put_file(source, remote)
    full_stack.compose("cp", remote, f"{service}:{target}")


def test_1_day_one_from_a_laptop_with_a_profile_and_in_an_airflow_task(full_stack):
    # The DAG and the script it imports, in the stack's DAG volume (the scheduler and the DAG
    # processor share it); the DAG processor parses new files within its refresh interval.
    for name in ("day_one.py", "day_one_dag.py"):
        _copy_in(full_stack, "airflow-dag-processor", EXAMPLES / name, f"{DAGS}/{name}")
    # Parse it now rather than at the bundle's next refresh (minutes), and wait until Airflow
    # lists it: a DAG it does not know yet cannot be triggered.
    full_stack.compose("exec", "-T", "airflow-dag-processor", "airflow", "dags", "reserialize", timeout=900,
                       check=False)
    deadline = time.monotonic() + 600
    while True:
        listed = full_stack.compose("exec", "-T", "airflow-scheduler", "airflow", "dags", "list", "-o", "plain",
                                    timeout=300, check=False)
        if "mlox_day_one" in listed.stdout:
            break
        assert time.monotonic() < deadline, f"Airflow did not list the DAG mlox_day_one: {listed.stdout[-2000:]}"
        time.sleep(10)

    written = full_stack.ok("env", "--stack", full_stack.stack, "--write-profile")
    profile = Path(full_stack.env["HOME"]) / ".config" / "mlox" / f"{full_stack.stack}.json"
    assert profile.is_file() and profile.stat().st_mode & 0o777 == 0o600, written.stdout + written.stderr
    # A laptop: the profile only (no MLFLOW_/AWS_ exports), the user's key for the SSH tunnel.
    laptop = {k: v for k, v in full_stack.env.items() if k != "PYTHONPATH"}
    laptop["MLOX_SSH_IDENTITY"] = str(full_stack.folder / "id_ed25519")
    done = subprocess.run([str(LAPTOP_PYTHON), str(EXAMPLES / "day_one.py"), "--stack", full_stack.stack, "--model",
                           full_stack.MODEL, "--parquet-mb", str(PARQUET_MB), "--dag", "mlox_day_one",
                           "--timeout", "900"],
                          cwd=full_stack.project, env=laptop, capture_output=True, text=True, timeout=1800)
    steps = _steps(done.stdout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert steps["summary"] == {"where": "laptop", "ok": True, "failed": []}
    assert steps["s3-parquet"]["ok"] and steps["postgres"]["ok"] and steps["feast"]["ok"]
    assert steps["airflow"]["state"] == "success", steps["airflow"]
    RESULTS["laptop"] = steps


def test_2_the_airflow_task_ran_every_step_in_the_stack(full_stack):
    """The task's own log, read back through Airflow's API (from the bucket), has its JSON lines."""
    assert "laptop" in RESULTS, "test_1 did not run the DAG"
    run_id = RESULTS["laptop"]["airflow"]["run_id"]
    code = ("import json, sys, mlox_client\n"
            "with mlox_client.connect(sys.argv[1]) as s:\n"
            "    print(json.dumps(s.airflow.task_logs('mlox_day_one', sys.argv[2])))\n")
    laptop = {k: v for k, v in full_stack.env.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(LAPTOP_PYTHON), "-c", code, full_stack.stack, run_id], env=laptop, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = "\n".join(json.loads(done.stdout).values())
    steps = _steps(log)
    assert steps.get("summary") == {"where": "airflow", "ok": True, "failed": []}, log[-4000:]
    assert {"mlflow", "s3-parquet", "postgres", "feast", "served-model"} <= set(steps), sorted(steps)
    RESULTS["airflow"] = steps


def test_3_day_one_in_a_jupyterlab_kernel(full_stack):
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3",
                                                                                 "display_name": "Python 3"}},
                "cells": [{"cell_type": "code", "id": "day-one", "metadata": {}, "outputs": [], "execution_count": None,
                           "source": f"import sys\nsys.path.insert(0, {WORK!r})\nimport day_one\n"
                                     f"assert day_one.main(['--model', {full_stack.MODEL!r}, '--parquet-mb', "
                                     f"'{PARQUET_MB}']) == 0"}]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "day_one.ipynb"
        path.write_text(json.dumps(notebook))
        _copy_in(full_stack, "jupyter", path, f"{WORK}/day_one.ipynb")
    _copy_in(full_stack, "jupyter", EXAMPLES / "day_one.py", f"{WORK}/day_one.py")
    full_stack.compose("exec", "-T", "jupyter", "chown", "1000:100", f"{WORK}/day_one.py", f"{WORK}/day_one.ipynb")
    done = full_stack.compose("exec", "-T", "-u", "1000", "-w", WORK, "jupyter", "jupyter", "nbconvert", "--to",
                              "notebook", "--execute", "--stdout", "--ExecutePreprocessor.timeout=1500",
                              "day_one.ipynb", timeout=1800, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    executed = json.loads(done.stdout)
    text = "".join("".join(o.get("text", "")) for o in executed["cells"][0]["outputs"])
    steps = _steps(text)
    assert steps.get("summary") == {"where": "jupyter", "ok": True, "failed": []}, text[-4000:]
    RESULTS["jupyter"] = steps


def test_4_the_three_runs_are_there_seen_from_outside(full_stack):
    """MLflow, with its own client configured only by `mlox-iac env`, has a run and a model
    version from each place; each place moved the whole Parquet file (the script removes it)."""
    assert set(RESULTS) == {"laptop", "airflow", "jupyter"}, sorted(RESULTS)
    code = (
        "import json, mlflow\n"
        "from mlflow import MlflowClient\n"
        "runs = mlflow.search_runs(experiment_names=['day-one'], output_format='list')\n"
        f"versions = MlflowClient().search_model_versions(\"name='{full_stack.MODEL}'\")\n"
        "print(json.dumps({'runs': {r.info.run_id: r.info.run_name for r in runs},\n"
        "                  'versions': {v.run_id: v.version for v in versions}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=full_stack.client_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    for where, steps in RESULTS.items():
        run = steps["mlflow"]
        assert seen["runs"].get(run["run_id"], "").startswith(f"{where}-"), (where, run)
        assert seen["versions"].get(run["run_id"]) == run["version"], (where, run, seen["versions"])
        # 8 columns of random float64: Parquet cannot compress them much.
        assert steps["s3-parquet"]["bytes"] > PARQUET_MB * 0.9 * 1_000_000, (where, steps["s3-parquet"])


def test_5_label_studio_through_its_sdk_from_a_laptop(full_stack):
    """The SDK's client that mlox-client makes (the admin's token, the stack's CA): a project,
    tasks imported, listed back, the project removed."""
    code = (
        "import json, sys, mlox_client\n"
        "with mlox_client.connect(sys.argv[1]) as s:\n"
        "    ls = s.label_studio.client()\n"
        "    config = '<View><Text name=\"t\" value=\"$text\"/><Choices name=\"c\" toName=\"t\">'\\\n"
        "             '<Choice value=\"yes\"/><Choice value=\"no\"/></Choices></View>'\n"
        "    project = ls.projects.create(title='mlox-client e2e', label_config=config)\n"
        "    ls.projects.import_tasks(id=project.id, request=[{'text': f'task {i}'} for i in range(3)])\n"
        "    texts = sorted(t.data['text'] for t in ls.tasks.list(project=project.id))\n"
        "    ls.projects.delete(id=project.id)\n"
        "    print(json.dumps({'texts': texts}))\n"
    )
    laptop = {k: v for k, v in full_stack.env.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(LAPTOP_PYTHON), "-c", code, full_stack.stack], env=laptop, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"texts": ["task 0", "task 1", "task 2"]}
