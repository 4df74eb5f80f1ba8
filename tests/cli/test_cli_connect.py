"""mlox_iac.connect: exports, SSH command lines (pure), and probes of real local endpoints."""

from __future__ import annotations

import subprocess
import time

import pytest
from cli_helpers import closed_port, https_server, outputs_for  # noqa: F401 (https_server: a fixture)

from mlox_iac import connect
from mlox_iac.errors import ConfigError, MloxError

OUTPUTS = outputs_for(443)


# ----- env ----------------------------------------------------------------------------

def test_env_exports_for_a_stack_without_a_domain():
    assert connect.env_exports(OUTPUTS, ca_path="/p/caddy-root.crt", stack="dev") == {
        # The stack, and how mlox-client reaches its server for SSH tunnels.
        "MLOX_STACK": "dev",
        "MLOX_SERVICES": "postgres,seaweedfs,mlflow,caddy",
        "MLOX_SSH_HOST": "127.0.0.1",
        "MLOX_SSH_USER": "root",
        "MLOX_SSH_PORT": "22",
        # The team's database, through a tunnel (its password is in outputs of newer stacks).
        "MLOX_POSTGRES_TUNNEL": "127.0.0.1:15432",
        "MLOX_POSTGRES_DATABASE": "data",
        "MLOX_POSTGRES_USER": "data",
        "MLFLOW_TRACKING_URI": "https://127.0.0.1:443/mlflow",
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "ui-pass",
        "AWS_ENDPOINT_URL_S3": "https://127.0.0.1:443",
        "AWS_ACCESS_KEY_ID": "AKTEST",
        "AWS_SECRET_ACCESS_KEY": "SKTEST",
        "MLOX_S3_BUCKETS": "mlflow,data",
        "MLOX_CA_FILE": "/p/caddy-root.crt",
        "MLFLOW_TRACKING_SERVER_CERT_PATH": "/p/caddy-root.crt",
        "AWS_CA_BUNDLE": "/p/caddy-root.crt",
        "REQUESTS_CA_BUNDLE": "/p/caddy-root.crt.bundle.pem",
    }


def test_ca_bundle_keeps_the_system_roots(tmp_path):
    ca = tmp_path / "caddy-root.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n")
    bundle = connect.write_ca_bundle(ca)
    text = bundle.read_text()
    assert bundle == connect.ca_bundle_path(ca)
    assert text.endswith(ca.read_text())
    assert text.count("BEGIN CERTIFICATE") > 10  # the public roots are still there


def test_env_exports_with_a_domain_need_no_ca():
    exports = connect.env_exports({**OUTPUTS, "tls": "acme"})
    assert "AWS_CA_BUNDLE" not in exports and "MLFLOW_TRACKING_SERVER_CERT_PATH" not in exports


