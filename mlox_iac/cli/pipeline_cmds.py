"""``new pipeline`` and ``code push``: a pipeline project from the template, and onto the stack."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Optional

import typer

from mlox_iac.cli.common import IdentityOpt, JsonOpt, Out, OutputsFileOpt, StackOpt, project_dir, ssh_options
from mlox_iac.errors import ConfigError, MloxError

new_app = typer.Typer(help="Start a project from a template kept in mlox-iac.", no_args_is_help=True)
code_app = typer.Typer(help="Ship a project's code to the stack.", no_args_is_help=True)


@new_app.command("pipeline")
def new_pipeline(
    directory: Path = typer.Argument(..., help="Folder to create the project in (new or empty)"),
    stack: Optional[str] = typer.Option(None, "--stack", "-s", help="The stack the project is pushed to", envvar="MLOX_STACK"),
    project_name: Optional[str] = typer.Option(None, "--project-name", help="Default: the folder's name"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Default: <project-name>-model"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="@daily (default), @hourly, a cron expression or none"),
    data_source: Optional[str] = typer.Option(
        None, "--data-source", help="generator[:seed=N] (default), sklearn:breast_cancer, s3://bucket/key.parquet, https://..."),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="The stack's bucket for raw and clean data (default: data)"),
    force: bool = typer.Option(False, "--force", help="Render into a folder that is not empty"),
    as_json: bool = JsonOpt,
) -> None:
    """Render a runnable pipeline project: ingestion to a monitored endpoint, as Airflow DAGs.

    The template is Copier's (mlox_iac/templates/pipeline); the answers are kept in the
    project's .copier-answers.yml. The project has its own README, tests and requirements.

    Examples:
      mlox-iac new pipeline churn --stack prod
      mlox-iac new pipeline churn --stack prod --data-source sklearn:breast_cancer --schedule none
    """
    import re

    from mlox_iac import pipelines

    name = project_name or re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-")
    answers = {"project_name": name, "model_name": model_name, "schedule": schedule, "data_source": data_source,
               "stack": stack, "bucket": bucket}
    pipelines.render(directory, {k: v for k, v in answers.items() if v is not None}, overwrite=force)
    rendered = pipelines.answers_of(directory)
    out = Out(as_json)
    out.data(rendered, lambda console, a: console.print(
        f"created {directory}: DAGs {a['package']}_pipeline and {a['package']}_monitoring, model {a['model_name']}; "
        f"next: mlox-iac code push {shlex.quote(str(directory))} --stack {a['stack']}"))


def _server(values: dict, identity: Optional[Path]):
    from mlox_iac import connect, pipelines
    from mlox_iac.components.services.base import DATA_DIR
    from mlox_iac.render.commands import COMPOSE

    def shell(command: str, stdin: bytes | None) -> subprocess.CompletedProcess:
        argv = connect.ssh_argv(values, connect._as_root(values, ["sh", "-c", command]), identity=identity,
                                options=ssh_options(), batch=True)
        try:
            return subprocess.run(argv, input=stdin if stdin is not None else b"", capture_output=True, timeout=3600)
        except FileNotFoundError:
            raise MloxError("ssh is not installed: install the OpenSSH client") from None

    return pipelines.Server(shell=shell, compose=COMPOSE, host_code=f"{DATA_DIR}/volumes/airflow-code",
                            host_dags=f"{DATA_DIR}/volumes/airflow-dags")


def _check_stack(stack: Optional[str], values: dict, model: str) -> list[str]:
    """Refuse a stack whose Airflow cannot take a push; warnings for what the pipeline misses."""
    services = [str(s) for s in values.get("services") or []]
    if services and "airflow" not in services:
        raise ConfigError([f"--stack {stack}: runs no Airflow (allowed: a stack with mlox:services.airflow.enabled: true "
                           "or preset: full)"])
    if stack:
        from mlox_iac import automation

        try:
            config = automation.validate_stack(stack, project_dir=project_dir())
        except MloxError:
            config = None
        if config is not None and config.service("airflow").dags_repo:
            raise ConfigError([f"stacks/Pulumi.{stack}.yaml: mlox:services.airflow.dags_repo: set, so Airflow reads its "
                               "DAGs from that repository (allowed: push the project there, or remove dags_repo to use "
                               "mlox-iac code push)"])
    from mlox_iac.components.services.serving import route_name

    warnings = []
    if route_name(model) not in (values.get("urls") or {}):
        warnings.append(f"the stack serves no model {model!r} yet: add {{name: {model}, log_sample: 1.0}} to "
                        "mlox:services.serving.models and run mlox-iac up (the pipeline's deploy_check needs it)")
    return warnings


@code_app.command("push")
def code_push(
    directory: Path = typer.Argument(..., help="The project (made by mlox-iac new pipeline)"),
    stack: Optional[str] = StackOpt, outputs_file: Optional[Path] = OutputsFileOpt,
    identity: Optional[Path] = IdentityOpt, as_json: bool = JsonOpt,
) -> None:
    """Send a project's DAGs, code and dependencies to the stack's Airflow, as a new release.

    Idempotent (the same files are the same release) and versioned: the server builds the
    release's environment from wheels copied from here (no package index needed there) and
    parses its DAGs with Airflow; a release that does not parse is refused with the error,
    and the running one keeps running.

    Examples:
      mlox-iac code push churn --stack prod
    """
    from mlox_iac import pipelines
    from mlox_iac.cli.connect_cmds import read_outputs

    out = Out(as_json)
    answers = pipelines.answers_of(directory)
    values = read_outputs(stack, outputs_file, show_secrets=False)
    for warning in _check_stack(stack, values, str(answers.get("model_name"))):
        out.progress(f"warning: {warning}")
    result = pipelines.push(directory, _server(values, identity), progress=out.progress)
    out.data(result, lambda console, r: console.print(
        f"release {r['release']} running (DAGs: {', '.join(r['dags'])}; previous: {r['previous'] or 'none'})"
        if r.get("changed") else f"release {r['release']} is already running: nothing to do"))
