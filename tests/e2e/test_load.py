"""End to end: the core stack under the work a team gives it, on its own target host.

Large objects (a 1 GiB object with boto3's default multipart transfer, a 500 MiB MLflow
artifact through the tracking server's artifact proxy, 1.5 GiB more from 4 clients at once)
and 16 concurrent users for 60 s mixing MLflow logging with S3 put/get of 1-16 MiB objects,
all from this machine through Caddy with the real clients (tests/e2e/loadgen.py, run as a
separate process configured only by what `mlox-iac env` exports).

After every phase: no container was OOM-killed or restarted, and the object store's
anonymous memory (what the kernel cannot reclaim, unlike the page cache of the files it
writes) stays under the Go memory limit the service file derives from its compose limit,
however much data has been written. The tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlox_iac.components.services import seaweedfs

try:
    from .stack import ROOT, deployment_on_host
except ImportError:  # pragma: no cover
    from stack import ROOT, deployment_on_host  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

MiB = 1 << 20
# The object store's non-reclaimable memory must stay below the runtime's soft limit.
MEMORY_BOUND_MIB = seaweedfs.GO_MEMORY_LIMIT_MB


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    with deployment_on_host(tmp_path_factory.mktemp("load"), prefix="mlxobj", first_index=31) as d:
        d.memory_log = []
        d.written = 0
        yield d


def user_env(d) -> dict[str, str]:
    """This process's environment without MLflow/AWS settings, plus what `mlox-iac env` exports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    return {**env, **d.client_env()}


def loadgen(d, *args: str, timeout: float = 1200) -> dict:
    """Run tests/e2e/loadgen.py against the stack as user code would; its JSON report."""
    result = subprocess.run([sys.executable, "-m", "tests.e2e.loadgen", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, env=user_env(d))
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def seaweedfs_memory(d) -> dict[str, int]:
    """The SeaweedFS container's memory in MiB from its cgroup (v1 or v2): anonymous memory,
    page cache, and what `docker stats` shows (usage minus inactive page cache)."""
    name = d.containers()["seaweedfs"]["name"]
    script = ("if [ -f /sys/fs/cgroup/memory.current ]; then cat /sys/fs/cgroup/memory.current /sys/fs/cgroup/memory.stat; "
              "else cat /sys/fs/cgroup/memory/memory.usage_in_bytes /sys/fs/cgroup/memory/memory.stat; fi")
    lines = d.host.ssh(["docker", "exec", name, "sh", "-c", script]).stdout.split("\n")
    usage = int(lines[0])
    stat = dict(line.split() for line in lines[1:] if line.strip())
    anon = int(stat.get("anon", stat.get("rss", 0)))
    cache = int(stat.get("file", stat.get("cache", 0)))
    inactive = int(stat.get("inactive_file", stat.get("total_inactive_file", 0)))
    return {"anon": anon // MiB, "page_cache": cache // MiB, "docker_stats": (usage - inactive) // MiB}


def checkpoint(d, phase: str) -> None:
    """Print the object store's memory; fail on any OOM kill or restart, or memory over the bound."""
    memory = seaweedfs_memory(d)
    d.memory_log.append((phase, d.written // MiB, memory))
    print(f"[load] seaweedfs after {phase} ({d.written / (1 << 30):.2f} GiB written): {memory} MiB "
          f"(bound for anon: {MEMORY_BOUND_MIB} MiB)", file=sys.stderr)
    now = d.containers()
    for service, row in now.items():
        assert not row["oom_killed"], f"{service} was OOM-killed during {phase}"
        assert row["restarts"] == d.baseline[service]["restarts"], f"{service} restarted during {phase}"
    assert set(now) == set(d.baseline), (sorted(now), sorted(d.baseline))
    assert memory["anon"] <= MEMORY_BOUND_MIB, f"seaweedfs holds {memory['anon']} MiB after {phase}"


def test_1_stack_up(deployment):
    d = deployment
    rows = d.bring_up()
    for service in ("postgres", "seaweedfs", "mlflow", "caddy"):
        assert rows[service]["Health"] == "healthy", (service, rows.get(service))
    d.baseline = d.containers()
    checkpoint(d, "deploy")


def transferred(d, report: dict, mib: int, what: str) -> None:
    """A round trip came back whole and equal; count what it wrote, then check the containers."""
    d.written += report["size"]
    print(f"[load] {what}: up {report['up_MBps']:.1f} MiB/s, down {report['down_MBps']:.1f} MiB/s", file=sys.stderr)
    assert report["got_size"] == mib * MiB
    assert report["got_sha256"] == report["sent_sha256"]
    checkpoint(d, what)


def test_2_one_gib_object_round_trip_with_boto3_defaults(deployment):
    transferred(deployment, loadgen(deployment, "roundtrip", "--mib", "1024", "--key", "big/one-gib.bin"), 1024,
                "1 GiB object")


def test_3_500_mib_artifact_through_mlflow(deployment):
    transferred(deployment, loadgen(deployment, "artifact", "--mib", "500"), 500, "500 MiB artifact")


def test_4_sixteen_concurrent_users_for_a_minute(deployment):
    d = deployment
    report = loadgen(d, "users", "--clients", "16", "--seconds", "60")
    d.written += int(report["s3_MBps"] * report["seconds"] * MiB / 2)
    print(f"[load] 16 users: {json.dumps({k: v for k, v in report.items() if k != 'by_kind'})}", file=sys.stderr)
    for kind, row in report["by_kind"].items():
        print(f"[load]   {kind}: {row}", file=sys.stderr)
    assert report["failures"] == []
    kinds = set(report["by_kind"])
    assert {"s3 put_object", "s3 get_object", "mlflow log_batch", "mlflow log_artifact"} <= kinds, kinds
    checkpoint(d, "16 concurrent users")


def test_5_more_data_from_parallel_clients_keeps_memory_flat(deployment):
    d = deployment
    procs = []
    for i in range(4):  # 4 clients x 10 transfer threads each, at once
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.e2e.loadgen", "roundtrip", "--mib", "384",
                                       "--key", f"parallel/{i}.bin"], cwd=ROOT, env=user_env(d),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err[-4000:]
        transferred(d, json.loads(out.strip().splitlines()[-1]), 384, f"parallel client {i + 1} of 4 (384 MiB)")
    assert d.written >= 3 * (1 << 30), d.written
    first, last = d.memory_log[0], d.memory_log[-1]
    print(f"[load] seaweedfs memory before: {first[2]} MiB; after {last[1] / 1024:.2f} GiB written: {last[2]} MiB",
          file=sys.stderr)
    assert max(m["anon"] for _, _, m in d.memory_log) <= MEMORY_BOUND_MIB
