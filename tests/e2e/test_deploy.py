"""End to end: the core stack on a real Debian host, deployed by the real Pulumi engine.

Engine: the Pulumi CLI built by scripts/build-pulumi with the plugins of
../shared/pulumi-plugins, driven through ``mlox_iac.automation`` and the ``mlox-iac`` CLI
in a throwaway project (local file backend, passphrase-encrypted secrets). One
systemd-nspawn target host is created. The tests run in file order and build on each
other: bootstrap (a targeted update, then the stand-in images are loaded), the core stack
with ``mlox-iac up``, the commands a user runs next with an empty ``~/.ssh``, idempotent
redeploys (mlox-iac and plain ``pulumi up``), one changed setting, rotated passwords,
secrets kept out of the state, drift, an interrupted and a failing update, CI's
``python -m mlox_iac.ci``, reboot, destroy with the data kept, and a new ``up`` (new
secrets) that finds the data again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from mlox_iac.plan import record_program, unwrap
from testca import root_ca

try:
    from . import hosts, images
    from .stack import COMPOSE, LONG_RUNNING, ROOT, deployment_on_host, timed
except ImportError:  # pragma: no cover
    import hosts  # type: ignore[no-redef]
    import images  # type: ignore[no-redef]
    from stack import COMPOSE, LONG_RUNNING, ROOT, deployment_on_host, timed  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with deployment_on_host(tmp_path_factory.mktemp("deploy"), prefix="mlxdep", first_index=11) as d:
        yield d


# Docker Hub mirrors (mlox:docker.registry_mirrors) with a private CA: nothing is pulled on
# these hosts (the images are loaded), so the mirrors need not answer; what is checked is
# what Docker makes of the settings.
MIRROR_CA = root_ca().cert_pem
MIRRORS = ["https://mirror-a.mlox.test:5000"]


def _docker_mirrors(d) -> list[str]:
    out = d.host.ssh("docker info --format '{{json .RegistryConfig.Mirrors}}'").stdout
    return [m.rstrip("/") for m in json.loads(out) or []]


def test_1_bootstrap_hardens_a_bare_host(deployment):
    d = deployment
    d.raw["docker"].update(registry_mirrors=MIRRORS, registry_ca=MIRROR_CA)
    start = time.monotonic()
    result = d.up(bootstrap_only=True)
    assert result.action("main-bootstrap") == "created"
    assert result.action("main-host-keys") == "created"
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
    assert _docker_mirrors(d) == MIRRORS
    assert host.ssh("cat /etc/docker/certs.d/mirror-a.mlox.test:5000/ca.crt").stdout.strip() == MIRROR_CA.strip()

    d.build.wait()
    start = time.monotonic()
    names = images.preset_images("core")
    images.load_images(host, names)
    timed("images loaded onto target", time.monotonic() - start)
    assert "v2.11.7" in host.ssh("docker run --rm caddy:2.11.7 caddy version").stdout

    # The host keys the engine recorded are the server's own.
    real = sorted(" ".join(line.split()[:2]) for line in host.ssh("cat /etc/ssh/ssh_host_*_key.pub").stdout.splitlines())
    assert sorted(d.outputs["ssh_host_keys"]) == real and len(real) >= 2

    # Idempotent: a second run of the same script changes nothing and still succeeds.
    resources, _ = record_program(d.raw, {"onprem.private_key"}, "e2e")
    script = unwrap(next(r for r in resources if r.name == "main-bootstrap").inputs["stdin"])
    again = host.ssh("bash -s", input=script)
    assert "[mlox-bootstrap] done" in again.stdout


def _ok(run: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "Traceback" not in run.stderr, run.stderr[-4000:]
    return run


def test_2_mlox_iac_up_brings_the_core_stack_up(deployment):
    import requests

    d = deployment
    start = time.monotonic()
    done = _ok(d.mlox("up", "--stack", d.stack, "--yes", "--json"))
    deployed = json.loads(done.stdout)
    assert deployed["changes"].get("create", 0) >= 10, deployed["changes"]
    assert "ui_passwords" in deployed["secret_outputs"] and deployed["outputs"]["ui_passwords"] == "[secret]"
    d.read_outputs()
    rows = d.wait_healthy()
    timed("core stack up (mlox-iac up)", time.monotonic() - start)
    for service in LONG_RUNNING:
        assert rows[service]["Health"] == "healthy", (service, rows.get(service))
    for step in ("postgres-provision", "seaweedfs-buckets"):  # provisioned, then idle
        assert rows[step]["Health"] == "healthy", rows[step]
    def published(loopback: bool) -> set[str]:
        return {s for s, row in rows.items() for p in row.get("Publishers") or []
                if p.get("PublishedPort") and (p.get("URL") == "127.0.0.1") == loopback}

    assert published(loopback=False) == {"caddy"}
    assert published(loopback=True) == {"postgres"}  # the end of mlox-client's SSH tunnel, nothing more
    env = d.host.ssh("stat -c '%a %U' /opt/mlox/secrets/mlflow.env /opt/mlox/secrets/caddy.env").stdout.split("\n")
    assert [line for line in env if line] == ["600 root", "600 root"]

    ca = d.fetch_ca()
    mlflow_url = d.outputs["mlflow_tracking_uri"]
    assert requests.get(mlflow_url + "/", verify=str(ca), timeout=10).status_code == 401
    assert requests.get(mlflow_url + "/api/2.0/mlflow/experiments/search?max_results=1", verify=str(ca),
                        auth=("admin", "wrong"), timeout=10).status_code == 401
    assert requests.get(d.outputs["s3_endpoint"] + "/mlflow-artifacts", verify=str(ca), timeout=10).status_code == 403


def test_2b_a_user_connects_with_mlox_iac_env_status_logs_and_ssh(deployment):
    """What a user runs right after `up`, from a home with an empty ~/.ssh: the server's host
    key comes from the stack (recorded at its bootstrap), never from a prompt."""
    d = deployment
    home_ssh = d.work / "home" / ".ssh"
    status = _ok(d.mlox("status", "--stack", d.stack, "--json"))
    probes = {p["name"]: p for p in json.loads(status.stdout)}
    assert set(probes) == {"mlflow", "s3", "home"} and all(p["up"] for p in probes.values()), probes
    assert probes["mlflow"]["cert_expires_in_s"] > 3600
    assert list(home_ssh.iterdir()) == []  # nothing written to the user's known_hosts
    known = (d.project / ".mlox" / "known_hosts" / f"{d.host.address}_22").read_text()
    assert all(key in known for key in d.outputs["ssh_host_keys"])

    # env: user code configured only by the printed exports logs a run with a model and an
    # artifact (the real MLflow client) and finds the bucket (boto3).
    exports = _ok(d.mlox("env", "--stack", d.stack, "--show-secrets"))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "REQUESTS_"))}
    marker = uuid.uuid4().hex[:8]
    script = ROOT / "tests" / "e2e" / "mlflow_client.py"
    logged = _ok(subprocess.run(["sh", "-c", 'eval "$1" && exec "$2" "$3" log "$4"', "sh", exports.stdout,
                                 sys.executable, str(script), marker], capture_output=True, text=True, timeout=300,
                                env=clean))
    d.logged = json.loads(logged.stdout.strip().splitlines()[-1])
    assert d.logged["version"] == "1"
    check = ("import boto3; s3 = boto3.client('s3'); "
             "keys = [o['Key'] for o in s3.list_objects_v2(Bucket='mlflow-artifacts')['Contents']]; "
             f"print(any(k.endswith('notes-{marker}.txt') for k in keys))")
    user_code = _ok(subprocess.run(["sh", "-c", 'eval "$1" && exec "$2" -c "$3"', "sh", exports.stdout,
                                    sys.executable, check], capture_output=True, text=True, timeout=120, env=clean))
    assert user_code.stdout.split() == ["True"]
    masked = _ok(d.mlox("env", "--stack", d.stack))
    assert d.outputs["ui_passwords"]["mlflow"] not in masked.stdout

    logs = _ok(d.mlox("logs", "mlflow", "--stack", d.stack, "--tail", "5"))
    assert logs.stdout.strip()
    shell = _ok(d.mlox("ssh", "--stack", d.stack, "--", "cat", "/etc/hostname"))
    assert shell.stdout.strip()

    # A service that is down makes status fail.
    d.host.ssh(f"{COMPOSE} stop mlflow")
    try:
        down = d.mlox("status", "--stack", d.stack, "--json")
        assert down.returncode == 1
        assert {p["name"]: p["up"] for p in json.loads(down.stdout)} == {"mlflow": False, "s3": True, "home": True}
    finally:
        d.host.ssh(f"{COMPOSE} start mlflow")
    assert d.wait_healthy()["mlflow"]["Health"] == "healthy"


def test_3_unchanged_redeploy_restarts_nothing(deployment):
    d = deployment
    before = d.started_at()
    again = json.loads(_ok(d.mlox("up", "--stack", d.stack, "--yes", "--json")).stdout)
    assert set(again["changes"]) == {"same"}, again["changes"]
    preview = json.loads(_ok(d.mlox("preview", "--stack", d.stack, "--json")).stdout)
    assert set(preview["changes"]) == {"same"}, preview["changes"]
    # The Pulumi CLI itself, on the same project and stack.
    with d.environment() as env:
        plain = subprocess.run(["pulumi", "up", "--stack", d.stack, "--yes", "--skip-preview", "--non-interactive"],
                               cwd=d.project, capture_output=True, text=True, timeout=300,
                               env={**os.environ, **env, "PULUMI_BACKEND_URL": f"file://{d.project / '.mlox' / 'state'}"})
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
    assert f"{again['changes']['same']} unchanged" in plain.stdout, plain.stdout[-2000:]
    assert d.started_at() == before


def test_3a_a_changed_setting_updates_that_service_alone(deployment):
    d = deployment
    before = d.started_at()
    d.raw["services"] = {"mlflow": {"workers": 3}}
    result = d.up()
    assert {s.name for s in result.changed()} <= {"main-bundle-copy", "main-bundle-prepare", "main-bundle-compose-up"}
    after = d.started_at()
    assert {name for name in before if before[name] != after[name]} == {"/mlox-mlflow-1"}
    assert d.wait_healthy()["mlflow"]["Health"] == "healthy"
    assert "--workers 3" in d.host.ssh(f"{COMPOSE} config mlflow").stdout or \
        "3" in d.host.ssh("docker inspect --format '{{json .Config.Cmd}}' mlox-mlflow-1").stdout


def test_3b_a_replaced_password_rotates_and_reapplies_only_its_service(deployment):
    import requests

    d = deployment
    old_password = d.outputs["ui_passwords"]["mlflow"]
    before = d.started_at()
    result = d.up(replace=["caddy-ui-mlflow"])  # pulumi up --replace
    assert result.action("caddy-ui-mlflow") == "replaced"
    assert [s.name for s in result.changed()] == ["caddy-env", "caddy-ui-mlflow"]
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
    rotated = _ok(d.mlox("up", "--stack", d.stack, "--yes", "--json", "--replace", "postgres-db-mlflow"))
    assert json.loads(rotated.stdout)["changes"].get("replace") == 1
    d.read_outputs()
    after = d.started_at()
    restarted = {name for name in before if before[name] != after[name]}
    assert restarted == {"/mlox-postgres-1", "/mlox-postgres-provision-1", "/mlox-mlflow-1"}
    d.wait_healthy()
    url = d.outputs["mlflow_tracking_uri"] + "/api/2.0/mlflow/experiments/get-by-name"
    answer = requests.get(url, params={"experiment_name": d.logged["experiment"]}, verify=str(d.ca_path), timeout=20,
                          auth=(d.outputs["ui_user"], d.outputs["ui_passwords"]["mlflow"]))
    assert answer.status_code == 200, answer.text[:500]


def test_3d_no_generated_secret_is_in_the_state_in_clear(deployment):
    """`pulumi stack export` and every file of the backend hold each generated password, key
    and the private SSH key only encrypted."""
    d = deployment
    with d.environment() as env:
        run_env = {**os.environ, **env, "PULUMI_BACKEND_URL": f"file://{d.project / '.mlox' / 'state'}"}
        clear = subprocess.run(["pulumi", "stack", "export", "--stack", d.stack, "--show-secrets"], cwd=d.project,
                               capture_output=True, text=True, timeout=120, env=run_env, check=True).stdout
        export = subprocess.run(["pulumi", "stack", "export", "--stack", d.stack], cwd=d.project,
                                capture_output=True, text=True, timeout=120, env=run_env, check=True).stdout
    def plain(value):
        # A secret in an export with --show-secrets: {<secret signature>: ..., "plaintext": "<JSON>"}.
        return json.loads(value["plaintext"]) if isinstance(value, dict) and "plaintext" in value else value

    generated = set()
    for resource in json.loads(clear)["deployment"]["resources"]:
        outputs = resource.get("outputs") or {}
        for key in ("result", "bcryptHash", "privateKeyOpenssh", "privateKeyPem"):
            value = plain(outputs.get(key))
            if isinstance(value, str) and len(value) >= 8:
                generated.add(value)
    assert len(generated) >= 12, len(generated)  # 6+ passwords, each with its bcrypt hash
    key_lines = [line for line in d.host.private_key.splitlines() if line and "PRIVATE KEY" not in line]
    files = [p for p in (d.project / ".mlox").rglob("*") if p.is_file()] + [d.stack_file()]
    for text, where in [(export, "pulumi stack export")] + [(p.read_text(errors="replace"), str(p)) for p in files]:
        for value in generated | set(key_lines):
            assert value not in text, f"a generated secret in clear in {where}"


def test_3e_refresh_reports_a_container_removed_by_hand_and_up_repairs_it(deployment):
    d = deployment
    d.host.ssh("docker rm -f mlox-mlflow-1")
    refreshed = _ok(d.mlox("refresh", "--stack", d.stack, "--yes", "--json"))
    assert json.loads(refreshed.stdout)["drift"] == ["mlflow: no container (removed by hand?)"], refreshed.stderr[-2000:]
    assert "drift: mlflow: no container" in refreshed.stderr
    repaired = _ok(d.mlox("up", "--stack", d.stack, "--yes"))
    assert "repairing the drift mlox-iac refresh found: mlflow" in repaired.stderr
    assert d.wait_healthy()["mlflow"]["Health"] == "healthy"
    after = json.loads(_ok(d.mlox("refresh", "--stack", d.stack, "--yes", "--json")).stdout)
    assert after["drift"] == []


def test_3f_a_changed_mirror_reloads_docker_and_restarts_no_container(deployment):
    d = deployment
    before = d.started_at()
    d.raw["docker"]["registry_mirrors"] = ["https://mirror-b.mlox.test", *MIRRORS]
    result = d.up()
    assert [step.name for step in result.changed()] == ["main-bootstrap"], result.actions()
    assert _docker_mirrors(d) == ["https://mirror-b.mlox.test", *MIRRORS]
    assert d.host.ssh("test -f /etc/docker/certs.d/mirror-b.mlox.test/ca.crt && echo yes").stdout.strip() == "yes"
    assert d.started_at() == before  # reloaded, not restarted
    assert d.wait_healthy()["mlflow"]["Health"] == "healthy"


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


def test_5_a_failing_step_says_why_and_the_rerun_converges(deployment):
    """Docker is down on the server when a changed setting is applied: `mlox-iac up` fails
    naming the step and the command's error; with Docker back, the next `up` completes."""
    d = deployment
    d.host.ssh("systemctl stop docker.socket docker")
    try:
        d.raw["services"] = {"mlflow": {"workers": 2}}
        d.write_stack_file()
        failed = d.mlox("up", "--stack", d.stack, "--yes")
    finally:
        d.host.ssh("systemctl start docker")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    text = failed.stdout + failed.stderr
    assert "main-bundle-compose-up" in text, text[-3000:]
    assert "docker" in text.lower() and ("Cannot connect to the Docker daemon" in text or "docker.sock" in text), text[-3000:]
    _ok(d.mlox("up", "--stack", d.stack, "--yes"))
    rows = d.wait_healthy()
    for service in LONG_RUNNING:
        assert rows[service]["Health"] == "healthy", (service, rows.get(service))
    assert d.up().changed() == []