def test_env_exports_with_a_custom_acme_ca_trust_its_root():
    exports = connect.env_exports({**OUTPUTS, "tls": "acme"}, ca_path="/p/acme-root.pem")
    assert exports["AWS_CA_BUNDLE"] == exports["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/p/acme-root.pem"
    assert exports["REQUESTS_CA_BUNDLE"] == "/p/acme-root.pem.bundle.pem"


def test_env_exports_without_mlflow_or_s3():
    only_s3 = {k: v for k, v in OUTPUTS.items() if k not in ("mlflow_tracking_uri",)}
    assert "MLFLOW_TRACKING_URI" not in connect.env_exports(only_s3)
    assert connect.env_exports({"tls": "acme"}) == {}


def test_env_exports_each_served_model():
    outputs = {**OUTPUTS, "urls": {**OUTPUTS.get("urls", {}), "model-churn-v2": "https://127.0.0.1:443/model-churn-v2"},
               "ui_passwords": {**OUTPUTS["ui_passwords"], "model-churn-v2": "model-pass"}}
    exports = connect.env_exports(outputs)
    assert {k: v for k, v in exports.items() if k.startswith("MLOX_MODEL_")} == {
        "MLOX_MODEL_CHURN_V2_URL": "https://127.0.0.1:443/model-churn-v2",
        "MLOX_MODEL_CHURN_V2_USER": "admin",
        "MLOX_MODEL_CHURN_V2_PASSWORD": "model-pass",
    }
    text = connect.render_exports(exports, "sh", show_secrets=False)
    assert "model-pass" not in text
    assert "# MLOX_MODEL_CHURN_V2_PASSWORD: [secret] (add --show-secrets to print it)" in text
    assert "export MLOX_MODEL_CHURN_V2_URL=https://127.0.0.1:443/model-churn-v2" in text


@pytest.mark.parametrize("value", ["plain", "it's", 'a"b', "$HOME `x` $(y)", "new\nline", "back\\slash", ""])
def test_sh_exports_survive_eval(value):
    script = connect.render_exports({"MLOX_T": value}, "sh")
    done = subprocess.run(["sh", "-c", script + 'printf %s "$MLOX_T"'], capture_output=True, text=True, check=True)
    assert done.stdout == value


def test_fish_and_powershell_syntax():
    assert connect.render_exports({"A": "it's"}, "fish") == "set -gx A 'it\\'s'\n"
    assert connect.render_exports({"A": "it's"}, "powershell") == "$env:A = 'it''s'\n"


def test_masked_secrets_become_comments():
    text = connect.render_exports({"MLFLOW_TRACKING_URI": "https://x", "MLFLOW_TRACKING_PASSWORD": "pw"}, "sh",
                                  show_secrets=False)
    assert text == ("export MLFLOW_TRACKING_URI=https://x\n"
                    "# MLFLOW_TRACKING_PASSWORD: [secret] (add --show-secrets to print it)\n")


def test_unknown_shell():
    with pytest.raises(ConfigError, match="--shell: 'tcsh' is not allowed .allowed: sh, fish, powershell."):
        connect.render_exports({}, "tcsh")


def test_mask_outputs():
    masked = connect.mask_outputs(OUTPUTS)
    assert masked["ui_passwords"] == masked["s3_access_key"] == masked["s3_secret_key"] == "[secret]"
    assert masked["ui_user"] == "admin"


# ----- ssh ----------------------------------------------------------------------------

def test_ssh_argv():
    assert connect.ssh_argv({**OUTPUTS, "server_address": "203.0.113.9", "ssh_port": 2222}, identity="/k") == [
        "ssh", "-p", "2222", "-o", "StrictHostKeyChecking=accept-new", "-i", "/k", "-o", "IdentitiesOnly=yes",
        "root@203.0.113.9",
    ]


def test_a_stack_with_recorded_host_keys_is_reached_through_its_own_known_hosts_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOX_KNOWN_HOSTS_DIR", str(tmp_path / "kh"))
    outputs = {**OUTPUTS, "server_address": "203.0.113.9", "ssh_port": 2222,
               "ssh_host_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost", "ecdsa-sha2-nistp256 AAAAE2Vj"]}
    argv = connect.ssh_argv(outputs)
    known = tmp_path / "kh" / "203.0.113.9_2222"
    assert argv == ["ssh", "-p", "2222", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                    "root@203.0.113.9"]
    assert known.read_text() == ("[203.0.113.9]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost\n"
                                 "[203.0.113.9]:2222 ecdsa-sha2-nistp256 AAAAE2Vj\n")


@pytest.mark.parametrize("stderr", [
    "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n...\nHost key verification failed.\n",
    "No ED25519 host key is known for [203.0.113.9]:2222 and you have requested strict checking.\n"
    "Host key verification failed.\n",
])
def test_a_refused_host_key_is_one_line_that_says_so(tmp_path, monkeypatch, stderr):
    monkeypatch.setenv("MLOX_KNOWN_HOSTS_DIR", str(tmp_path / "kh"))
    outputs = {**OUTPUTS, "server_address": "203.0.113.9", "ssh_host_keys": ["ssh-ed25519 AAAAC3"]}

    def run(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 255, "", stderr)

    with pytest.raises(MloxError) as error:
        connect.fetch_ca(outputs, tmp_path / "ca.crt", run=run)
    assert str(error.value) == (
        f"the server's SSH host key is not the one recorded when it was bootstrapped ({tmp_path / 'kh'}): if the "
        "server was rebuilt, record its new key with mlox-iac up --replace main-host-keys; otherwise do not "
        "connect, someone may be intercepting the connection")


