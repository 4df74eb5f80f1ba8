"""The bootstrap's package step, run in bash with apt-get, dpkg-query, curl and docker
recorded instead of run: what it asks apt for on a bare host, on a host that has everything
(nothing: a rerun is a no-op), and on hosts in between."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mlox_iac.render.bootstrap import BootstrapSettings, render_bootstrap

BASE = "ca-certificates curl gnupg nftables fail2ban python3-systemd unattended-upgrades e2fsprogs util-linux"
DOCKER_CE = "docker-ce docker-ce-cli containerd.io docker-compose-plugin docker-buildx-plugin"
EVERYTHING = f"{BASE} docker.io {DOCKER_CE}".split()

# scenario -> (docker source, installed packages, Compose answers, man-db's auto-update flag, apt/curl calls)
CASES = {
    "bare_host_debian": ("debian", [], True, False, ["apt-get update", f"apt-get install {BASE} docker.io"]),
    "bare_host_docker_repo": ("docker", ["ca-certificates", "curl"], True, False, [
        "curl https://download.docker.com/linux/debian/gpg", "apt-get update", f"apt-get install {BASE} {DOCKER_CE}"]),
    "bare_host_docker_repo_without_curl": ("docker", [], True, False, [
        "apt-get update", "apt-get install ca-certificates curl",
        "curl https://download.docker.com/linux/debian/gpg", "apt-get update", f"apt-get install {BASE} {DOCKER_CE}"]),
    "everything_there_debian": ("debian", EVERYTHING, True, False, []),
    "everything_there_docker_repo": ("docker", EVERYTHING, True, False, []),
    # The packages that are there come along: apt brings them up to date in the same transaction.
    "one_missing": ("debian", [p for p in EVERYTHING if p != "fail2ban"], True, False,
                    ["apt-get update", f"apt-get install {BASE} docker.io"]),
    "base_package_missing_docker_repo_kept": ("docker", [p for p in EVERYTHING if p != "nftables"], True, False,
                                              ["apt-get update", f"apt-get install {BASE} {DOCKER_CE}"]),
    "compose_missing_debian": ("debian", EVERYTHING, False, False, ["apt-get install docker-compose-v2"]),
    "man_db_index_skipped_then_restored": ("debian", [], True, True, [
        "apt-get update (man-db index off)", f"apt-get install {BASE} docker.io (man-db index off)"]),
}


def _run_package_step(tmp_path: Path, source: str, installed: list[str], compose: bool,
                      man_db: bool) -> tuple[list[str], bool]:
    """(the recorded calls, whether man-db's flag is there afterwards)."""
    script = render_bootstrap(BootstrapSettings(("203.0.113.7/32",), ("ssh-ed25519 AAAA a@b",), source, ""))
    helpers = re.search(r"^DOCKER_SOURCE=.*?(?=^if command -v cloud-init)", script, re.S | re.M).group(0)
    step = re.search(r"^packages=\(.*?(?=^log \"host firewall\")", script, re.S | re.M).group(0)
    calls, flag = tmp_path / "calls", tmp_path / "auto-update"
    (tmp_path / "os-release").write_text("ID=debian\nVERSION_CODENAME=bookworm\n")
    (tmp_path / "sources.list.d").mkdir()
    if man_db:
        flag.touch()
    fakes = f"""
dpkg-query() {{ case " {' '.join(installed)} " in *" $3 "*) printf installed;; *) return 1;; esac; }}
dpkg() {{ echo amd64; }}
docker() {{ return {0 if compose else 1}; }}
off() {{ {f"[ -e {flag} ] || printf ' (man-db index off)'" if man_db else ":"}; }}
apt-get() {{
  local words=() skip="" x
  for x; do
    if [ -n "$skip" ]; then skip=""; elif [ "$x" = -o ]; then skip=1; elif [[ $x != -* ]]; then words+=("$x"); fi
  done
  echo "apt-get ${{words[*]}}$(off)" >> {calls}
}}
curl() {{ echo "curl $2" >> {calls}; : > "$4"; }}
"""
    for path in ("/var/lib/man-db/auto-update", "/etc/os-release", "/etc/apt/keyrings", "/etc/apt/sources.list.d"):
        step = step.replace(path, str(tmp_path / Path(path).name))
    program = "set -euo pipefail\n" + helpers + fakes + step
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return (calls.read_text().splitlines() if calls.exists() else []), flag.exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_package_step(tmp_path, case):
    source, installed, compose, man_db, expected = CASES[case]
    calls, flag_after = _run_package_step(tmp_path, source, installed, compose, man_db)
    assert calls == expected
    assert flag_after == man_db  # put back as it was
    if source == "docker" and "docker-ce" not in installed:
        assert (tmp_path / "sources.list.d/docker.list").read_text() == (
            "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian bookworm stable\n"
        ).replace("/etc/apt/keyrings", str(tmp_path / "keyrings"))
