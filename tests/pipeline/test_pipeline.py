"""``mlox-iac new pipeline`` and ``code push`` without a stack (the e2e module has the stack):

- rendering with the default and with other answers, and the answers it refuses (one line each);
- the rendered project's own unit tests, in a venv of its requirements;
- Airflow's DagBag (Airflow 3.3.2, the stack's) loads every DAG of the rendered project;
- ``code push`` against a local stand-in of the scheduler (the real release script, the real
  DagBag, a real virtualenv from real wheels): a second push of the same files changes
  nothing; a broken DAG is refused with its parse error and the running release stays.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlox_iac import pipelines
from mlox_iac.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_helpers import invoke  # noqa: E402
import venvs  # noqa: E402

OTHER = {"project_name": "churn-risk", "model_name": "churn.rf", "schedule": "0 3 * * *",
         "data_source": "sklearn:breast_cancer", "stack": "lab", "bucket": "datasets"}


@pytest.fixture(scope="module")
def default_project(tmp_path_factory) -> Path:
    return pipelines.render(tmp_path_factory.mktemp("new") / "demo-pipeline", {})


@pytest.fixture(scope="module")
def other_project(tmp_path_factory) -> Path:
    return pipelines.render(tmp_path_factory.mktemp("new") / "churn", OTHER)


def settings(project: Path, package: str) -> dict:
    return yaml.safe_load((project / "src" / package / "pipeline.yaml").read_text())


def test_default_answers(default_project):
    p = default_project
    assert pipelines.answers_of(p) == {"project_name": "demo-pipeline", "package": "demo_pipeline",
                                       "model_name": "demo-pipeline-model", "schedule": "@daily",
                                       "data_source": "generator:seed=7", "stack": "prod", "bucket": "data"}
    for name in ("README.md", "requirements.txt", "pyproject.toml", "dags/demo_pipeline_pipeline.py",
                 "dags/demo_pipeline_monitoring.py", "src/demo_pipeline/steps.py", "tests/test_demo_pipeline.py"):
        assert (p / name).is_file(), name
    values = settings(p, "demo_pipeline")
    assert (values["source"], values["model_name"], values["bucket"]) == ("generator:seed=7", "demo-pipeline-model", "data")
    assert 'SCHEDULE = "@daily"' in (p / "dags/demo_pipeline_pipeline.py").read_text()
    assert "mlox-iac code push . --stack prod" in (p / "README.md").read_text()


def test_other_answers(other_project):
    p = other_project
    values = settings(p, "churn_risk")
    assert (values["project"], values["model_name"], values["source"], values["bucket"], values["stack"]) == (
        "churn-risk", "churn.rf", "sklearn:breast_cancer", "datasets", "lab")
    dag = (p / "dags/churn_risk_pipeline.py").read_text()
    assert 'SCHEDULE = "0 3 * * *"' in dag and 'PACKAGE = "churn_risk"' in dag
    none = pipelines.render(p.parent / "manual", {"project_name": "manual-runs", "schedule": "none"})
    assert "SCHEDULE = None" in (none / "dags/manual_runs_pipeline.py").read_text()


@pytest.mark.parametrize(("answers", "message"), [
    ({"project_name": "Bad Name"}, "project_name: Bad Name is not a lowercase name"),
    ({"model_name": "a b"}, "model_name: a b is not a model name the stack can serve"),
    ({"schedule": "every day"}, "schedule: every day is not a schedule (allowed: none, @hourly"),
    ({"data_source": "ftp://x/y.csv"}, "data_source: ftp://x/y.csv is not a source (allowed: generator"),
    ({"bucket": "B"}, "bucket: B is not a bucket name"),
])
def test_refused_answers(tmp_path, answers, message):
    with pytest.raises(ConfigError) as caught:
        pipelines.render(tmp_path / "p", answers)
    assert len(caught.value.problems) == 1 and message in caught.value.problems[0]


def test_new_pipeline_command(tmp_path):
    result = invoke("new", "pipeline", str(tmp_path / "my-flow"), "--stack", "lab", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["package"] == "my_flow"
    again = invoke("new", "pipeline", str(tmp_path / "my-flow"))
    assert again.exit_code == 2 and "is not empty (allowed: a new or empty folder, or --force" in again.stderr
    bad = invoke("new", "pipeline", str(tmp_path / "xyz-flow"), "--schedule", "sometimes")
    assert bad.exit_code == 2 and "schedule: sometimes is not a schedule" in bad.stderr and "Traceback" not in bad.stderr


def test_the_rendered_project_tests_pass(default_project, other_project):
    python = venvs.project(default_project / "requirements.txt") / "bin" / "python"
    for project in (default_project, other_project):
        done = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        assert " passed" in done.stdout and "skipped" not in done.stdout and "failed" not in done.stdout


DAGBAG = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1], safe_mode=False)
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "dags": {d: [t.task_id for t in bag.dags[d].topological_sort()] for d in bag.dag_ids},
                  "schedules": {d: str(bag.dags[d].schedule) for d in bag.dag_ids}}))
"""