def test_logs_argv_as_root():
    argv = connect.logs_argv({**OUTPUTS, "server_address": "203.0.113.9"}, "mlflow", allowed=["caddy", "mlflow"],
                             tail=50, options=["-o", "UserKnownHostsFile=/dev/null"])
    assert argv == [
        "ssh", "-p", "22", "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=accept-new",
        "-o", "BatchMode=yes", "root@203.0.113.9", "--",
        "docker compose --project-name mlox --project-directory /opt/mlox/bundle -f /opt/mlox/bundle/compose.yaml "
        "logs --tail 50 mlflow",
    ]


def test_logs_argv_follow_with_sudo_for_other_users():
    argv = connect.logs_argv({**OUTPUTS, "ssh_user": "admin"}, "caddy", allowed=["caddy"], follow=True, tty=True)
    assert "-t" in argv and "BatchMode=yes" not in argv
    assert argv[-1].startswith("sudo -n docker compose ") and argv[-1].endswith(" logs --tail 200 -f caddy")
    assert argv[-3] == "admin@127.0.0.1"


def test_logs_argv_matches_the_compose_command_the_deploy_uses():
    from mlox_iac.render.commands import COMPOSE

    assert " ".join(connect.COMPOSE_ARGS) == COMPOSE


def test_logs_of_an_unknown_service():
    with pytest.raises(ConfigError) as error:
        connect.logs_argv(OUTPUTS, "jupyter", allowed=["caddy", "mlflow"])
    assert error.value.problems == ["SERVICE: 'jupyter' is not a service of this stack (allowed: caddy, mlflow)"]


def test_service_names_are_quoted_for_the_remote_shell():
    argv = connect.logs_argv(OUTPUTS, "a;b", allowed=["a;b"])
    assert argv[-1].endswith("logs --tail 200 'a;b'")


def test_fetch_ca_writes_the_certificate_once(tmp_path):
    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n", "")

    dest = tmp_path / ".mlox" / "dev" / "caddy-root.crt"
    assert connect.fetch_ca({**OUTPUTS, "ssh_user": "admin"}, dest, identity="/k", run=run) == dest
    assert dest.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert calls[0][-1] == "sudo -n cat /mnt/mlox-data/volumes/caddy-data/caddy/pki/authorities/local/root.crt"
    connect.fetch_ca(OUTPUTS, dest, run=run)
    assert len(calls) == 1  # cached
    connect.fetch_ca(OUTPUTS, dest, run=run, refresh=True)
    assert len(calls) == 2


def test_fetch_ca_failure_says_what_to_do(tmp_path):
    def run(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 255, "", "root@127.0.0.1: Permission denied (publickey).\n")

    with pytest.raises(MloxError, match=r"\(root@127.0.0.1: Permission denied \(publickey\).\): pass --identity KEY"):
        connect.fetch_ca(OUTPUTS, tmp_path / "ca.crt", run=run)
    assert not (tmp_path / "ca.crt").exists()


# ----- probes against real local endpoints --------------------------------------------

def test_probe_all_up(https_server):
    port, tls = https_server()
    results = connect.probe(outputs_for(port), ca_path=tls.ca_path)
    assert [(r.name, r.up, r.status, r.detail) for r in results] == [("mlflow", True, 200, "ok"), ("s3", True, 200, "ok")]
    assert results[0].url == f"https://127.0.0.1:{port}/mlflow/health"
    assert results[1].url == f"https://127.0.0.1:{port}/healthz"
    expected = tls.not_after.timestamp() - time.time()
    assert abs(results[0].cert_expires_in_s - expected) < 60
    assert connect.format_duration(results[0].cert_expires_in_s) in ("29d", "30d")


