"""End to end: ``mlox-iac sandbox`` on this machine, as a user runs it, with the real engine.

Engine: the Pulumi CLI built by scripts/build-pulumi with the plugins of
../shared/pulumi-plugins, driven by ``mlox-iac sandbox`` (this checkout's code, run as
``python -m mlox_iac.cli.main``) in a throwaway project (``Pulumi.yaml``, ``__main__.py``,
the venv), so the repository's ``stacks/`` and ``.mlox/`` are untouched. The sandbox has the
default name (``sandbox``), its own machine name (``mlxsb`` + a hash of the project's path)
and a /24 of 10.79.0.0/16, apart from the other modules' hosts (10.77). No registry answers
here, so the stand-in images are built (cached) and loaded.

The tests build on each other: ``sandbox up`` (core) is healthy and used from this machine
(the MLflow client logs a run with a model and an artifact, boto3 puts and gets an object,
configured only by ``mlox-iac env``); a second ``up`` changes nothing; a machine that stopped
is booted again by ``up`` with nothing changed; ``sandbox down`` leaves no machine, interface,
iptables/nft rule, cgroup, file or state behind; ``sandbox up`` works again after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from .full_stack import SandboxUser
    from .stack import ROOT
except ImportError:  # pragma: no cover
    from full_stack import SandboxUser  # type: ignore[no-redef]
    from stack import ROOT  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e
NAME = "sandbox"


class Sandbox(SandboxUser):
    """The sandbox's user, and what of the sandbox is on this machine."""

    def ssh(self, command: str) -> str:  # type: ignore[override]
        return super().ssh(command).stdout

    def traces(self, machine: str, subnet: str) -> dict[str, list[str]]:
        """Everything of the sandbox on this machine, by kind (empty lists once it is gone)."""
        veth = f"ve-{machine}"
        address = subnet.replace(".0/24", ".2")

        def lines(argv) -> list[str]:
            return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()

        mine = (veth, subnet)
        return {
            "links": [line for line in lines(["ip", "-o", "link", "show"]) if veth in line],
            "iptables": [line for line in lines(["iptables-save"]) if any(m in line for m in mine)],
            "nft": [line for line in lines(["nft", "list", "ruleset"]) if any(m in line for m in mine)],
            "cgroups": [str(d) for d in Path("/sys/fs/cgroup").glob(f"*/mlox-sandbox-{machine}")],
            "processes": [line for line in lines(["pgrep", "-af", "systemd-nspawn"]) if f"--machine={machine}" in line],
            "files": sorted(str(p.relative_to(self.project)) for p in [
                *(self.project / ".mlox").rglob("*"), *(self.project / "stacks").iterdir()]
                if NAME in p.name or p.name.startswith(f"{address}_")),
        }


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root: they boot Debian hosts with systemd-nspawn")
    sb = Sandbox(tmp_path_factory.mktemp("sandbox"))
    repo_stacks = sorted(p.name for p in (ROOT / "stacks").iterdir())
    try:
        yield sb
    finally:
        if (sb.project / ".mlox" / "sandbox" / NAME / "sandbox.json").is_file():
            sb.cli("sandbox", "down", "--yes")
        assert sorted(p.name for p in (ROOT / "stacks").iterdir()) == repo_stacks


def _started_at(sb: Sandbox) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in sb.ssh(
        "docker inspect --format '{{.Name}} {{.State.StartedAt}}' $(docker ps -q)").splitlines())


