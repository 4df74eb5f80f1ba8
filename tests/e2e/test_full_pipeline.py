"""End to end: ``mlox-iac new pipeline`` → ``code push`` → runs on the shared full stack.

The stack gets what the project's README asks of a user: its model served with request
logging and an alert receiver (a webhook this test runs), set in the stack file and applied
with ``mlox-iac up``; both are taken away again at the end. Then, with the real clients from
this machine:

1. ``new`` renders the project; ``code push`` ships it (wheels downloaded here, the
   environment built in the scheduler); a second push changes nothing; a broken DAG is refused
   with its parse error and the running release stays; the pipeline runs and every task succeeds;
2. the model has a version with the alias ``champion`` and the endpoint answers with it;
3. Label Studio has the project with tasks; labels given through its API reach the next
   training run (its ``human_labels``);
4. a run on data shifted by 3 standard deviations: the monitoring DAG fires ``FeatureDrift``,
   delivered to the webhook;
5. a deliberately weak model (one stump) is registered but not promoted; serving keeps the champion.
"""

from __future__ import annotations

import json
import os
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
import requests
import yaml

try:
    from .test_serving import Webhook
except ImportError:  # pragma: no cover
    from test_serving import Webhook  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e
PROJECT, PACKAGE, MODEL = "pipe-e2e", "pipe_e2e", "pipe-e2e-model"
DAG, MONITOR = f"{PACKAGE}_pipeline", f"{PACKAGE}_monitoring"
WEBHOOK_PORT = 9787
DAY = date(2026, 6, 1)
TASKS = ["ingest", "validate", "features", "merge_labels", "train", "deploy_check", "send_for_labeling", "score_batch"]
LABELED = 5


