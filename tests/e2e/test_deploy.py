"""End to end: the core stack on a real Debian host, deployed by replaying the program.

One systemd-nspawn target host is created; the real mlox-iac program for an onprem
stack pointed at it runs under Pulumi mocks, and every pulumi-command step it records is
replayed over real SSH (tests/e2e/replay.py). The tests run in file order and build on
each other: bootstrap, core stack up, idempotent redeploy, reboot, failing step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from mlox_iac.plan import unwrap

try:
    from . import hosts, images
    from .replay import ReplayError
    from .stack import COMPOSE, LONG_RUNNING, ROOT, deployment_on_host, timed
except ImportError:  # pragma: no cover
    import hosts  # type: ignore[no-redef]
    import images  # type: ignore[no-redef]
    from replay import ReplayError  # type: ignore[no-redef]
    from stack import COMPOSE, LONG_RUNNING, ROOT, deployment_on_host, timed  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with deployment_on_host(tmp_path_factory.mktemp("deploy"), prefix="mlxdep", first_index=11) as d:
        yield d


def test_1_bootstrap_hardens_a_bare_host(deployment):
    d = deployment
    start = time.monotonic()
    result = d.replay(only={"main-bootstrap"})
    assert result.action("main-bootstrap") == "created"
    timed("bootstrap", time.monotonic() - start)
    host = d.host

    sshd = host.ssh("sshd -T").stdout.lower().splitlines()
    assert "passwordauthentication no" in sshd
    assert "kbdinteractiveauthentication no" in sshd
    assert "permitrootlogin without-password" in sshd  # sshd -T's name for prohibit-password

    # Firewall: listeners on service ports are reachable on the host itself but refused from
    # another network namespace; SSH only from the admin network (the client is not in it).
    host.ssh("for p in 5432 8333; do (setsid python3 -m http.server $p --bind 0.0.0.0 >/dev/null 2>&1 &); done; sleep 1")
    for port in (5432, 8333):
        assert host.ssh(f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\"",
                        check=False).returncode == 0
        assert hosts.client_connect(host.address, port) == "refused", port
    assert hosts.client_connect(host.address, 22) == "refused"
    host.ssh("pkill -f '[h]ttp[.]server' || true")
    rules = host.ssh("nft list table inet mlox").stdout
    assert "policy drop" in rules and "tcp dport { 80, 443 } accept" in rules

    assert host.ssh("systemctl is-active fail2ban").stdout.strip() == "active"
    assert "sshd" in host.ssh("fail2ban-client status").stdout
    assert host.ssh("systemctl is-enabled nftables").stdout.strip() == "enabled"
    assert host.ssh("test -f /etc/apt/apt.conf.d/20auto-upgrades && echo yes").stdout.strip() == "yes"
    assert "v2." in host.ssh("docker compose version").stdout

    d.build.wait()
    start = time.monotonic()
    names = images.preset_images("core")
    images.load_images(host, names)
    timed("images loaded onto target", time.monotonic() - start)
    assert "v2.11.7" in host.ssh("docker run --rm caddy:2.11.7 caddy version").stdout

    # Idempotent: a second run of the same script changes nothing and still succeeds.
    again = host.ssh("bash -s", input=unwrap(next(r for r in d.record() if r.name == "main-bootstrap").inputs["stdin"]))
    assert "[mlox-bootstrap] done" in again.stdout


def test_2_core_stack_serves_mlflow_and_s3(deployment):
    import requests

    d = deployment
    start = time.monotonic()
    d.replay()
    rows = d.wait_healthy()
    timed("core stack up", time.monotonic() - start)
    for service in LONG_RUNNING:
        assert rows[service]["Health"] == "healthy", (service, rows.get(service))
    for step in ("postgres-provision", "seaweedfs-buckets"):  # provisioned, then idle
        assert rows[step]["Health"] == "healthy", rows[step]
    published = {s for s, row in rows.items() if row.get("Publishers") and any(p.get("PublishedPort") for p in row["Publishers"])}
    assert published == {"caddy"}
    env = d.host.ssh("stat -c '%a %U' /opt/mlox/secrets/mlflow.env /opt/mlox/secrets/caddy.env").stdout.split("\n")
    assert [line for line in env if line] == ["600 root", "600 root"]

    ca = d.fetch_ca()
    mlflow_url = d.outputs["mlflow_tracking_uri"]
    assert requests.get(mlflow_url + "/", verify=str(ca), timeout=10).status_code == 401
    assert requests.get(mlflow_url + "/api/2.0/mlflow/experiments/search?max_results=1", verify=str(ca),
                        auth=("admin", "wrong"), timeout=10).status_code == 401
    assert requests.get(d.outputs["s3_endpoint"] + "/mlflow-artifacts", verify=str(ca), timeout=10).status_code == 403

    # The real MLflow client, through the proxy, with the generated credentials only.
    script = ROOT / "tests" / "e2e" / "mlflow_client.py"
    marker = uuid.uuid4().hex[:8]
    result = subprocess.run([sys.executable, str(script), "log", marker], env={**os.environ, **d.mlflow_env()},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = json.loads(result.stdout.strip().splitlines()[-1])
    assert logged["version"] == "1"
    d.logged = logged

    keys = [o["Key"] for o in d.s3().list_objects_v2(Bucket="mlflow-artifacts").get("Contents", [])]
    assert any(k.endswith(f"artifacts/notes-{marker}.txt") for k in keys), keys
    body = d.s3().get_object(Bucket="mlflow-artifacts", Key=next(k for k in keys if k.endswith(f"notes-{marker}.txt")))
    assert body["Body"].read().decode() == f"artifact {marker}\n"
    assert "data" in [b["Name"] for b in d.s3().list_buckets()["Buckets"]]


def _mlox(d, *args, env=None):
    """The mlox-iac CLI, reading this deployment's outputs (secrets in clear) from a file."""
    outputs = d.work / "outputs.json"
    outputs.write_text(json.dumps(d.outputs))
    outputs.chmod(0o600)
    # Each test host is new with fresh host keys at a reused address: a known_hosts of its own.
    ssh_opts = f"-o UserKnownHostsFile={d.work / 'known_hosts'} -o StrictHostKeyChecking=accept-new"
    return subprocess.run([sys.executable, "-m", "mlox_iac.cli.main", *args, "--outputs-file", str(outputs)],
                          capture_output=True, text=True, timeout=120, cwd=d.work,
                          env={**os.environ, "MLOX_SSH_OPTS": ssh_opts, "HOME": str(d.work), **(env or {})})