def dagbag(folder: Path, env: dict | None = None) -> dict:
    python = venvs.airflow() / "bin" / "python"
    home = folder.parent / "airflow-home"
    environment = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                   "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db", **(env or {})}
    done = subprocess.run([str(python), "-c", DAGBAG, str(folder)], capture_output=True, text=True, env=environment,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_airflow_loads_every_dag(default_project, other_project):
    bag = dagbag(default_project / "dags")
    assert bag["errors"] == {}
    assert bag["dags"] == {
        "demo_pipeline_pipeline": ["ingest", "validate", "features", "merge_labels", "train", "deploy_check",
                                   "send_for_labeling", "score_batch"],
        "demo_pipeline_monitoring": ["monitor"]}
    other = dagbag(other_project / "dags")
    assert other["errors"] == {} and sorted(other["dags"]) == ["churn_risk_monitoring", "churn_risk_pipeline"]
    assert other["schedules"]["churn_risk_pipeline"] == "0 3 * * *"


# --------------------------------------------------------------------------- push


def local_server(tmp_path: Path) -> pipelines.Server:
    """The scheduler stood in for by this machine: the host's shell is sh here, and
    ``compose exec -T airflow-scheduler CMD`` runs CMD with the Airflow venv first on PATH."""
    shim = tmp_path / "compose"
    shim.write_text('#!/bin/sh\nshift 3\nexec "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    home = tmp_path / "airflow-home"
    env = {**os.environ, "PATH": f"{venvs.airflow() / 'bin'}:{os.environ['PATH']}", "AIRFLOW_HOME": str(home),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/a.db"}

    def shell(command: str, stdin: bytes | None) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", command], input=stdin or b"", capture_output=True, env=env, timeout=1200)

    code, dags = tmp_path / "code", tmp_path / "dags"
    dags.mkdir()
    return pipelines.Server(shell=shell, compose=str(shim), host_code=str(code), host_dags=str(dags), code=str(code),
                            dags=str(dags))


def test_push_releases_and_a_broken_dag_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOX_WHEEL_CACHE", str(venvs.cache_dir() / "push-wheels"))
    project = pipelines.render(tmp_path / "flow", {"project_name": "flow"})
    # The DAGs parse without the project's libraries; a small requirements file keeps the
    # environment quick to build (the full one is the e2e module's).
    (project / "requirements.txt").write_text("PyYAML==6.0.3\n")
    server = local_server(tmp_path)
    link = tmp_path / "dags" / "flow"

    first = pipelines.push(project, server)
    assert first["changed"] and first["previous"] is None and first["dags"] == ["flow_monitoring", "flow_pipeline"]
    release = tmp_path / "code" / "flow" / "releases" / first["release"]
    assert link.resolve() == release / "dags"
    assert (release / "venv" / "bin" / "python").exists()
    assert subprocess.run([str(release / "venv" / "bin" / "python"), "-c", "import yaml"]).returncode == 0

    assert pipelines.push(project, server) == {"ok": True, "release": first["release"], "previous": first["release"],
                                               "changed": False, "dags": []}

    dag = project / "dags" / "flow_pipeline.py"
    dag.write_text(dag.read_text().replace("from airflow.sdk import DAG", "from airflow.sdk import DAG, NoSuchThing"))
    with pytest.raises(pipelines.PushRefused) as refused:
        pipelines.push(project, server)
    message = str(refused.value)
    assert f"push refused, release {first['release']} keeps running: dags/flow_pipeline.py:" in message
    # One line with the line of the DAG file and the exception, not Airflow's whole traceback.
    assert "line 17: ImportError: cannot import name 'NoSuchThing' from 'airflow.sdk'" in message, message
    assert "Traceback" not in message and "\n" not in message
    assert link.resolve() == release / "dags" and (tmp_path / "code" / "flow" / "current").read_text().strip() == first["release"]
    assert not (tmp_path / "code" / "flow" / "releases" / refused.value.release).exists()
    running = dagbag(tmp_path / "dags")
    assert running["errors"] == {} and sorted(running["dags"]) == ["flow_monitoring", "flow_pipeline"]

    dag.write_text(dag.read_text().replace(", NoSuchThing", "").replace('max_active_runs=1', 'max_active_runs=2'))
    fixed = pipelines.push(project, server)
    assert fixed["changed"] and fixed["previous"] == first["release"] and fixed["release"] != first["release"]
    assert link.resolve() == tmp_path / "code" / "flow" / "releases" / fixed["release"] / "dags"
    # The same requirements: the environment is shared, not built again.
    assert (tmp_path / "code" / "flow" / "releases" / fixed["release"] / "venv").resolve() == (release / "venv").resolve()


def test_release_contents_and_platform():
    assert pipelines.pip_platform_args({"python": "3.11", "machine": "x86_64", "glibc": "2.36"})[:8] == [
        "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--platform"]
    args = pipelines.pip_platform_args({"python": "3.12", "machine": "aarch64", "glibc": "2.28"})
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert platforms[0] == "manylinux_2_28_aarch64" and "manylinux_2_17_aarch64" in platforms
    assert "manylinux2014_aarch64" in platforms and "manylinux_2_29_aarch64" not in platforms


def test_code_push_refuses_a_stack_without_airflow(default_project, tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"services": ["postgres", "seaweedfs", "mlflow", "caddy"], "server_address": "192.0.2.1",
                                   "ssh_user": "root", "ssh_port": 22, "urls": {}}))
    result = invoke("code", "push", str(default_project), "--outputs-file", str(outputs), "--stack", "lab")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("--stack lab: runs no Airflow (allowed: a stack with mlox:services.airflow.enabled: "
                                     "true or preset: full)")
    missing = invoke("code", "push", str(tmp_path), "--outputs-file", str(outputs))
    assert missing.exit_code == 2 and f"{tmp_path}/.copier-answers.yml: missing" in missing.stderr


def fake_wheel(folder: Path, name: str, requires: list[str]) -> None:
    import zipfile

    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name.replace('-', '_')}-1.0.dist-info/METADATA", meta)