def test_1_sandbox_up_deploys_the_core_stack_and_it_is_used_from_here(sandbox):
    sb = sandbox
    done = sb.ok("sandbox", "up", "--preset", "core", "--json")
    up = json.loads(done.stdout)
    assert "no container registry answers from here: building the images from tests/standins" in done.stderr
    assert up["changes"].get("create", 0) >= 10, up["changes"]
    assert set(up["urls"]) == {"mlflow", "s3", "home"} and up["ui_user"] == "admin"
    record = sb.record
    assert record["done"] == ["host", "stack", "bootstrap", "images", "deploy"] and record["images"] == "standins"
    assert up["address"] == sb.address and up["network"].startswith(f"{sb.address.rsplit('.', 2)[0]}.")
    machine = record["machine"]
    sb.machine, sb.subnet = machine, up["network"]

    # A sandbox: the stack file says so and points at the machine; key and passphrase are private.
    stack_text = (sb.project / "stacks" / f"Pulumi.{NAME}.yaml").read_text()
    assert stack_text.startswith(f"# Sandbox {NAME}: a local machine made by `mlox-iac sandbox up --name {NAME}`")
    assert f"host: {up['address']}" in stack_text and f"memory_mb: {record['memory_mb']}" in stack_text
    for secret in ("id_ed25519", "passphrase"):
        assert (sb.project / ".mlox" / "sandbox" / NAME / secret).stat().st_mode & 0o777 == 0o600

    # The memory it may use is enforced: the machine's cgroup has the limit, and every container
    # of the stack is inside it.
    cgroup = Path("/sys/fs/cgroup/memory") / f"mlox-sandbox-{machine}"
    assert int((cgroup / "memory.limit_in_bytes").read_text()) == record["memory_mb"] * 1024 * 1024
    containers = sb.ssh("docker ps -q --no-trunc").split()
    assert len(containers) >= 4
    inside = {p.name for p in cgroup.rglob("*") if p.is_dir()}
    assert set(containers) <= inside, (containers, sorted(inside)[:10])

    # The machine outlived the CLI that booted it; status sees it healthy.
    status = json.loads(sb.ok("sandbox", "status", "--json").stdout)
    assert status["healthy"] and status["machine"]["running"], status
    assert {s["name"]: s["up"] for s in status["services"]} == {"mlflow": True, "s3": True, "home": True}

    # From this machine, configured only by `mlox-iac env`: a run with a model and an artifact,
    # an object put and read back (scripts/smoke.py, the quickstart's smoke test).
    exports = sb.ok("env", "--stack", NAME, "--show-secrets").stdout
    assert "REQUESTS_CA_BUNDLE" in exports
    smoke = subprocess.run(["sh", "-c", 'eval "$1" && exec "$2" "$3"', "sh", exports, sys.executable,
                            str(ROOT / "scripts" / "smoke.py")], capture_output=True, text=True, timeout=300,
                           env={k: v for k, v in sb.env.items() if k != "PYTHONPATH"})
    assert smoke.returncode == 0, (smoke.stdout + smoke.stderr)[-4000:]
    report = json.loads(smoke.stdout.strip().splitlines()[-1])
    assert report["mlflow"]["version"] == "1" and report["s3"]["bucket"] == "data"
    assert report["urls"]["mlflow"] == up["urls"]["mlflow"]

    # Other commands treat it as an ordinary stack.
    assert sb.ok("status", "--stack", NAME).returncode == 0
    logs = sb.ok("logs", "mlflow", "--stack", NAME, "--tail", "3", "--identity", up["ssh_key"])
    assert logs.stdout.strip()


def test_2_a_second_up_changes_nothing(sandbox):
    sb = sandbox
    before = _started_at(sb)
    again = json.loads(sb.ok("sandbox", "up", "--json").stdout)
    assert set(again["changes"]) == {"same"}, again["changes"]
    assert _started_at(sb) == before


def test_3_up_boots_a_machine_that_stopped_and_changes_nothing(sandbox):
    sb = sandbox
    boot_id = sb.ssh("cat /proc/sys/kernel/random/boot_id").strip()
    subprocess.run(sb.ssh_argv("systemctl poweroff"), capture_output=True, timeout=60)
    # Docker stops the stack's containers first; at the end of a CI run (the unit tests on
    # every core) the machine took over 120 s to go down (2026-12-07).
    deadline = time.monotonic() + 300
    while sb.traces(sb.machine, sb.subnet)["processes"] and time.monotonic() < deadline:
        time.sleep(1)
    down = sb.cli("sandbox", "status", "--json")
    assert down.returncode == 1 and not json.loads(down.stdout)["machine"]["running"]
    again = json.loads(sb.ok("sandbox", "up", "--json").stdout)
    assert set(again["changes"]) == {"same"}, again["changes"]
    assert sb.ssh("cat /proc/sys/kernel/random/boot_id").strip() != boot_id
    assert json.loads(sb.ok("sandbox", "status", "--json").stdout)["healthy"]


def test_4_down_leaves_nothing_behind(sandbox):
    sb = sandbox
    there = sb.traces(sb.machine, sb.subnet)
    for kind in ("links", "iptables", "nft", "cgroups", "processes", "files"):
        assert there[kind], kind  # the check below would see them
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    done = sb.ok("sandbox", "down", "--yes", "--json")
    assert json.loads(done.stdout)["name"] == NAME
    assert sb.traces(sb.machine, sb.subnet) == {k: [] for k in there}
    assert not (sb.project / ".mlox" / "state" / ".pulumi" / "stacks" / "mlox" / f"{NAME}.json").exists()
    assert not list((sb.project / ".mlox" / "state" / ".pulumi").rglob(f"*{NAME}*"))
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forwarding  # it was on before (Docker's)
    assert sb.cli("sandbox", "status").returncode == 1


def test_5_up_works_again_after_down(sandbox):
    sb = sandbox
    up = json.loads(sb.ok("sandbox", "up", "--json").stdout)
    assert up["changes"].get("create", 0) >= 10 and up["preset"] == "core"
    assert json.loads(sb.ok("sandbox", "status", "--json").stdout)["healthy"]