def test_2b_status_and_env_against_the_real_host(deployment):
    d = deployment
    # status fetches the internal CA over SSH itself, then probes every route through the proxy.
    status = _mlox(d, "status", "--json", "--identity", str(d.host.key_path))
    assert status.returncode == 0, status.stdout + status.stderr
    probes = {p["name"]: p for p in json.loads(status.stdout)}
    assert set(probes) == {"mlflow", "s3"} and all(p["up"] for p in probes.values()), probes
    assert probes["mlflow"]["cert_expires_in_s"] > 3600

    # env: user code configured only by the printed exports reaches MLflow and S3.
    exports = _mlox(d, "env", "--show-secrets", "--ca", str(d.ca_path))
    assert exports.returncode == 0, exports.stderr
    check = ("import boto3, mlflow; print(len(mlflow.search_experiments()) > 0); "
             "print('mlflow-artifacts' in [b['Name'] for b in boto3.client('s3').list_buckets()['Buckets']])")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    user_code = subprocess.run(["sh", "-c", f'eval "$1" && exec {sys.executable} -c "$2"', "sh", exports.stdout, check],
                               capture_output=True, text=True, timeout=120, env=clean)
    assert user_code.returncode == 0, user_code.stderr[-2000:]
    assert user_code.stdout.split() == ["True", "True"]
    masked = _mlox(d, "env", "--ca", str(d.ca_path))
    assert d.outputs["ui_passwords"]["mlflow"] not in masked.stdout

    # A service that is down makes status fail.
    d.host.ssh(f"{COMPOSE} stop mlflow")
    try:
        down = _mlox(d, "status", "--json", "--ca", str(d.ca_path))
        assert down.returncode == 1
        assert {p["name"]: p["up"] for p in json.loads(down.stdout)} == {"mlflow": False, "s3": True}
    finally:
        d.host.ssh(f"{COMPOSE} start mlflow")
    rows = d.wait_healthy()
    assert rows["mlflow"]["Health"] == "healthy"


def test_3_unchanged_redeploy_restarts_nothing(deployment):
    d = deployment
    before = d.started_at()
    result = d.replay()
    assert result.changed() == []
    assert set(result.actions().values()) == {"unchanged"}
    assert d.started_at() == before


