"""Every command through the real entry point: exit codes and messages."""

from __future__ import annotations

import json

import pytest
import yaml
from cli_helpers import (  # noqa: F401 (fixtures used by name)
    cli, closed_port, https_server, make_tls, no_pulumi, outputs_file, outputs_for, terminal,
)
from conftest import KEY
from pulumi_double import RecordingPulumiCommand, step, urn

from mlox_iac.config.loader import load_file

MISSING_CLI = ("needs the Pulumi CLI, which is not on PATH: install it with `curl -fsSL https://get.pulumi.com | sh` "
               "(see https://www.pulumi.com/docs/install/); `mlox-iac validate`, `plan` and `schema` work without it")
COMMANDS = ("validate", "schema", "plan", "init", "preview", "up", "refresh", "destroy", "outputs", "env", "status",
            "logs", "ssh", "migrate")


@pytest.fixture
def engine(mlox_project, monkeypatch):
    """A recording Pulumi CLI behind every engine command, and a passphrase in the environment."""
    import mlox_iac.automation as automation

    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "pass")
    double = RecordingPulumiCommand(
        outputs=outputs_for(443, provider="hetzner"), secret_outputs={"ui_passwords", "s3_access_key", "s3_secret_key"},
        events=step("create", urn("main-server"), "hcloud:index/server:Server"), changes={"create": 14},
    )
    monkeypatch.setattr(automation, "default_pulumi_command", lambda command="": double)
    return double


# ----- help ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(cli, command):
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout


@pytest.mark.parametrize("command", ["preview", "up", "refresh", "destroy", "outputs", "env", "status", "logs", "ssh"])
def test_stack_option_everywhere(cli, command):
    assert "--stack" in cli(command, "--help").stdout


# ----- without the Pulumi CLI ---------------------------------------------------------

@pytest.mark.parametrize("command", ["up", "preview", "destroy", "refresh", "outputs"])
def test_engine_commands_without_the_cli_stop_with_one_line(cli, mlox_project, no_pulumi, command):
    result = cli(command, "--stack", "dev", *(["--yes"] if command in ("up", "destroy", "refresh") else []))
    assert result.exit_code == 1
    assert result.stderr == f"error: mlox-iac {command} {MISSING_CLI}\n"
    assert result.stdout == ""


def test_offline_commands_work_without_the_cli(cli, mlox_project, no_pulumi):
    assert cli("validate", "--stack", "dev").exit_code == 0
    assert cli("schema").exit_code == 0
    assert cli("plan", "--stack", "dev", "--json").exit_code == 0


def test_env_and_status_from_a_file_work_without_the_cli(cli, mlox_project, no_pulumi, outputs_file):
    path = outputs_file(outputs_for(443, tls="acme"))
    assert cli("env", "--outputs-file", str(path)).exit_code == 0
    assert cli("outputs", "--outputs-file", str(path)).exit_code == 0


# ----- validate, plan -----------------------------------------------------------------

def test_validate_ok_and_invalid(cli, mlox_project):
    ok = cli("validate", "--stack", "dev")
    assert ok.exit_code == 0 and ok.stdout.startswith("ok: stacks/Pulumi.dev.yaml is valid (hetzner;")
    (mlox_project / "stacks" / "Pulumi.bad.yaml").write_text("config:\n  mlox:provider: nowhere\n")
    bad = cli("validate", "--stack", "bad")
    assert bad.exit_code == 2
    assert "stacks/Pulumi.bad.yaml: mlox:provider: 'nowhere' is not allowed" in bad.stderr


