"""mlox:docker.registry_mirrors and registry_ca in the bootstrap: Docker's daemon.json, the
mirrors' CA in certs.d, and whether a change reloads or restarts Docker (run in bash)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from testca import root_ca
from mlox_iac.render.bootstrap import BootstrapSettings, docker_daemon, render_bootstrap

CA = root_ca().cert_pem
BASE = (("203.0.113.7/32",), ("ssh-ed25519 AAAA a@b",), "docker", "")

# scenario -> (mirrors, CA, daemon.json's registry-mirrors, certs.d folders given the CA)
CASES = {
    "no_mirror": ((), "", None, []),
    "one_mirror": (("https://mirror.example.com",), "", ["https://mirror.example.com"], []),
    "two_mirrors_in_order": (("https://b.example.com", "https://a.example.com/v2-cache/"), "",
                             ["https://b.example.com", "https://a.example.com/v2-cache/"], []),
    "mirror_with_port_and_private_ca": (("https://Mirror.example.com:5000",), CA, ["https://Mirror.example.com:5000"],
                                        ["/etc/docker/certs.d/mirror.example.com:5000"]),
    "two_mirrors_one_ca": (("https://a.example.com", "https://b.example.com:443"), CA,
                           ["https://a.example.com", "https://b.example.com:443"],
                           ["/etc/docker/certs.d/a.example.com", "/etc/docker/certs.d/b.example.com:443"]),
}


def _daemon_json(script: str) -> dict:
    body = re.search(r"write_if_changed /etc/docker/daemon.json 644 <<'EOF'\n(.*?)EOF\n", script, re.S).group(1)
    return json.loads(body)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bootstrap_writes_the_mirrors_and_their_ca(case):
    mirrors, ca, expected, folders = CASES[case]
    script = render_bootstrap(BootstrapSettings(*BASE, registry_mirrors=mirrors, registry_ca=ca))
    daemon = _daemon_json(script)
    assert daemon.get("registry-mirrors") == expected
    assert daemon["log-driver"] == "local" and "insecure-registries" not in daemon  # TLS stays on
    assert re.findall(r"install -d -m 755 (/etc/docker/\S+)\n", script) == folders
    for folder in folders:
        assert f"write_if_changed {folder}/ca.crt 644 <<'EOF' || true\n{CA.rstrip()}\nEOF\n" in script
    if not ca:
        assert "certs.d" not in script


def test_without_mirrors_daemon_json_is_what_servers_already_have():
    """Byte for byte the file earlier versions wrote: upgrading mlox-iac restarts no Docker."""
    assert docker_daemon() == '{\n  "log-driver": "local",\n  "log-opts": {"max-size": "20m", "max-file": "3"}\n}\n'


def test_bootstrap_with_mirrors_and_ca_passes_shellcheck(tmp_path):
    from test_render import _shellcheck

    script = render_bootstrap(BootstrapSettings(*BASE, registry_mirrors=("https://m.example.com:5000",), registry_ca=CA))
    _shellcheck(script, tmp_path, "bootstrap.sh")


def _run_daemon_step(tmp_path: Path, before: str | None, mirrors: tuple[str, ...], active: bool) -> tuple[list, str]:
    """The bootstrap's daemon.json step, run in bash against a file under tmp_path, with
    systemctl recorded instead of run: (systemctl's actions, the file afterwards)."""
    script = render_bootstrap(BootstrapSettings(*BASE, registry_mirrors=mirrors))
    helper = re.search(r"^write_if_changed\(\) \{\n.*?^\}\n", script, re.S | re.M).group(0)
    step = re.search(r"^daemon_before=.*?^fi\n", script, re.S | re.M).group(0)
    daemon = tmp_path / "daemon.json"
    if before is not None:
        daemon.write_text(before)
    calls = tmp_path / "calls"
    fake = ("systemctl() { if [ \"$1\" = is-active ]; then return " + ("0" if active else "3") + "; fi; "
            f"echo \"$1\" >> {calls}; }}\n")
    program = "set -euo pipefail\n" + fake + helper + step.replace("/etc/docker/daemon.json", str(daemon))
    subprocess.run(["bash", "-c", program], check=True, capture_output=True, text=True)
    return (calls.read_text().split() if calls.exists() else []), daemon.read_text()


# scenario -> (daemon.json before, mirrors now, Docker running, what systemctl is asked)
STEPS = {
    "first_bootstrap": (None, (), False, []),  # written before Docker's package: its first start reads it
    "docker_there_before_mlox": (None, (), True, ["restart"]),
    "unchanged": (docker_daemon(), (), True, []),
    "unchanged_with_mirror": (docker_daemon(("https://m.example.com",)), ("https://m.example.com",), True, []),
    "mirror_added": (docker_daemon(), ("https://m.example.com",), True, ["reload"]),
    "mirror_changed": (docker_daemon(("https://m.example.com",)), ("https://n.example.com",), True, ["reload"]),
    "mirror_removed": (docker_daemon(("https://m.example.com",)), (), True, ["reload"]),
    "mirror_added_docker_stopped": (docker_daemon(), ("https://m.example.com",), False, []),  # started later
    "other_setting_changed": ('{\n  "log-driver": "json-file"\n}\n', ("https://m.example.com",), True, ["restart"]),
}


@pytest.mark.parametrize("case", sorted(STEPS))
def test_a_change_of_mirrors_alone_reloads_docker_anything_else_restarts_it(tmp_path, case):
    before, mirrors, active, expected = STEPS[case]
    calls, after = _run_daemon_step(tmp_path, before, mirrors, active)
    assert calls == expected
    assert after == docker_daemon(mirrors)