def test_3b_a_changed_secret_reapplies_only_its_service(deployment):
    import requests

    d = deployment
    old_password = d.outputs["ui_passwords"]["mlflow"]
    before = d.started_at()
    del d.passwords.values["caddy-ui-mlflow"]  # as `pulumi up --replace` of that RandomPassword would
    result = d.replay()
    assert [step.name for step in result.changed()] == ["caddy-env"]
    after = d.started_at()
    assert {name for name in before if before[name] != after[name]} == {"/mlox-caddy-1"}
    d.wait_healthy()
    url = d.outputs["mlflow_tracking_uri"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    new_password = d.outputs["ui_passwords"]["mlflow"]
    assert new_password != old_password
    assert requests.get(url, auth=("admin", old_password), verify=str(d.ca_path), timeout=10).status_code == 401
    assert requests.get(url, auth=("admin", new_password), verify=str(d.ca_path), timeout=10).status_code == 200


def test_3c_a_rotated_database_password_reaches_postgres_before_mlflow(deployment):
    import requests

    d = deployment
    before = d.started_at()
    del d.passwords.values["postgres-db-mlflow"]
    result = d.replay()
    assert sorted(step.name for step in result.changed()) == ["mlflow-env", "postgres-env"]
    after = d.started_at()
    restarted = {name for name in before if before[name] != after[name]}
    assert restarted == {"/mlox-postgres-1", "/mlox-postgres-provision-1", "/mlox-mlflow-1"}
    d.wait_healthy()
    url = d.outputs["mlflow_tracking_uri"] + "/api/2.0/mlflow/experiments/get-by-name"
    answer = requests.get(url, params={"experiment_name": d.logged["experiment"]}, verify=str(d.ca_path), timeout=20,
                          auth=(d.outputs["ui_user"], d.outputs["ui_passwords"]["mlflow"]))
    assert answer.status_code == 200, answer.text[:500]


def test_4_reboot_brings_everything_back_with_data(deployment):
    d = deployment
    start = time.monotonic()
    d.host.reboot()
    rows = d.wait_healthy(timeout=300)
    timed("reboot to healthy", time.monotonic() - start)
    for service in LONG_RUNNING:
        assert rows[service]["Health"] == "healthy", (service, rows.get(service))
    assert d.host.ssh("systemctl is-active nftables fail2ban docker").stdout.split() == ["active"] * 3
    assert d.host.ssh("findmnt -n -o TARGET /mnt/mlox-data || echo rootdisk").returncode == 0
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "e2e" / "mlflow_client.py"), "check",
                             d.logged["run_id"], d.logged["marker"]],
                            env={**os.environ, **d.mlflow_env()}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_5_failing_step_reports_stderr_and_rerun_converges(deployment, monkeypatch):
    from mlox_iac.components.services import mlflow

    d = deployment
    # A registry on the target's own loopback: the pull fails at once and sends nothing out.
    monkeypatch.setattr(mlflow, "IMAGE", "127.0.0.1:9/mlflow/mlflow:v0.0.0-does-not-exist")
    with pytest.raises(ReplayError) as failure:
        d.replay()
    message = str(failure.value)
    assert "main-bundle-compose-up" in message
    assert "Process exited with status" in message
    assert "Error response from daemon" in message and "127.0.0.1:9" in message  # the command's stderr
    monkeypatch.setattr(mlflow, "IMAGE", "ghcr.io/mlflow/mlflow:v3.17.2-full")
    d.replay()
    rows = d.wait_healthy()
    for service in LONG_RUNNING:
        assert rows[service]["Health"] == "healthy", (service, rows.get(service))
    assert d.replay().changed() == []


def test_6_removing_a_service_brings_its_containers_down_and_keeps_data(deployment):
    d = deployment
    d.raw["services"] = {"mlflow": {"enabled": False}}
    result = d.replay()
    assert result.action("mlflow-env") == "deleted"
    rows = d.wait_healthy_services(("postgres", "seaweedfs", "caddy"))
    assert "mlflow" not in rows
    assert d.host.ssh("test -e /opt/mlox/secrets/mlflow.env && echo present || echo gone").stdout.strip() == "gone"
    databases = d.host.ssh(f"{COMPOSE} exec -T postgres psql -U postgres -Atc 'select datname from pg_database'").stdout
    assert "mlflow" in databases.split()  # the data stays: only containers went
