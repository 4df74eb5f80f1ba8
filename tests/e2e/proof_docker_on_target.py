"""Manual proof that a target host can run the stack's images (not a pytest test).

Boots one target host, installs Docker from Debian over SSH (as the project's bootstrap
does in "debian" docker mode), streams the four stand-in images into it, runs each one to
print its version, and shows that the pre-placed Compose v2 plugin works. Prints phase
timings. Run as root: python tests/e2e/proof_docker_on_target.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hosts  # noqa: E402
import images  # noqa: E402


def main() -> None:
    t0 = time.monotonic()
    hosts.ensure_host_tools()
    versions = images.build_standins()
    with hosts.target_hosts(1, prefix="mlxproof", client=False) as (h,):
        with hosts.phase(f"{h.name}: apt-get install docker.io over SSH"):
            h.ssh("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null",
                  timeout=900)
        print(h.ssh("docker version --format 'docker server {{.Server.Version}}'").stdout.strip())
        print(h.ssh("docker compose version").stdout.strip())
        assert images.load_images(h) == list(images.ALL_IMAGES)
        assert images.load_images(h) == []  # same image IDs there now: nothing to stream
        with hosts.phase(f"{h.name}: docker run each stand-in"):
            for tag in images.ALL_IMAGES:
                s = images.STANDINS[tag]
                out = h.ssh(["docker", "run", "--rm", "--entrypoint", s.version_argv[0], tag, *s.version_argv[1:]])
                line = (out.stdout + out.stderr).strip().splitlines()[0]
                assert s.expect in f" {line} ", (tag, line)
                print(f"{tag}: {line}  (expected on this machine: {versions[tag]})")
        with hosts.phase(f"{h.name}: docker run with a published port"):
            h.ssh("docker run -d --name caddy-probe -p 8080:80 caddy:2.11.7 >/dev/null")
            out = h.ssh("for i in $(seq 50); do curl -fsS http://127.0.0.1:8080/ 2>/dev/null && break; sleep 0.2; done")
            assert "Caddy works" in out.stdout, out
            h.ssh("docker rm -f caddy-probe >/dev/null")
    print(f"total {time.monotonic() - t0:.1f}s")
    for name, dt in hosts.TIMINGS:
        print(f"  {dt:8.2f}s  {name}")


if __name__ == "__main__":
    main()
