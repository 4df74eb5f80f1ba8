"""The automation layer at its seam: the arguments, environment and work dir it hands to the
Pulumi Automation API, observed through a recording ``PulumiCommand`` test double; and the
program it runs, under Pulumi mocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pulumi_double import RecordingPulumiCommand, step, urn

from mlox_iac import automation, connect
from mlox_iac.errors import ConfigError, MloxError, PulumiCliMissing

EVENT_LOG = "<event-log>"


def _args(call) -> list[str]:
    """Args with the temporary event-log path replaced by a placeholder."""
    args = list(call.args)
    if "--event-log" in args:
        args[args.index("--event-log") + 1] = EVENT_LOG
    return args


@pytest.fixture
def passphrase(monkeypatch):
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "correct horse battery staple")
    return "correct horse battery staple"


# ----- workspace settings -------------------------------------------------------------

def test_up_creates_the_stack_on_the_project_with_the_default_backend_and_passphrase(mlox_project, passphrase):
    cmd = RecordingPulumiCommand(outputs={"urls": {"mlflow": "https://ml/mlflow"}})
    automation.up("dev", project_dir=mlox_project, pulumi_command=cmd)

    assert [_args(c) for c in cmd.calls] == [
        ["stack", "select", "--stack", "dev"],
        ["stack", "init", "dev", "--secrets-provider", "passphrase"],
        # the provider-change check reads what is deployed (nothing, for a new stack)
        ["stack", "output", "--json", "--stack", "dev"],
        ["stack", "output", "--json", "--show-secrets", "--stack", "dev"],
        ["up", "--yes", "--skip-preview", "--color", "never", "--exec-kind", "auto.local", "--stack", "dev"],
        ["stack", "output", "--json", "--stack", "dev"],
        ["stack", "output", "--json", "--show-secrets", "--stack", "dev"],
        ["stack", "history", "--json", "--page-size", "1", "--page", "1", "--stack", "dev"],
    ]
    state = (mlox_project / ".mlox" / "state").resolve()
    for call in cmd.calls:
        assert call.cwd == str(mlox_project.resolve())
        assert call.env["PULUMI_BACKEND_URL"] == state.as_uri()
        assert call.env["PULUMI_CONFIG_PASSPHRASE"] == passphrase
    assert state.is_dir()


def test_an_existing_stack_is_selected_not_created(mlox_project, passphrase):
    cmd = RecordingPulumiCommand(stacks={"dev"})
    automation.up("dev", project_dir=mlox_project, pulumi_command=cmd)
    assert cmd.verbs()[:4] == ["stack select", "stack output", "stack output", "up"]


def test_events_reach_on_event_through_the_event_log(mlox_project, passphrase):
    cmd = RecordingPulumiCommand(events=step("create", urn("main-bootstrap"), "command:remote:Command"))
    seen = []
    automation.up("dev", project_dir=mlox_project, pulumi_command=cmd, on_event=seen.append)
    assert "--event-log" in cmd.call("up").args
    assert [(bool(e.resource_pre_event), bool(e.res_outputs_event), bool(e.cancel_event)) for e in seen] == [
        (True, False, False), (False, True, False), (False, False, True)]
    assert seen[1].res_outputs_event.metadata.urn == urn("main-bootstrap")


def test_users_backend_is_left_alone(mlox_project, passphrase, monkeypatch):
    monkeypatch.setenv("PULUMI_BACKEND_URL", "s3://bucket/mlox")
    options = automation.workspace_options(mlox_project, "dev")
    assert "PULUMI_BACKEND_URL" not in options.env_vars
    assert not (mlox_project / ".mlox" / "state").exists()


def test_logged_in_user_keeps_their_backend(mlox_project, passphrase, tmp_path):
    pulumi_home = Path.home() / ".pulumi"
    pulumi_home.mkdir()
    (pulumi_home / "credentials.json").write_text(json.dumps({"current": "https://api.pulumi.com"}))
    assert "PULUMI_BACKEND_URL" not in automation.workspace_options(mlox_project, "dev").env_vars


def test_backend_named_in_pulumi_yaml_wins(mlox_project, passphrase):
    (mlox_project / "Pulumi.yaml").write_text((mlox_project / "Pulumi.yaml").read_text() + "backend:\n  url: gs://b\n")
    assert "PULUMI_BACKEND_URL" not in automation.workspace_options(mlox_project, "dev").env_vars


def test_pulumi_yaml_is_not_rewritten(mlox_project, passphrase):
    before = (mlox_project / "Pulumi.yaml").read_text()
    automation.up("dev", project_dir=mlox_project, pulumi_command=RecordingPulumiCommand())
    assert (mlox_project / "Pulumi.yaml").read_text() == before


def test_passphrase_file_is_passed_on(mlox_project, monkeypatch, tmp_path):
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(tmp_path / "pass"))
    env = automation.workspace_options(mlox_project, "dev").env_vars
    assert env["PULUMI_CONFIG_PASSPHRASE_FILE"] == str(tmp_path / "pass")
    assert "PULUMI_CONFIG_PASSPHRASE" not in env


def test_missing_passphrase_without_a_prompt_says_how_to_set_it(mlox_project):
    cmd = RecordingPulumiCommand()
    with pytest.raises(MloxError, match="set PULUMI_CONFIG_PASSPHRASE .or PULUMI_CONFIG_PASSPHRASE_FILE"):
        automation.up("dev", project_dir=mlox_project, pulumi_command=cmd)
    assert cmd.calls == []


def test_prompted_passphrase_is_passed_on_and_never_shown(mlox_project):
    asked = []
    cmd = RecordingPulumiCommand()
    stack = automation.open_stack("dev", project_dir=mlox_project, create=True, pulumi_command=cmd,
                                  passphrase_prompt=lambda new: asked.append(new) or "s3cret-pass")
    assert asked == [True]  # a new stack: the prompt should ask twice
    assert cmd.calls[-1].env["PULUMI_CONFIG_PASSPHRASE"] == "s3cret-pass"
    assert "s3cret-pass" not in repr(stack.workspace)


def test_existing_passphrase_stack_prompts_as_existing(mlox_project):
    path = mlox_project / "stacks" / "Pulumi.dev.yaml"
    path.write_text("encryptionsalt: v1:abc\n" + path.read_text())
    asked = []
    automation.workspace_options(mlox_project, "dev", passphrase_prompt=lambda new: asked.append(new) or "x")
    assert asked == [False]


def test_stack_with_another_secrets_provider_needs_no_passphrase(mlox_project):
    path = mlox_project / "stacks" / "Pulumi.dev.yaml"
    path.write_text("secretsprovider: awskms://alias/mlox\nencryptedkey: abc\n" + path.read_text())
    assert "PULUMI_CONFIG_PASSPHRASE" not in automation.workspace_options(mlox_project, "dev").env_vars


def test_secrets_provider_can_be_overridden(mlox_project, passphrase, monkeypatch):
    monkeypatch.setenv("MLOX_SECRETS_PROVIDER", "awskms://alias/mlox")
    cmd = RecordingPulumiCommand()
    automation.preview("dev", project_dir=mlox_project, pulumi_command=cmd)
    assert cmd.call("stack init").args == ["stack", "init", "dev", "--secrets-provider", "awskms://alias/mlox"]


# ----- plugin downloads ---------------------------------------------------------------

def _cache(names: list[str]) -> None:
    """Plugins in the (fake home's) plugin cache at the installed SDKs' versions."""
    from importlib import metadata

    from mlox_iac import plugins

    dists = {**plugins.BASE_PLUGINS, **dict(plugins.PROVIDER_PLUGINS.values())}
    for name in names:
        folder = Path.home() / ".pulumi" / "plugins" / f"resource-{name}-v{metadata.version(dists[name])}"
        folder.mkdir(parents=True)
        (folder / f"pulumi-resource-{name}").write_text("")


ACQUIRE = "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"


@pytest.mark.parametrize("cached, state, off", [
    (["command", "random", "tls", "hcloud"], "", True),  # the Hetzner stack's plugins: nothing to fetch
    (["command", "random", "tls"], "", False),  # hcloud missing: the engine downloads it
    (["command", "random", "hcloud"], "", False),  # a base plugin missing
    (["command", "random", "tls", "hcloud"], '"type": "pulumi:providers:aws"', False),  # an AWS server in the state
    (["command", "random", "tls", "hcloud", "aws"], '"type": "pulumi:providers:aws"', True),
], ids=["all-there", "provider-missing", "base-missing", "state-needs-another", "state-needs-it-there"])
def test_plugin_downloads_are_off_only_when_every_plugin_the_stack_needs_is_cached(
        mlox_project, passphrase, monkeypatch, cached, state, off):
    monkeypatch.delenv(ACQUIRE, raising=False)
    _cache(cached)
    if state:
        folder = mlox_project / ".mlox" / "state" / ".pulumi" / "stacks" / "mlox"
        folder.mkdir(parents=True)
        (folder / "dev.json").write_text(state)
    env = automation.workspace_options(mlox_project, "dev").env_vars
    assert (env.get(ACQUIRE) == "true") is off


def test_plugin_downloads_follow_a_moves_target_and_the_users_own_setting(mlox_project, passphrase, monkeypatch):
    monkeypatch.delenv(ACQUIRE, raising=False)
    _cache(["command", "random", "tls", "hcloud"])
    path = mlox_project / "stacks" / "Pulumi.dev.yaml"
    text = path.read_text()
    path.write_text(text.replace("config:\n", "config:\n  mlox:migration: {to: digitalocean, server: next}\n", 1))
    assert ACQUIRE not in automation.workspace_options(mlox_project, "dev").env_vars
    path.write_text(text)
    monkeypatch.setenv(ACQUIRE, "false")  # the user's choice reaches the CLI through the environment
    assert ACQUIRE not in automation.workspace_options(mlox_project, "dev").env_vars


def test_plugin_downloads_stay_on_with_the_users_backend(mlox_project, passphrase, monkeypatch):
    monkeypatch.delenv(ACQUIRE, raising=False)
    _cache(["command", "random", "tls", "hcloud"])
    monkeypatch.setenv("PULUMI_BACKEND_URL", "s3://bucket/mlox")  # its state cannot be read here
    assert ACQUIRE not in automation.workspace_options(mlox_project, "dev").env_vars


# ----- validation and the missing CLI -------------------------------------------------

def test_invalid_stack_file_stops_before_the_engine(mlox_project, passphrase):
    (mlox_project / "stacks" / "Pulumi.dev.yaml").write_text("config:\n  mlox:provider: nowhere\n")
    cmd = RecordingPulumiCommand()
    with pytest.raises(ConfigError) as error:
        automation.up("dev", project_dir=mlox_project, pulumi_command=cmd)
    assert any("mlox:provider" in line for line in error.value.problems)
    assert cmd.calls == []


def test_placeholder_secrets_stop_before_the_engine_and_leave_the_file_alone(mlox_project, passphrase):
    stack_path = mlox_project / "stacks" / "Pulumi.example-onprem.yaml"
    before = stack_path.read_text()
    cmd = RecordingPulumiCommand()
    for operation in (automation.up, automation.preview, automation.refresh):
        with pytest.raises(ConfigError) as error:
            operation("example-onprem", project_dir=mlox_project, pulumi_command=cmd)
        assert error.value.problems == [
            "stacks/Pulumi.example-onprem.yaml: mlox:onprem.private_key: a placeholder, not a secret of this stack "
            "(the file has no encryptionsalt); set yours with: "
            "pulumi config set --secret --path 'mlox:onprem.private_key' --stack example-onprem"] + [
            f"stacks/Pulumi.example-onprem.yaml: mlox:backup.{key}: a placeholder, not a secret of this stack "
            "(the file has no encryptionsalt); set yours with: "
            f"pulumi config set --secret --path 'mlox:backup.{key}' --stack example-onprem"
            for key in ("access_key_id", "secret_access_key")]
    assert cmd.calls == []
    assert stack_path.read_text() == before


def test_secure_values_with_their_encryption_settings_go_to_the_engine(mlox_project, passphrase):
    stack_path = mlox_project / "stacks" / "Pulumi.example-onprem.yaml"
    stack_path.write_text(stack_path.read_text() + "encryptionsalt: v1:c2FsdA==:v1:aXY=:Y2lwaGVy\n")
    cmd = RecordingPulumiCommand()
    automation.preview("example-onprem", project_dir=mlox_project, pulumi_command=cmd)
    assert "preview" in cmd.verbs()


def test_secure_values_on_a_backend_the_user_chose_are_left_to_it(mlox_project, passphrase, monkeypatch):
    monkeypatch.setenv("PULUMI_BACKEND_URL", "https://api.pulumi.com")
    cmd = RecordingPulumiCommand()
    automation.preview("example-onprem", project_dir=mlox_project, pulumi_command=cmd)
    assert "preview" in cmd.verbs()


def test_missing_cli_names_the_install_step(mlox_project, passphrase, monkeypatch):
    monkeypatch.setenv("PATH", str(mlox_project / "no-bin"))
    with pytest.raises(PulumiCliMissing) as error:
        automation.up("dev", project_dir=mlox_project)
    assert str(error.value).startswith("mlox-iac up needs the Pulumi CLI, which is not on PATH: install it with "
                                       "`curl -fsSL https://get.pulumi.com | sh`")


def test_missing_cli_also_when_pulumi_vanishes_after_lookup(monkeypatch, tmp_path):
    fake = tmp_path / "bin" / "pulumi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    fake.unlink()
    monkeypatch.setattr("shutil.which", lambda *a, **k: "/nowhere/pulumi")
    with pytest.raises(PulumiCliMissing, match="mlox-iac preview needs the Pulumi CLI"):
        automation.default_pulumi_command("mlox-iac preview")


def test_cli_installed_in_pulumi_home_is_found(monkeypatch, tmp_path):
    home_bin = tmp_path / ".pulumi" / "bin"
    home_bin.mkdir(parents=True)
    (home_bin / "pulumi").write_text("#!/bin/sh\necho v3.210.0\n")
    (home_bin / "pulumi").chmod(0o755)
    env = {"PATH": str(tmp_path / "empty"), "PULUMI_HOME": str(tmp_path / ".pulumi")}
    monkeypatch.setenv("PULUMI_HOME", env["PULUMI_HOME"])
    command = automation.default_pulumi_command("x", env=env)
    assert command.command == str(home_bin / "pulumi")
    assert str(command.version) == "3.210.0"


# ----- results and errors -------------------------------------------------------------

def test_up_returns_changes_and_masked_outputs(mlox_project, passphrase):
    outputs = {"urls": {"mlflow": "https://ml/mlflow"}, "ui_user": "admin", "ui_passwords": {"mlflow": "pw"},
               "s3_secret_key": "sk"}
    cmd = RecordingPulumiCommand(outputs=outputs, secret_outputs={"ui_passwords", "s3_secret_key"},
                                 changes={"create": 12, "same": 1})
    result = automation.up("dev", project_dir=mlox_project, pulumi_command=cmd)
    assert result.changes == {"create": 12, "same": 1}
    assert result.changed == 12
    assert result.outputs == {"urls": {"mlflow": "https://ml/mlflow"}, "ui_user": "admin",
                              "ui_passwords": "[secret]", "s3_secret_key": "[secret]"}
    assert result.secret_outputs == ["s3_secret_key", "ui_passwords"]
    shown = automation.up("dev", project_dir=mlox_project, pulumi_command=cmd, show_secrets=True)
    assert shown.outputs["ui_passwords"] == {"mlflow": "pw"}


def test_preview_counts_changes_from_the_summary_event(mlox_project, passphrase):
    cmd = RecordingPulumiCommand(changes={"create": 30})
    result = automation.preview("dev", project_dir=mlox_project, pulumi_command=cmd)
    assert result.operation == "preview" and result.changes == {"create": 30}
    assert _args(cmd.call("preview")) == ["preview", "--color", "never", "--exec-kind", "auto.local",
                                          "--event-log", EVENT_LOG, "--stack", "dev"]


def test_destroy_and_refresh_need_an_existing_stack(mlox_project, passphrase):
    cmd = RecordingPulumiCommand()
    with pytest.raises(MloxError, match="stack dev has not been deployed yet: run mlox-iac up --stack dev"):
        automation.destroy("dev", project_dir=mlox_project, pulumi_command=cmd)
    assert cmd.verbs() == ["stack select"]


def test_destroy_arguments(mlox_project, passphrase):
    cmd = RecordingPulumiCommand(stacks={"dev"}, changes={"delete": 9})
    result = automation.destroy("dev", project_dir=mlox_project, pulumi_command=cmd)
    assert _args(cmd.call("destroy")) == ["destroy", "--skip-preview", "--yes", "--color", "never",
                                          "--exec-kind", "auto.local", "--stack", "dev"]
    assert result.changes == {"delete": 9}


def test_destroy_works_when_the_stack_file_no_longer_validates(mlox_project, passphrase):
    (mlox_project / "stacks" / "Pulumi.dev.yaml").write_text("config:\n  mlox:provider: nowhere\n")
    cmd = RecordingPulumiCommand(stacks={"dev"})
    automation.destroy("dev", project_dir=mlox_project, pulumi_command=cmd)
    assert "destroy" in cmd.verbs()


def test_refresh_arguments_and_outputs(mlox_project, passphrase):
    cmd = RecordingPulumiCommand(stacks={"dev"}, outputs={"provider": "hetzner"}, changes={"same": 20})
    result = automation.refresh("dev", project_dir=mlox_project, pulumi_command=cmd)
    assert _args(cmd.call("refresh")) == ["refresh", "--skip-preview", "--yes", "--color", "never",
                                          "--exec-kind", "auto.local", "--stack", "dev"]
    assert result.outputs == {"provider": "hetzner"} and result.changed == 0


def test_engine_failure_is_one_line(mlox_project, passphrase):
    cmd = RecordingPulumiCommand(fail={"up": "error: update failed\nmore detail"})
    with pytest.raises(automation.EngineError, match=r"^pulumi up failed: update failed$"):
        automation.up("dev", project_dir=mlox_project, pulumi_command=cmd)


def test_locked_stack_says_how_to_unlock(mlox_project, passphrase):
    cmd = RecordingPulumiCommand(fail={"up": "error: the stack is currently locked by 1 lock(s)"})
    with pytest.raises(automation.EngineError, match="pulumi cancel --stack dev"):
        automation.up("dev", project_dir=mlox_project, pulumi_command=cmd)


def test_outputs_masks_secrets_unless_asked(mlox_project, passphrase):
    cmd = RecordingPulumiCommand(stacks={"dev"}, outputs={"ui_user": "admin", "s3_access_key": "AK"},
                                 secret_outputs={"s3_access_key"})
    assert automation.outputs("dev", project_dir=mlox_project, pulumi_command=cmd) == {
        "ui_user": "admin", "s3_access_key": "[secret]"}
    assert automation.outputs("dev", project_dir=mlox_project, pulumi_command=cmd, show_secrets=True)[
        "s3_access_key"] == "AK"


def test_set_secrets_sets_each_value_as_a_secret(mlox_project, passphrase):
    cmd = RecordingPulumiCommand()
    automation.set_secrets("dev", {"hcloud:token": "tok", "mlox:onprem.private_key": "KEY"},
                           path_keys=("mlox:onprem.private_key",), project_dir=mlox_project, pulumi_command=cmd)
    sets = [c.args for c in cmd.calls if c.verb == "config set"]
    assert sets == [
        ["config", "set", "hcloud:token", "--secret", "--stack", "dev", "--non-interactive", "--", "tok"],
        ["config", "set", "--path", "mlox:onprem.private_key", "--secret", "--stack", "dev", "--non-interactive",
         "--", "KEY"],
    ]


def test_set_secrets_needs_the_stack_file(mlox_project, passphrase):
    with pytest.raises(MloxError, match="Pulumi.nope.yaml: file not found .create it with: mlox-iac init --stack nope"):
        automation.set_secrets("nope", {"a:b": "c"}, project_dir=mlox_project, pulumi_command=RecordingPulumiCommand())


# ----- the program the workspace runs, under mocks ------------------------------------

@pytest.mark.parametrize("example", ["example-hetzner", "example-onprem"])
def test_program_exports_what_env_and_status_read(example):
    """The project's program (what `pulumi up` in the work dir runs) exports the outputs
    connect.py relies on, with exactly connect.SECRET_OUTPUTS marked secret."""
    from mlox_iac.plan import is_secret, plan_stack_file, unwrap

    stack_file = Path(__file__).resolve().parent.parent / "stacks" / f"Pulumi.{example}.yaml"
    _, outputs = plan_stack_file(stack_file)
    # The backup password exists only where the stack has an mlox:backup block.
    expected = connect.SECRET_OUTPUTS - (set() if "mlox:backup:" in stack_file.read_text() else {"backup_password"})
    assert {k for k, v in outputs.items() if is_secret(v)} == expected
    plain = unwrap(outputs)
    # Without a domain the internal CA's root is needed; with one, the system's roots serve.
    ca = "/tmp/ca.crt" if plain["tls"] == "internal" else None
    exports = connect.env_exports(plain, ca_path=ca)
    assert exports["MLFLOW_TRACKING_URI"] == plain["urls"]["mlflow"]
    assert exports["MLFLOW_TRACKING_PASSWORD"] == plain["ui_passwords"]["mlflow"]
    assert exports["AWS_ENDPOINT_URL_S3"] == plain["urls"]["s3"]
    assert exports.get("AWS_CA_BUNDLE") == ca
    assert set(plain["urls"]) == {"mlflow", "s3", "home"}


def test_project_program_entry_point_is_the_one_pulumi_runs():
    """Pulumi.yaml has no `main`, so the CLI runs the project root's __main__.py: the same
    program `mlox-iac plan` records."""
    import yaml

    root = Path(__file__).resolve().parent.parent
    project = yaml.safe_load((root / "Pulumi.yaml").read_text())
    assert "main" not in project and project["stackConfigDir"] == "stacks"
    assert "from mlox_iac.program import program" in (root / "__main__.py").read_text()


def test_a_broken_cli_is_one_line(monkeypatch, tmp_path):
    broken = tmp_path / "bin" / "pulumi"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", str(broken.parent))
    with pytest.raises(MloxError, match=r"^mlox-iac up: the Pulumi CLI does not run \(`pulumi version`: "):
        automation.default_pulumi_command("mlox-iac up")


def test_a_resources_own_error_comes_before_the_engines_summary():
    failed = Exception("code: 255\n stdout: Updating (e2e):\nDiagnostics:\n  command:remote:Command (e2e-compose):\n"
                       "    error: Process exited with status 1: postgres-provision is unhealthy\n"
                       "  pulumi:pulumi:Stack (mlox-e2e):\n    error: update failed\n\n stderr: error: update failed\n")
    assert automation._first_error(failed) == "Process exited with status 1: postgres-provision is unhealthy"
    assert automation._first_error(Exception("code: 255\n stdout: \n stderr: error: update failed\n")) == "update failed"