def test_5b_an_interrupted_up_is_completed_by_the_next(deployment):
    """Ctrl-C while the engine updates: the engine finishes the steps under way and stops;
    the next `mlox-iac up` completes the update (or says in one line what to run)."""
    d = deployment
    d.raw["services"] = {"mlflow": {"workers": 3}}
    d.write_stack_file()
    with d.environment() as env:
        run_env = {**os.environ, **env, "HOME": str(d.work / "home"), "MLOX_SSH_IDENTITY": str(d.host.key_path)}
    proc = subprocess.Popen([sys.executable, "-m", "mlox_iac.cli.main", "up", "--stack", d.stack, "--yes"],
                            cwd=d.project, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if "main-bundle-copy" in line or "main-bundle-prepare" in line:
            os.killpg(proc.pid, signal.SIGINT)  # the terminal sends Ctrl-C to the whole group
            break
    rest = proc.communicate(timeout=300)[0]
    text = "".join(seen) + (rest or "")
    assert proc.returncode != 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    resumed = d.mlox("up", "--stack", d.stack, "--yes")
    if resumed.returncode != 0:  # the one line must say what to run; then that must work
        lines = [line for line in resumed.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "pulumi" in lines[0], resumed.stderr[-3000:]
        pytest.fail(f"the next up did not complete: {lines[0]}")
    rows = d.wait_healthy()
    assert rows["mlflow"]["Health"] == "healthy"
    assert d.up().changed() == []


def test_5c_ci_deploys_with_python_m_mlox_iac_ci(deployment):
    """The design's third use: CI's validate -> plan -> preview -> up, with the real engine."""
    d = deployment
    d.raw["services"] = {"mlflow": {"workers": 2}}
    d.write_stack_file()
    with d.environment() as env:
        run_env = {**os.environ, **env, "HOME": str(d.work / "home"), "CI": "true"}
        refused = subprocess.run([sys.executable, "-m", "mlox_iac.ci", "--stack", d.stack], cwd=d.project,
                                 capture_output=True, text=True, timeout=600, env=run_env)
        # On CI a state in the checkout is lost after the job: refused unless asked for.
        assert refused.returncode == 1 and refused.stderr.startswith(
            "error: on CI the default state backend (.mlox/state in the checkout) is lost after the job"), refused.stderr
        ci = subprocess.run([sys.executable, "-m", "mlox_iac.ci", "--stack", d.stack, "--local-state"], cwd=d.project,
                            capture_output=True, text=True, timeout=600, env=run_env)
    assert ci.returncode == 0, (ci.stdout + ci.stderr)[-4000:]
    assert "Traceback" not in ci.stderr
    for step in ("validate", "plan", "preview", "up"):
        assert step in ci.stdout + ci.stderr, step
    assert d.up().changed() == []
    assert d.wait_healthy()["mlflow"]["Health"] == "healthy"


def test_6_removing_a_service_brings_its_containers_down_and_keeps_data(deployment):
    d = deployment
    d.raw["services"] = {"mlflow": {"enabled": False}}
    result = d.up()
    assert result.action("mlflow-env") == "deleted"
    rows = d.wait_healthy_services(("postgres", "seaweedfs", "caddy"))
    assert "mlflow" not in rows
    assert d.host.ssh("test -e /opt/mlox/secrets/mlflow.env && echo present || echo gone").stdout.strip() == "gone"
    databases = d.host.ssh(f"{COMPOSE} exec -T postgres psql -U postgres -Atc 'select datname from pg_database'").stdout
    assert "mlflow" in databases.split()  # the data stays: only containers went


def test_7_destroy_keeps_the_data_and_a_new_up_with_new_secrets_finds_it(deployment):
    """`mlox-iac destroy` with keep_data_on_destroy (the default): no container is left, the
    data volumes stay. A new `up` of the stack generates every secret anew (the random
    resources went with the destroy) and finds the data again: Postgres' kept cluster takes
    the new superuser and database passwords (set over its Unix socket), SeaweedFS the new
    S3 keys, and the MLflow run and its artifact logged in test_2b are readable through the
    clients configured only by `mlox-iac env`."""
    d = deployment
    d.raw["services"] = {}
    d.write_stack_file()
    _ok(d.mlox("up", "--stack", d.stack, "--yes", "--json"))  # MLflow again (test_6 removed it)
    d.read_outputs()
    d.wait_healthy()
    old = {"superuser": _postgres_superuser_password(d), "s3": d.outputs["s3_secret_key"],
           "mlflow": d.outputs["ui_passwords"]["mlflow"]}
    destroyed = _ok(d.mlox("destroy", "--stack", d.stack, "--yes", "--json"))
    assert json.loads(destroyed.stdout)["changes"].get("delete", 0) >= 10
    assert d.host.ssh("docker ps -aq --filter label=com.docker.compose.project=mlox | wc -l").stdout.strip() == "0"
    assert d.host.ssh("test -f /mnt/mlox-data/volumes/postgres-data/PG_VERSION && echo kept").stdout.strip() == "kept"
    kept = d.host.ssh("find /mnt/mlox-data/volumes/seaweedfs-data -type f | wc -l").stdout.strip()
    assert int(kept) > 0, kept

    start = time.monotonic()
    again = json.loads(_ok(d.mlox("up", "--stack", d.stack, "--yes", "--json", timeout=1500)).stdout)
    assert again["changes"].get("create", 0) >= 10, again["changes"]
    d.read_outputs()
    rows = d.wait_healthy()
    timed("a new up on the kept data", time.monotonic() - start)
    for service in LONG_RUNNING:
        assert rows[service]["Health"] == "healthy", (service, rows.get(service))
    new = {"superuser": _postgres_superuser_password(d), "s3": d.outputs["s3_secret_key"],
           "mlflow": d.outputs["ui_passwords"]["mlflow"]}
    assert all(new[k] != old[k] for k in old), "a new up after destroy generates every secret anew"
    # The superuser's new password works over TCP (scram-sha-256), as the services' do.
    login = d.host.ssh(f"{COMPOSE} exec -T postgres sh -c "
                       "'PGPASSWORD=\"$POSTGRES_PASSWORD\" psql -h postgres -U postgres -d postgres -Atc \"select 1\"'")
    assert login.stdout.strip() == "1", login.stdout + login.stderr

    exports = _ok(d.mlox("env", "--stack", d.stack, "--show-secrets"))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "REQUESTS_"))}
    script = ROOT / "tests" / "e2e" / "mlflow_client.py"
    found = _ok(subprocess.run(["sh", "-c", 'eval "$1" && exec "$2" "$3" check "$4" "$5"', "sh", exports.stdout,
                                sys.executable, str(script), d.logged["run_id"], d.logged["marker"]],
                               capture_output=True, text=True, timeout=300, env=clean))
    assert found.stdout.strip().splitlines()[-1] == "ok"
    marker = d.logged["marker"]
    read = ("import boto3; s3 = boto3.client('s3'); "
            "key = next(o['Key'] for o in s3.list_objects_v2(Bucket='mlflow-artifacts')['Contents'] "
            f"if o['Key'].endswith('notes-{marker}.txt')); "
            "print(s3.get_object(Bucket='mlflow-artifacts', Key=key)['Body'].read().decode(), end='')")
    user_code = _ok(subprocess.run(["sh", "-c", 'eval "$1" && exec "$2" -c "$3"', "sh", exports.stdout,
                                    sys.executable, read], capture_output=True, text=True, timeout=120, env=clean))
    assert user_code.stdout == f"artifact {marker}\n"


def _postgres_superuser_password(d) -> str:
    """The superuser password the running postgres container was given (its env file's)."""
    return d.host.ssh(f"{COMPOSE} exec -T postgres printenv POSTGRES_PASSWORD").stdout.strip()