def test_plan_json_shape(cli, mlox_project):
    result = cli("plan", "--stack", "dev", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert rows and set(rows[0]) == {"type", "name", "parent", "inputs"}
    assert any(r["type"] == "hcloud:index/server:Server" for r in rows)


# ----- up, preview, refresh, destroy --------------------------------------------------

def test_up_without_yes_and_without_a_terminal_suggests_yes(cli, engine):
    result = cli("up", "--stack", "dev")
    assert result.exit_code == 2
    assert result.stderr == ("mlox-iac up needs confirmation and stdin is not a terminal: "
                             "pass --yes to go ahead without asking\n")
    assert engine.calls == []


def test_up_yes_streams_progress_and_ends_with_the_urls(cli, engine):
    result = cli("up", "--stack", "dev", "--yes")
    assert result.exit_code == 0, result.stderr
    assert "Deploying dev ...\n  created main-server (hcloud:index/server:Server)\n" in result.stderr
    assert "Deployed stack dev" in result.stdout and "14 created" in result.stdout
    assert "https://127.0.0.1:443/mlflow" in result.stdout
    assert "ui-pass" not in result.stdout + result.stderr
    assert engine.verbs()[:5] == ["stack select", "stack init", "stack output", "stack output", "up"]


def test_up_json(cli, engine):
    result = cli("up", "--stack", "dev", "--yes", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["operation"] == "update" and data["changes"] == {"create": 14}
    assert data["outputs"]["ui_passwords"] == "[secret]"
    assert data["outputs"]["urls"]["s3"] == "https://127.0.0.1:443"


def test_up_on_a_terminal_previews_and_asks(cli, engine, terminal):
    declined = cli("up", "--stack", "dev", input="n\n")
    assert declined.exit_code == 1 and "aborted: nothing was changed" in declined.stderr
    assert "Changes: 14 to create" in declined.stderr
    assert "up" not in engine.verbs()
    accepted = cli("up", "--stack", "dev", input="y\n")
    assert accepted.exit_code == 0 and engine.verbs().count("up") == 1


def test_up_with_an_invalid_stack_file_exits_2_before_the_engine(cli, engine, mlox_project):
    (mlox_project / "stacks" / "Pulumi.dev.yaml").write_text("config:\n  mlox:provider: hetzner\n")
    result = cli("up", "--stack", "dev", "--yes")
    assert result.exit_code == 2 and "stacks/Pulumi.dev.yaml: mlox:ssh: required" in result.stderr
    assert engine.calls == []


def test_engine_failure_is_one_line_after_the_engine_errors(cli, engine):
    engine.fail["up"] = "error: update failed"
    engine.stacks.add("dev")
    result = cli("up", "--stack", "dev", "--yes")
    assert result.exit_code == 1
    assert result.stderr.endswith("error: pulumi up failed: update failed\n")


def test_preview_json(cli, engine):
    result = cli("preview", "--stack", "dev", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["changes"] == {"create": 14}


def test_stack_is_required(cli, engine):
    result = cli("preview")
    assert result.exit_code == 2 and result.stderr == "--stack: required (pass --stack NAME or set MLOX_STACK)\n"


def test_destroy_without_yes_and_without_a_terminal(cli, engine):
    result = cli("destroy", "--stack", "dev")
    assert result.exit_code == 2 and "pass --yes" in result.stderr


def test_destroy_asks_for_the_stack_name(cli, engine, terminal):
    engine.stacks.add("dev")
    wrong = cli("destroy", "--stack", "dev", input="prod\n")
    assert wrong.exit_code == 1 and "aborted: 'prod' is not 'dev'; nothing was deleted" in wrong.stderr
    assert "destroy" not in engine.verbs()
    right = cli("destroy", "--stack", "dev", input="dev\n")
    assert right.exit_code == 0 and "destroy" in engine.verbs()


def test_refresh_yes(cli, engine):
    engine.stacks.add("dev")
    result = cli("refresh", "--stack", "dev", "--yes")
    assert result.exit_code == 0 and "Refreshed stack dev" in result.stdout


def test_missing_passphrase_without_a_terminal(cli, engine, monkeypatch):
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    result = cli("preview", "--stack", "dev")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: stack dev keeps its secrets encrypted with a passphrase: set "
                                    "PULUMI_CONFIG_PASSPHRASE")


@pytest.mark.filterwarnings("ignore::getpass.GetPassWarning")
def test_passphrase_is_asked_once_on_a_terminal(cli, engine, terminal, monkeypatch):
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    result = cli("up", "--stack", "dev", input="pw\npw\ny\n")
    assert result.exit_code == 0, result.stderr
    assert {c.env.get("PULUMI_CONFIG_PASSPHRASE") for c in engine.calls} == {"pw"}
    assert "pw" not in result.stdout


# ----- outputs, env, status -----------------------------------------------------------

def test_outputs_masks_secrets_unless_asked(cli, mlox_project, outputs_file):
    path = str(outputs_file(outputs_for(443)))
    masked = json.loads(cli("outputs", "--outputs-file", path, "--json").stdout)
    assert masked["ui_passwords"] == masked["s3_secret_key"] == "[secret]"
    assert masked["urls"]["mlflow"] == "https://127.0.0.1:443/mlflow"
    human = cli("outputs", "--outputs-file", path)
    assert "SKTEST" not in human.stdout and "ui-pass" not in human.stdout and "--show-secrets" in human.stdout
    shown = json.loads(cli("outputs", "--outputs-file", path, "--json", "--show-secrets").stdout)
    assert shown["ui_passwords"] == {"mlflow": "ui-pass"}


def test_outputs_from_the_engine(cli, engine):
    engine.stacks.add("dev")
    result = cli("outputs", "--stack", "dev", "--json")
    assert json.loads(result.stdout)["s3_access_key"] == "[secret]"


def test_outputs_of_a_stack_never_deployed(cli, engine):
    result = cli("outputs", "--stack", "dev")
    assert result.exit_code == 1
    assert result.stderr == "error: stack dev has not been deployed yet: run mlox-iac up --stack dev\n"


# --outputs-file contents that are not a stack's outputs -> the line after "FILE: ".
OUTPUTS_FILE_CASES = {
    "json_list": (b"[1]", "must be a JSON object of stack outputs (from pulumi stack output --json)"),
    "not_json": (b"{urls:", "not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    "empty": (b"", "not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    "not_utf8": (b'{"tls": "\xff"}', "not UTF-8 text (byte 0xff at offset 9; allowed: a JSON outputs file in UTF-8)"),
    "urls_not_object": (b'{"urls": ["https://x"]}', 'urls: must be an object of strings (found ["https://x"])'),
    "port_not_number": (b'{"ssh_port": "22"}', 'ssh_port: must be a port number (found "22")'),
    "services_not_list": (b'{"services": "mlflow"}', 'services: must be a list of strings (found "mlflow")'),
    "address_not_string": (b'{"server_address": 5}', "server_address: must be a string (found 5)"),
}


@pytest.mark.parametrize("case", sorted(OUTPUTS_FILE_CASES))
def test_outputs_file_errors_exit_2(cli, mlox_project, tmp_path, case):
    content, expected = OUTPUTS_FILE_CASES[case]
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    for command in ("outputs", "env", "status"):
        result = cli(command, "--outputs-file", str(path))
        assert (result.exit_code, result.stderr) == (2, f"{path}: {expected}\n"), command


def test_outputs_file_that_is_a_directory_or_missing(cli, mlox_project, tmp_path):
    result = cli("outputs", "--outputs-file", str(tmp_path))
    assert (result.exit_code, result.stderr) == (2, f"{tmp_path}: is a directory (allowed: a JSON outputs file)\n")
    result = cli("outputs", "--outputs-file", str(tmp_path / "none.json"))
    assert (result.exit_code, result.stderr) == (2, f"{tmp_path / 'none.json'}: file not found\n")


CA_FILE_CASES = {
    "empty": (b"", "is empty"),
    "not_pem": (b"just some text\n", "holds no PEM certificate"),
    "private_key": (b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n", "holds no PEM certificate"),
    "broken_certificate": (b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
                           "holds no PEM certificate"),
    "binary": (b"\x30\x82\x01\xff\x00", "not UTF-8 text (byte 0x82 at offset 1; allowed: a PEM certificate file in UTF-8)"),
}


@pytest.mark.parametrize("case", sorted(CA_FILE_CASES))
def test_bad_ca_file_is_one_line_exit_2(cli, mlox_project, tmp_path, outputs_file, case, monkeypatch):
    content, problem = CA_FILE_CASES[case]
    ca = tmp_path / "root.crt"
    ca.write_bytes(content)
    allowed = ("" if problem.startswith("not UTF-8") else
               " (allowed: the server's root certificate, fetched from "
               "/mnt/mlox-data/volumes/caddy-data/caddy/pki/authorities/local/root.crt)")
    outputs = str(outputs_file(outputs_for(closed_port())))
    for args in (("env", "--ca", str(ca)), ("status",)):
        monkeypatch.setenv("MLOX_CA_FILE", str(ca))
        result = cli(*args, "--outputs-file", outputs)
        assert (result.exit_code, result.stderr) == (2, f"{ca}: {problem}{allowed}\n"), args
        assert "Traceback" not in result.stdout + result.stderr


def test_mistyped_option_is_a_usage_error_with_a_suggestion(cli):
    result = cli("validate", "--stak", "x")
    assert result.exit_code == 2
    assert result.stderr == ("Usage: mlox-iac validate [OPTIONS]\nTry 'mlox-iac validate --help' for help.\n\n"
                             "Error: No such option: --stak. Did you mean --stack?\n")
    unknown = cli("valdate")
    assert unknown.exit_code == 2 and unknown.stderr.endswith("Error: No such command 'valdate'. Did you mean 'validate'?\n")
    missing = cli("cost", "--stack")
    assert missing.exit_code == 2 and missing.stderr.endswith("Error: Option '--stack' requires an argument.\n")


def test_env_masks_secrets_unless_asked(cli, mlox_project, outputs_file):
    path = str(outputs_file(outputs_for(443, tls="acme")))
    masked = cli("env", "--outputs-file", path)
    assert masked.exit_code == 0
    assert "export MLFLOW_TRACKING_URI=https://127.0.0.1:443/mlflow\n" in masked.stdout
    assert "# MLFLOW_TRACKING_PASSWORD: [secret]" in masked.stdout
    assert "ui-pass" not in masked.stdout and "SKTEST" not in masked.stdout
    shown = cli("env", "--outputs-file", path, "--show-secrets")
    assert "export MLFLOW_TRACKING_PASSWORD=ui-pass\n" in shown.stdout
    assert "export AWS_SECRET_ACCESS_KEY=SKTEST\n" in shown.stdout
    assert json.loads(cli("env", "--outputs-file", path, "--json").stdout)["AWS_ACCESS_KEY_ID"] == "[secret]"


def test_env_with_the_internal_ca(cli, mlox_project, outputs_file, tmp_path):
    ca = make_tls(tmp_path / "tls").ca_path
    result = cli("env", "--outputs-file", str(outputs_file(outputs_for(443))), "--ca", str(ca), "--shell", "fish")
    assert f"set -gx AWS_CA_BUNDLE '{ca}'\n" in result.stdout


def test_env_write_profile_is_private_and_what_mlox_client_reads(cli, mlox_project, outputs_file, tmp_path,
                                                                 monkeypatch):
    import os

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("MLOX_STACK", raising=False)
    ca = make_tls(tmp_path / "tls").ca_path
    path = str(outputs_file(outputs_for(443)))
    stale = tmp_path / "config" / "mlox" / "dev.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    stale.chmod(0o644)  # an older, readable profile is replaced, never left readable
    result = cli("env", "--stack", "dev", "--outputs-file", path, "--ca", str(ca), "--identity", "~/.ssh/mine",
                 "--write-profile")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # nothing to evaluate, no secret on the terminal
    assert result.stderr == f"wrote {stale} (mode 600): mlox_client.connect() reads it\n"
    assert stale.stat().st_mode & 0o777 == 0o600
    profile = json.loads(stale.read_text())
    assert (profile["format"], profile["stack"]) == (1, "dev")
    assert profile["env"]["MLFLOW_TRACKING_PASSWORD"] == "ui-pass" and profile["env"]["MLOX_CA_FILE"] == str(ca)
    assert profile["env"]["MLOX_SSH_IDENTITY"] == os.path.expanduser("~/.ssh/mine")
    monkeypatch.setenv("MLOX_CLIENT_SETTINGS", str(tmp_path / "none.json"))
    import mlox_client

    stack = mlox_client.connect("dev", configure_mlflow=False)
    assert (stack.name, stack.s3.endpoint, stack.mlflow.tracking_uri) == ("dev", "https://127.0.0.1:443",
                                                                          "https://127.0.0.1:443/mlflow")
    as_json = cli("env", "--stack", "dev", "--outputs-file", path, "--ca", str(ca), "--write-profile", "--json")
    assert json.loads(as_json.stdout) == {"profile": str(stale)}


def test_env_fetches_the_ca_once_over_ssh(cli, mlox_project, outputs_file, monkeypatch):
    import subprocess

    calls = []

    def fake_run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("MLOX_SSH_OPTS", "-o UserKnownHostsFile=/dev/null")
    path = str(outputs_file(outputs_for(443)))
    first = cli("env", "--stack", "dev", "--outputs-file", path, "--identity", "/k")
    cached = mlox_project / ".mlox" / "dev" / "caddy-root.crt"
    assert first.exit_code == 0 and f"export AWS_CA_BUNDLE={cached}\n" in first.stdout
    assert calls[0][:2] == ["ssh", "-p"] and "UserKnownHostsFile=/dev/null" in calls[0] and "/k" in calls[0]
    cli("env", "--stack", "dev", "--outputs-file", path)
    assert len(calls) == 1


def test_status_all_up(cli, mlox_project, https_server, outputs_file):
    port, tls = https_server()
    result = cli("status", "--outputs-file", str(outputs_file(outputs_for(port))), "--ca", str(tls.ca_path), "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["name"], r["up"], r["status"]) for r in rows] == [("mlflow", True, 200), ("s3", True, 200)]
    human = cli("status", "--outputs-file", str(outputs_file(outputs_for(port))), "--ca", str(tls.ca_path))
    assert human.exit_code == 0 and "mlflow" in human.stdout and "DOWN" not in human.stdout
    assert "ui-pass" not in human.stdout


def test_status_with_a_custom_acme_ca_trusts_the_given_root(cli, mlox_project, https_server, outputs_file):
    port, tls = https_server()
    path = str(outputs_file(outputs_for(port, tls="acme")))
    trusted = cli("status", "--outputs-file", path, "--ca", str(tls.ca_path), "--json")
    assert trusted.exit_code == 0, trusted.stderr
    assert all(r["up"] and r["cert_expires_in_s"] > 0 for r in json.loads(trusted.stdout))
    untrusted = cli("status", "--outputs-file", path, "--json")  # the system's roots only
    assert untrusted.exit_code == 1
    details = {r["detail"] for r in json.loads(untrusted.stdout)}
    assert len(details) == 1 and details.pop().endswith("(pass --ca with the root of the CA that issued it)")


def test_status_exits_1_when_an_endpoint_is_down(cli, mlox_project, https_server, outputs_file):
    port, tls = https_server()
    path = outputs_file(outputs_for(port, s3_port=closed_port()))
    result = cli("status", "--outputs-file", str(path), "--ca", str(tls.ca_path), "--timeout", "2")
    assert result.exit_code == 1
    assert "DOWN" in result.stdout and result.stderr == "down: s3\n"


def test_status_with_a_bad_gateway(cli, mlox_project, https_server, outputs_file):
    port, tls = https_server(broken=True)
    result = cli("status", "--outputs-file", str(outputs_file(outputs_for(port))), "--ca", str(tls.ca_path), "--json")
    assert result.exit_code == 1
    assert {r["detail"] for r in json.loads(result.stdout)} == {"HTTP 502"}


# ----- logs, ssh ----------------------------------------------------------------------

def test_logs_unknown_service_exits_2_naming_the_allowed_ones(cli, mlox_project, outputs_file):
    result = cli("logs", "jupyter", "--stack", "dev", "--outputs-file", str(outputs_file(outputs_for(443))))
    assert result.exit_code == 2
    assert result.stderr.startswith("SERVICE: 'jupyter' is not a service of this stack (allowed: caddy, home, mlflow, ")
    assert "seaweedfs-buckets" in result.stderr  # the compose services of the stack file


def test_logs_runs_ssh(cli, mlox_project, outputs_file, monkeypatch):
    import subprocess

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: calls.append(argv) or subprocess.CompletedProcess(argv, 0))
    result = cli("logs", "mlflow", "--outputs-file", str(outputs_file(outputs_for(443))), "--tail", "5")
    assert result.exit_code == 0
    assert calls[0][-1].endswith("logs --tail 5 mlflow") and calls[0][-3] == "root@127.0.0.1"


def test_ssh_execs_the_system_ssh(cli, mlox_project, outputs_file, monkeypatch):
    import os

    seen = []

    def fake_exec(file, argv):
        seen.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvp", fake_exec)
    cli("ssh", "--outputs-file", str(outputs_file(outputs_for(443))), "--", "docker", "ps")
    assert seen == [["ssh", "-p", "22", "-o", "StrictHostKeyChecking=accept-new", "root@127.0.0.1", "--", "docker ps"]]


# ----- init ---------------------------------------------------------------------------

HETZNER_FLAGS = ("--stack", "prod", "--provider", "hetzner", "--location", "nbg1", "--size", "cx33",
                 "--ssh-key", KEY,
                 "--admin-cidr", "203.0.113.7")


def test_init_non_interactive_writes_a_valid_file(cli, mlox_project, no_pulumi):
    result = cli("init", *HETZNER_FLAGS, "--services", "postgres,seaweedfs")
    assert result.exit_code == 0, result.stderr
    path = mlox_project / "stacks" / "Pulumi.prod.yaml"
    config = load_file(path)
    assert (config.provider, config.hetzner.location, config.hetzner.server_type) == ("hetzner", "nbg1", "cx33")
    assert config.ssh.admin_cidrs == ["203.0.113.7/32"]
    assert config.enabled_services() == ["postgres", "seaweedfs", "home", "caddy"]
    assert config.domain is None
    assert cli("validate", "--stack", "prod").exit_code == 0


@pytest.mark.parametrize("services, enabled", [
    (None, ["postgres", "seaweedfs", "mlflow", "home", "caddy"]),  # the core preset
    ("postgres,seaweedfs,mlflow,jupyter", ["postgres", "seaweedfs", "mlflow", "jupyter", "home", "caddy"]),
    ("postgres,seaweedfs,mlflow,redis,feast,label-studio,airflow,jupyter,serving,monitoring",
     ["postgres", "seaweedfs", "mlflow", "redis", "feast", "label-studio", "airflow", "jupyter", "serving",
      "monitoring", "home", "caddy"]),
])
def test_init_services_enables_exactly_the_listed_ones(cli, mlox_project, no_pulumi, services, enabled):
    result = cli("init", *HETZNER_FLAGS, *(["--services", services] if services else []))
    assert result.exit_code == 0, result.stderr
    assert load_file(mlox_project / "stacks" / "Pulumi.prod.yaml").enabled_services() == enabled


def test_init_missing_flags_without_a_terminal(cli, mlox_project):
    result = cli("init", "--stack", "x")
    assert result.exit_code == 2
    assert result.stderr == ("init: missing --provider, --ssh-key, --admin-cidr (stdin is not a terminal, "
                             "so init cannot ask; pass them as flags)\n")


def test_init_refuses_to_overwrite(cli, mlox_project):
    result = cli("init", *HETZNER_FLAGS[:1], "dev", *HETZNER_FLAGS[2:])
    assert result.exit_code == 2 and result.stderr == "stacks/Pulumi.dev.yaml: already exists (pass --force to overwrite it)\n"


def test_init_invalid_answers_exit_2_and_write_nothing(cli, mlox_project):
    result = cli("init", *HETZNER_FLAGS, "--domain", "ml.example.com")
    assert result.exit_code == 2
    assert "mlox:acme_email: required when a domain is set" in result.stderr or "--acme-email" in result.stderr
    assert not (mlox_project / "stacks" / "Pulumi.prod.yaml").exists()


def test_init_without_the_cli_prints_the_secret_commands(cli, mlox_project, no_pulumi):
    result = cli("init", *HETZNER_FLAGS, "--token", "hc-secret-token")
    assert result.exit_code == 0, result.stderr
    text = (mlox_project / "stacks" / "Pulumi.prod.yaml").read_text()
    assert "hc-secret-token" not in text + result.stdout + result.stderr
    assert "pulumi config set --secret hcloud:token --stack prod" in result.stdout
    assert f"export PULUMI_BACKEND_URL={(mlox_project / '.mlox' / 'state').resolve().as_uri()}" in result.stdout


def test_init_stores_the_token_as_a_secret(cli, engine, mlox_project):
    result = cli("init", *HETZNER_FLAGS, "--token", "hc-secret-token")
    assert result.exit_code == 0, result.stderr
    assert engine.call("config set").args == ["config", "set", "hcloud:token", "--secret", "--stack", "prod",
                                              "--non-interactive", "--", "hc-secret-token"]
    assert "hc-secret-token" not in result.stdout + result.stderr
    assert "stored 1 secret(s)" in result.stdout


def test_init_onprem_stores_the_private_key_with_path(cli, engine, mlox_project, tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    result = cli("init", "--stack", "lab", "--provider", "onprem", "--host", "192.0.2.50", "--private-key", str(key),
                 "--size", "8192", "--ssh-key", HETZNER_FLAGS[9], "--admin-cidr", "192.0.2.0/24")
    assert result.exit_code == 0, result.stderr
    document = yaml.safe_load((mlox_project / "stacks" / "Pulumi.lab.yaml").read_text())
    assert document["config"]["mlox:onprem"] == {"host": "192.0.2.50", "user": "root", "memory_mb": 8192}
    assert engine.call("config set").args[:4] == ["config", "set", "--path", "mlox:onprem.private_key"]


@pytest.mark.filterwarnings("ignore::getpass.GetPassWarning")
def test_init_interactive_asks(cli, mlox_project, no_pulumi, terminal):
    answers = "\n".join([
        "lab",            # stack name
        "digitalocean",   # provider
        "",               # location: default fra1
        "",               # size: default
        "",               # domain: none
        "mlflow,postgres,seaweedfs",
        HETZNER_FLAGS[9],  # ssh key
        "198.51.100.0/24",
        "",               # token: none
    ]) + "\n"
    result = cli("init", input=answers)
    assert result.exit_code == 0, result.stderr
    config = load_file(mlox_project / "stacks" / "Pulumi.lab.yaml")
    assert (config.provider, config.digitalocean.region, config.digitalocean.size) == ("digitalocean", "fra1", "s-2vcpu-4gb")
    assert config.ssh.admin_cidrs == ["198.51.100.0/24"]


def test_validate_json_invalid_exits_2(cli, mlox_project):
    (mlox_project / "stacks" / "Pulumi.bad.yaml").write_text("config:\n  mlox:provider: nowhere\n")
    result = cli("validate", "--stack", "bad", "--json")
    assert result.exit_code == 2 and json.loads(result.stdout)["ok"] is False


def test_masked_outputs_print_as_secret(cli, mlox_project, outputs_file):
    result = cli("outputs", "--outputs-file", str(outputs_file(outputs_for(443))))
    assert "s3_secret_key" in result.stdout and "[secret]" in result.stdout
    assert "Secrets show as [secret]" in result.stdout
    assert "instead of [secret]" in cli("outputs", "--help").stdout


def test_init_force_keeps_the_encryption_settings_and_secure_values(cli, mlox_project, no_pulumi):
    path = mlox_project / "stacks" / "Pulumi.prod.yaml"
    path.write_text("encryptionsalt: v1:salt\nconfig:\n  hcloud:token:\n    secure: v1:cipher\n  mlox:provider: aws\n")
    result = cli("init", *HETZNER_FLAGS, "--force")
    assert result.exit_code == 0, result.stderr
    document = yaml.safe_load(path.read_text())
    assert document["encryptionsalt"] == "v1:salt"
    assert document["config"]["hcloud:token"] == {"secure": "v1:cipher"}
    assert document["config"]["mlox:provider"] == "hetzner"


# ----- migrate and the provider-change refusal ---------------------------------------------

def test_up_refuses_a_changed_provider_on_a_deployed_stack(cli, engine):
    double = engine
    double.outputs["provider"] = "digitalocean"
    for command in ("up", "preview"):
        result = cli(command, "--stack", "dev", *(["--yes"] if command == "up" else []))
        assert result.exit_code == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if "mlox:provider" in line]
        assert lines == [
            "stacks/Pulumi.dev.yaml: mlox:provider: stack dev runs on digitalocean; changing the provider here would "
            "start an empty server on hetzner (allowed: digitalocean; to move the stack and its data run: "
            "mlox-iac migrate --stack dev --to hetzner)"]
    assert "up" not in double.verbs() and "preview" not in double.verbs()


@pytest.mark.parametrize("args,message", [
    ([], "--to/--finish/--abort: give exactly one"),
    (["--to", "linode"], "--to: 'linode' is not a provider (allowed: hetzner, digitalocean, aws, onprem)"),
    (["--finish", "--abort"], "--to/--finish/--abort: give exactly one"),
    (["--to", "hetzner", "--wait-dns", "-5"], "Error: Invalid value for '--wait-dns': Input should be greater than or equal to 0"),
])
def test_migrate_bad_arguments_are_one_line_and_exit_2(cli, engine, args, message):
    result = cli("migrate", "--stack", "dev", "--yes", *args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message)


def test_refresh_reports_drift_and_the_next_up_repairs_it(cli, engine, monkeypatch):
    """The engine cannot see a container removed by hand (pulumi-command reads nothing back):
    refresh asks the server, says what drifted, and the next up re-runs compose up."""
    from mlox_iac import connect

    engine.stacks.add("dev")
    monkeypatch.setattr(connect, "check_drift", lambda outputs, **kw: ["mlflow: no container (removed by hand?)"])
    refreshed = cli("refresh", "--stack", "dev", "--yes")
    assert refreshed.exit_code == 0, refreshed.stderr
    assert "drift: mlflow: no container (removed by hand?) (the next mlox-iac up --stack dev repairs it)" in refreshed.stderr
    up = cli("up", "--stack", "dev", "--yes")
    assert up.exit_code == 0, up.stderr
    assert "repairing the drift mlox-iac refresh found: mlflow: no container (removed by hand?)" in up.stderr
    args = engine.call("up").args
    assert args[args.index("--replace") + 1].endswith("::main-bundle-compose-up")
    again = cli("up", "--stack", "dev", "--yes")
    assert "repairing" not in again.stderr


@pytest.mark.parametrize("case, ps, expected", [
    ("all_running", '{"Service":"mlflow","State":"running"}\n{"Service":"seed","State":"exited"}', []),
    ("removed", '{"Service":"seed","State":"exited"}', ["mlflow: no container (removed by hand?)"]),
    ("stopped", '[{"Service":"mlflow","State":"exited"}]', ["mlflow: container exited"]),
])
def test_drift_is_a_long_running_service_without_a_running_container(case, ps, expected):
    from mlox_iac import connect

    config = '{"services": {"mlflow": {"restart": "unless-stopped"}, "seed": {"restart": "no"}}}'
    assert connect.parse_drift(f"{config}\n@@mlox-drift@@\n{ps}\n") == expected


def test_ctrl_c_during_up_lets_the_engine_stop_and_says_what_to_run(cli, engine, monkeypatch):
    """Ctrl-C reaches the Pulumi CLI too: this process does not die first (which would cut the
    engine's pipes); it waits for the cancelled update and says in one line how to complete it."""
    import os
    import signal

    real_run = engine.run

    def run(args, *rest, **kw):
        if "up" in args[:3]:
            os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C, seen by this process
            engine.fail["up"] = "error: update canceled"
        return real_run(args, *rest, **kw)

    monkeypatch.setattr(engine, "run", run)
    result = cli("up", "--stack", "dev", "--yes")
    assert result.exit_code == 130, result.stderr
    assert "interrupting: the engine finishes the steps under way, then stops" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: interrupted: the engine stopped after the steps under way and saved the state; "
        "run mlox-iac up --stack dev to complete it")
    assert "Traceback" not in result.stderr


DRIFT_OUTPUTS = {"server_address": "203.0.113.7", "ssh_user": "root", "ssh_port": 22}
DRIFT_OK = ('{"services": {"mlflow": {"restart": "unless-stopped"}}}\n@@mlox-drift@@\n'
            '{"Service":"mlflow","State":"exited"}\n')


@pytest.mark.parametrize("case, answers, expected, pauses", [
    ("dropped_once", [(255, "", "Connection closed by 203.0.113.7 port 22"), (0, DRIFT_OK, "")],
     ["mlflow: container exited"], [5]),
    ("dropped_three_times", [(255, "", "kex_exchange_identification: read: Connection reset by peer")] * 3,
     "cannot ask the server over ssh (kex_exchange_identification: read: Connection reset by peer)", [5, 15]),
    ("host_key_changed", [(255, "", "Host key verification failed.")], "host key", []),
    ("command_failed", [(1, "", "docker: not found")], "cannot ask the server over ssh (docker: not found)", []),
])
def test_drift_check_tries_a_dropped_ssh_connection_again(case, answers, expected, pauses):
    """ssh exit 255 is the connection failing (a busy sshd drops it): tried again twice, after
    a pause; a refused host key or a failing command is not."""
    import subprocess

    from mlox_iac import connect
    from mlox_iac.errors import MloxError

    calls, slept = [], []

    def run(argv, **kw):
        code, out, err = answers[len(calls)]
        calls.append(argv)
        return subprocess.CompletedProcess(argv, code, out, err)

    if isinstance(expected, list):
        assert connect.check_drift(DRIFT_OUTPUTS, run=run, sleep=slept.append) == expected
    else:
        with pytest.raises(MloxError) as error:
            connect.check_drift(DRIFT_OUTPUTS, run=run, sleep=slept.append)
        assert expected in str(error.value).lower() if case == "host_key_changed" else str(error.value) == expected
    assert slept == pauses and len(calls) == len(pauses) + 1