class Pipeline:
    def __init__(self, full_stack, folder: Path):
        import mlox_client

        self.fs, self.folder = full_stack, folder
        self.stack = mlox_client.connect()
        self.runs: dict[str, str] = {}

    def push(self, *extra: str):
        return self.fs.cli("code", "push", str(self.folder), "--stack", self.fs.stack, "--identity",
                           str(self.fs.folder / "id_ed25519"), *extra, timeout=3600)

    def wait_for_dags(self, timeout: float = 600) -> None:
        """The DAG processor parses a pushed release within its refresh interval."""
        import mlox_client

        deadline = time.monotonic() + timeout
        while True:
            try:
                # A DAG Airflow knew before this release (its files since gone) is stale
                # until the processor parses the new files: not triggerable yet.
                waiting = [dag for dag in (DAG, MONITOR) if self.stack.airflow.api("GET", f"/dags/{dag}").get("is_stale")]
            except mlox_client.RemoteError as error:  # not parsed yet
                waiting = [str(error)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"Airflow has not parsed {DAG} and {MONITOR} after {timeout:.0f}s: {waiting}")
            time.sleep(5)

    def run(self, name: str, conf: dict, dag: str = DAG, timeout: float = 2400) -> str:
        run_id = self.stack.airflow.trigger(dag, conf)
        state = self.stack.airflow.wait(dag, run_id, timeout=timeout, check=False)
        tasks = {t["task_id"]: t["state"] for t in self.stack.airflow.tasks(dag, run_id)}
        if state != "success":
            logs = self.stack.airflow.task_logs(dag, run_id)
            failed = {k: logs.get(k, "")[-3000:] for k, v in tasks.items() if v != "success"}
            pytest.fail(f"{dag} {conf}: {state}; tasks {tasks}; logs of the failed: {failed}")
        assert set(tasks.values()) == {"success"}, tasks
        self.runs[name] = run_id
        return run_id

    def served_version(self) -> str:
        model = self.stack.model(MODEL)
        body = {"dataframe_split": {"columns": ["tenure_months", "monthly_charges", "support_calls", "usage_hours",
                                                "late_payments"], "data": [[12.0, 70.0, 1.0, 30.0, 0.0]]}}
        answer = requests.post(model.url + "/invocations", json=body, headers=model.headers(),
                               verify=self.stack.settings.ca_file, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0] in (0, 1)
        return answer.headers["X-Model-Version"]

    def champion(self) -> str:
        return str(self.stack.mlflow.client().get_model_version_by_alias(MODEL, "champion").version)

    def train_run(self, day: date):
        client = self.stack.mlflow.client()
        experiment = client.get_experiment_by_name(PROJECT)
        found = client.search_runs([experiment.experiment_id], f"attributes.run_name = 'train-{day.isoformat()}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        assert found, f"no training run for {day}"
        return found[0]


@pytest.fixture(scope="module")
def pipe(full_stack, tmp_path_factory):
    fs = full_stack
    gateway = f"{fs.record['network']}.{fs.record['index']}.1"  # the machine reaches this computer at its gateway
    webhook = Webhook(gateway, WEBHOOK_PORT)
    path = fs.project / "stacks" / f"Pulumi.{fs.stack}.yaml"
    original = path.read_text()
    document = yaml.safe_load(original)
    services = document["config"]["mlox:services"]
    services["serving"]["models"].append({"name": MODEL, "alias": "champion", "memory_mb": 512, "log_sample": 1.0})
    services.setdefault("monitoring", {})["alerts"] = {"webhook_url": f"http://{gateway}:{WEBHOOK_PORT}/alerts"}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    saved = dict(os.environ)
    try:
        # `up`, not `sandbox up`: the images are there, and the new model has no version
        # before the pipeline's first run (sandbox up waits for every model to answer).
        fs.ok("up", "--stack", fs.stack, "--yes", timeout=1800)
        fs.settings_changed()  # the new model's route: the modules before this one exported without it
        # Every setting `mlox-iac env` exports (LABEL_STUDIO_URL too), as a user's shell has them.
        os.environ.update({k: v for k, v in fs.client_env.items() if fs.env.get(k) != v})
        folder = tmp_path_factory.mktemp("pipeline") / PROJECT
        fs.ok("new", "pipeline", str(folder), "--stack", fs.stack, "--model-name", MODEL, "--schedule", "none")
        pipeline = Pipeline(fs, folder)
        pipeline.webhook = webhook
        yield pipeline
    finally:
        os.environ.clear()
        os.environ.update(saved)
        path.write_text(original)
        fs.cli("up", "--stack", fs.stack, "--yes", timeout=1800)
        fs.settings_changed()
        webhook.server.shutdown()


def test_1_push_is_idempotent_refuses_a_broken_dag_and_the_pipeline_runs(pipe):
    first = pipe.push("--json")
    assert first.returncode == 0, first.stderr[-3000:]
    release = json.loads(first.stdout)
    assert release["changed"] and sorted(release["dags"]) == sorted([DAG, MONITOR])
    again = pipe.push("--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False

    dag_file = pipe.folder / "dags" / f"{DAG}.py"
    good = dag_file.read_text()
    dag_file.write_text(good.replace("from airflow.sdk import DAG", "from airflow.sdk import DAG, NoSuchThing"))
    refused = pipe.push()
    dag_file.write_text(good)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"push refused, release {release['release']} keeps running: dags/{DAG}.py:" in refused.stderr
    assert "NoSuchThing" in refused.stderr
    current = pipe.fs.ssh(f"cat /mnt/mlox-data/volumes/airflow-code/{PROJECT}/current").stdout.strip()
    assert current == release["release"]

    pipe.wait_for_dags()
    pipe.run("first", {"date": DAY.isoformat()})


def test_2_champion_is_served(pipe):
    champion = pipe.champion()
    assert pipe.train_run(DAY).data.tags["promoted"] == "true"
    assert pipe.served_version() == champion


def test_3_labels_from_label_studio_reach_the_next_training(pipe):
    studio = pipe.stack.label_studio
    verify = pipe.stack.settings.ca_file
    projects = requests.get(f"{studio.url}/api/projects", params={"title": PROJECT}, headers=studio.headers(),
                            verify=verify, timeout=60).json()
    project = next(p for p in projects.get("results", projects) if p["title"] == PROJECT)
    tasks = requests.get(f"{studio.url}/api/projects/{project['id']}/export", params={"exportType": "JSON",
                         "download_all_tasks": "true"}, headers=studio.headers(), verify=verify, timeout=120).json()
    assert len(tasks) >= LABELED, f"only {len(tasks)} tasks for uncertain predictions"
    for task in tasks[:LABELED]:
        answer = requests.post(f"{studio.url}/api/tasks/{task['id']}/annotations", headers=studio.headers(),
                               verify=verify, timeout=60, json={"result": [
                                   {"from_name": "label", "to_name": "row", "type": "choices",
                                    "value": {"choices": ["1"]}}]})
        assert answer.status_code == 201, answer.text
    pipe.run("labels", {"date": (DAY + timedelta(days=1)).isoformat()})
    assert pipe.train_run(DAY + timedelta(days=1)).data.metrics["human_labels"] == LABELED


def test_4_shifted_data_fires_the_drift_alert(pipe):
    started = time.time()
    pipe.run("shifted", {"date": (DAY + timedelta(days=2)).isoformat(), "shift": 3.0})
    time.sleep(35)  # the model server uploads its sampled requests every 30 s
    minutes = (time.time() - started) / 60 + 1
    run_id = pipe.run("monitor", {"monitor_minutes": minutes}, dag=MONITOR, timeout=900)
    log = pipe.stack.airflow.task_logs(MONITOR, run_id)["monitor"]
    assert '"drifted": [' in log and '"drifted": []' not in log, log[-3000:]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        fired = [a for a in pipe.webhook.alerts() if a["labels"].get("alertname") == "FeatureDrift"
                 and a["labels"].get("model") == MODEL and a["status"] == "firing"]
        if fired:
            break
        time.sleep(5)
    assert fired, f"no FeatureDrift at the webhook; received {pipe.webhook.alerts()}"
    assert {a["labels"]["feature"] for a in fired} <= {"tenure_months", "monthly_charges", "support_calls",
                                                        "usage_hours", "late_payments"}


def test_5_a_worse_model_is_registered_but_not_promoted(pipe):
    before = pipe.champion()
    day = DAY + timedelta(days=3)
    pipe.run("worse", {"date": day.isoformat(), "search": {"n_estimators": [1], "max_depth": [1]}})
    run = pipe.train_run(day)
    assert run.data.tags["promoted"] == "false"
    assert run.data.metrics["heldout_auc"] < run.data.metrics["champion_heldout_auc"]
    versions = pipe.stack.mlflow.client().search_model_versions(f"name = '{MODEL}'")
    newest = max(versions, key=lambda v: int(v.version))
    assert newest.run_id == run.info.run_id and newest.tags["promoted"] == "false"
    assert pipe.champion() == before and pipe.served_version() == before