def test_probe_wrong_password_is_down(https_server):
    port, tls = https_server()
    outputs = {**outputs_for(port), "ui_passwords": {"mlflow": "wrong"}}
    mlflow = connect.probe(outputs, ca_path=tls.ca_path)[0]
    assert (mlflow.up, mlflow.status, mlflow.detail) == (False, 401, "credentials rejected")


def test_probe_upstream_gone_is_down(https_server):
    port, tls = https_server(broken=True)
    results = connect.probe(outputs_for(port), ca_path=tls.ca_path)
    assert [(r.up, r.status, r.detail) for r in results] == [(False, 502, "HTTP 502"), (False, 502, "HTTP 502")]


def test_probe_nothing_listening_is_down(https_server):
    port, tls = https_server()
    results = connect.probe(outputs_for(port, s3_port=closed_port()), ca_path=tls.ca_path, timeout=2)
    assert results[0].up and not results[1].up
    assert results[1].status is None and results[1].detail.startswith("no answer: ")


def test_probe_untrusted_certificate_is_down(https_server):
    port, _ = https_server()
    results = connect.probe(outputs_for(port))  # the system store does not know the test CA
    assert not any(r.up for r in results)
    assert results[0].detail.startswith("TLS certificate not trusted: ")


def test_probe_expired_certificate_is_down(https_server):
    port, tls = https_server()
    later = time.time() + 31 * 86400
    results = connect.probe(outputs_for(port), ca_path=tls.ca_path, now=later)
    assert [(r.up, r.detail) for r in results] == [(False, "TLS certificate expired")] * 2


def test_probe_needs_urls_and_passwords():
    with pytest.raises(MloxError, match="stack output urls is missing"):
        connect.probe({})
    with pytest.raises(MloxError, match="ui_passwords is masked"):
        connect.probe(connect.mask_outputs(OUTPUTS))


@pytest.mark.parametrize("seconds,text", [(None, "-"), (-1, "expired"), (30, "30s"), (125, "2m"), (7200, "2h"),
                                          (90 * 86400, "90d")])
def test_format_duration(seconds, text):
    assert connect.format_duration(seconds) == text


def test_ca_is_current_tells_a_stale_root_from_the_right_one(https_server, tmp_path):
    """A cached root of a rebuilt server fails verification; the right one passes."""
    from cli_helpers import make_tls

    port, tls = https_server()
    outputs = {**outputs_for(port), "urls": {"mlflow": f"https://127.0.0.1:{port}/mlflow"}}
    assert connect.ca_is_current(outputs, tls.ca_path)
    stale = make_tls(tmp_path / "other").ca_path
    assert not connect.ca_is_current(outputs, stale)
    # An unreachable server is no evidence against the cached root.
    assert connect.ca_is_current({**outputs, "urls": {"s3": f"https://127.0.0.1:{closed_port()}"}}, stale)


def test_env_exports_the_feature_server_when_feast_is_on():
    outputs = {**OUTPUTS, "urls": {**OUTPUTS["urls"], "feast": "https://192.0.2.50/feast"},
               "ui_passwords": {**OUTPUTS["ui_passwords"], "feast": "fpw"}}
    exports = connect.env_exports(outputs, ca_path="/p/ca.crt")
    assert {k: v for k, v in exports.items() if k.startswith("FEAST_")} == {
        "FEAST_FEATURE_SERVER_URL": "https://192.0.2.50/feast",
        "FEAST_FEATURE_SERVER_USERNAME": outputs["ui_user"],
        "FEAST_FEATURE_SERVER_PASSWORD": "fpw",
    }
    masked = connect.env_exports(connect.mask_outputs(outputs), ca_path="/p/ca.crt")
    assert masked["FEAST_FEATURE_SERVER_PASSWORD"] == "[secret]"
    assert "FEAST_FEATURE_SERVER_PASSWORD" in connect.SECRET_EXPORTS
    assert not any(k.startswith("FEAST_") for k in connect.env_exports(OUTPUTS))
