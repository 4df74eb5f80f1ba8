"""mlox_iac.ci (validate → plan → preview → up for CI) and the example workflow that runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_helpers import no_pulumi, outputs_for  # noqa: F401 (no_pulumi: a fixture)
from pulumi_double import RecordingPulumiCommand

from mlox_iac import ci

WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "ci" / "deploy.yml"


@pytest.fixture
def engine(mlox_project, monkeypatch):
    import mlox_iac.automation as automation

    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "pass")
    double = RecordingPulumiCommand(outputs=outputs_for(443, provider="hetzner"), secret_outputs={"ui_passwords", "s3_secret_key"},
                                    changes={"create": 14})
    monkeypatch.setattr(automation, "default_pulumi_command", lambda command="": double)
    return double


def test_all_steps(engine, tmp_path, capsys):
    summary = tmp_path / "deploy.json"
    assert ci.main(["--stack", "dev", "--summary", str(summary)]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("==")] == [
        "== validate dev", "== plan dev", "== preview dev", "== up dev"]
    assert "  mlflow: https://127.0.0.1:443/mlflow" in out
    assert [v for v in engine.verbs() if v in ("preview", "up")] == ["preview", "up"]
    data = json.loads(summary.read_text())
    assert data["operation"] == "update" and data["outputs"]["ui_passwords"] == "[secret]"


def test_until_preview_changes_nothing(engine, capsys):
    assert ci.main(["--stack", "dev", "--until", "preview"]) == 0
    assert "up" not in engine.verbs()


def test_invalid_stack_exits_2_before_the_engine(engine, mlox_project, capsys):
    (mlox_project / "stacks" / "Pulumi.dev.yaml").write_text("config:\n  mlox:provider: nowhere\n")
    assert ci.main(["--stack", "dev"]) == 2
    assert "mlox:provider: 'nowhere' is not allowed" in capsys.readouterr().err
    assert engine.calls == []


def test_on_ci_the_throwaway_file_backend_is_refused(engine, monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    assert ci.main(["--stack", "dev"]) == 1
    assert "set PULUMI_BACKEND_URL" in capsys.readouterr().err
    assert engine.calls == []
    monkeypatch.setenv("PULUMI_BACKEND_URL", "s3://bucket/mlox")
    assert ci.main(["--stack", "dev", "--until", "preview"]) == 0
    assert "PULUMI_BACKEND_URL" not in engine.call("preview").env  # the user's backend, inherited


def test_missing_cli(mlox_project, no_pulumi, monkeypatch, capsys):
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "pass")
    assert ci.main(["--stack", "dev"]) == 1
    assert "error: mlox-iac preview needs the Pulumi CLI" in capsys.readouterr().err


def test_example_workflow_installs_the_cli_and_runs_the_steps():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = workflow["jobs"]["deploy"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "curl -fsSL https://get.pulumi.com | sh" in runs
    assert ".venv/bin/pip install -e '.[hetzner]'" in runs
    assert '.venv/bin/python -m mlox_iac.ci --stack "$MLOX_STACK" --until preview' in runs
    assert '.venv/bin/python -m mlox_iac.ci --stack "$MLOX_STACK" --summary deploy.json' in runs
    env = workflow["env"]
    assert env["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    assert env["HCLOUD_TOKEN"] == "${{ secrets.HCLOUD_TOKEN }}"