SERVER = {"python_full_version": "3.11.2", "python_version": "3.11", "sys_platform": "linux",
          "platform_machine": "x86_64", "implementation_name": "cpython"}


def test_dependencies_only_the_servers_python_needs_are_found(tmp_path):
    # pip resolves markers with this machine's Python (3.11.7 here): redis' async-timeout
    # (python_full_version < "3.11.3") was left out, and the server (Debian's 3.11.2) refused the push.
    fake_wheel(tmp_path, "redis", ['async-timeout>=4.0.3; python_full_version < "3.11.3"',
                                   'cryptography>=36; extra == "ocsp"'])
    fake_wheel(tmp_path, "mlox-client", ['boto3>=1.40; extra == "s3"', 'feast; extra == "feast"'])
    fake_wheel(tmp_path, "pandas", ['numpy>=1.23; python_version < "3.12"', 'tzdata'])
    fake_wheel(tmp_path, "numpy", [])
    fake_wheel(tmp_path, "tzdata", [])
    fake_wheel(tmp_path, "boto3", ['botocore[crt]>=1.43; python_version >= "3.9"'])
    fake_wheel(tmp_path, "unasked", ["everything"])  # a wheel nothing requires (the client's, copied always)
    fake_wheel(tmp_path, "lib", ['lib[big]; extra == "all"', 'huge; extra == "big"', 'tiny; extra == "small"'])
    missing = pipelines.missing_for_server(tmp_path, SERVER, ["mlox-client[s3]==0.1.0  # the stack's client", "redis"])
    # async-timeout for the server's Python; botocore with the extra boto3 asks; not redis'
    # ocsp extra nor the client's feast extra, which nothing asks for.
    assert missing == ["async-timeout>=4.0.3", "botocore[crt]>=1.43"]
    # A package's extra that asks for another of its extras.
    assert pipelines.missing_for_server(tmp_path, SERVER, ["lib[all]"]) == ["huge"]
    assert pipelines.missing_for_server(tmp_path, {**SERVER, "python_full_version": "3.11.7"}, ["mlox-client[s3]"]) == [
        "botocore[crt]>=1.43"]


def test_the_wheelhouse_downloads_what_the_server_alone_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOX_WHEEL_CACHE", str(tmp_path / "cache"))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("redis\n")
    calls = []

    def pip(argv, **_):
        folder = Path(argv[argv.index("-d") + 1])
        what = ["-r"] if argv[-2] == "-r" else argv[-1:]  # requirements.txt, or what the server lacks
        calls.append(what)
        if what == ["-r"]:
            fake_wheel(folder, "redis", ['async-timeout>=4.0.3; python_full_version < "3.11.3"'])
        else:
            fake_wheel(folder, "async-timeout", [])
        return subprocess.CompletedProcess(argv, 0, "", "")

    platform = {"python": "3.11", "python_full": "3.11.2", "machine": "x86_64", "glibc": "2.36", "markers": SERVER}
    _, folder = pipelines.wheelhouse(requirements, platform, None, run=pip)
    assert calls == [["-r"], ["async-timeout>=4.0.3"]]
    assert sorted(w.name for w in folder.glob("*.whl")) == ["async_timeout-1.0-py3-none-any.whl",
                                                             "redis-1.0-py3-none-any.whl"]
    assert pipelines.pip_platform_args(platform)[2] == "3.11.2"
