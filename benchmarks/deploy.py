"""The Pulumi engine's overhead on a deploy, against the same steps run straight over ssh.

Two fresh target hosts (the e2e harness: systemd-nspawn Debian hosts on this machine; needs
root), the core preset's stand-in images built first:

- host A, the engine: ``mlox-iac``'s automation API in a throwaway project (local file
  backend, passphrase secrets). The bootstrap as a targeted update, the images loaded (not
  timed), then the whole stack, until every long-running service is healthy; then a no-op
  update.
- host B, the floor: the same bootstrap script piped to ``bash -s`` over ssh, the images
  loaded (not timed), then the bundle and env files the engine wrote on A copied over
  (``tar | ssh``) and the engine's own compose step (volume folders, ``docker compose up
  --wait``).

Prints seconds for each and the ratio engine / floor (goals: no-op up <= 10 s; bare host to
serving <= 60 s; overhead <= 1.3x), as one JSON line at the end.

    sudo .venv/bin/python benchmarks/deploy.py

Host group prefix mlxbdep (index 111, 112: no e2e module uses them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlox_iac.plan import record_program, unwrap  # noqa: E402
from tests.e2e import hosts, images  # noqa: E402
from tests.e2e.stack import COMPOSE, LONG_RUNNING, Deployment  # noqa: E402

GOALS = {"noop_up_s": 10.0, "bare_to_serving_s": 60.0, "overhead": 1.3}


def healthy(host: hosts.TargetHost, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = host.ssh(f"{COMPOSE} ps --format '{{{{.Service}}}} {{{{.Health}}}}'", check=False).stdout.split("\n")
        health = dict(line.split(" ", 1) for line in out if " " in line)
        if all(health.get(s) == "healthy" for s in LONG_RUNNING):
            return
        time.sleep(1)
    raise SystemExit(f"{host.name}: not healthy after {timeout:.0f}s")


def main() -> None:
    names = images.preset_images("core")
    images.BackgroundBuild(names).wait()
    with tempfile.TemporaryDirectory(prefix="mlox-bench-deploy-") as work, \
            hosts.target_hosts(2, prefix="mlxbdep", first_index=111) as (a, b):
        d = Deployment(a, Path(work) / "a")
        start = time.monotonic()
        d.up(bootstrap_only=True)
        engine_bootstrap = time.monotonic() - start
        images.load_images(a, names)
        start = time.monotonic()
        d.up()
        healthy(a)
        engine_up = time.monotonic() - start
        start = time.monotonic()
        noop = d.up()
        noop_s = time.monotonic() - start
        assert noop.changed() == [], noop.changed()

        # The same script as A's, rendered for B (its address, its admin network for SSH).
        resources, _ = record_program(d.raw | {"onprem": {**d.raw["onprem"], "host": b.address},
                                               "ssh": {**d.raw["ssh"], "admin_cidrs": [b.subnet]}},
                                      {"onprem.private_key"}, "bench")
        script = unwrap(next(r for r in resources if r.name == "main-bootstrap").inputs["stdin"])
        compose_up = unwrap(next(r for r in resources if r.name == "main-bundle-compose-up").inputs["create"])
        start = time.monotonic()
        b.ssh("bash -s", input=script, timeout=900)
        floor_bootstrap = time.monotonic() - start
        images.load_images(b, names)
        start = time.monotonic()
        # What the engine shipped to A (bundle and 0600 env files), shipped the plain way.
        copy = subprocess.run(f"{' '.join(a.ssh_argv())} tar -C / -cf - opt/mlox | "
                              f"{' '.join(b.ssh_argv())} tar -C / -xf -", shell=True, capture_output=True, text=True)
        if copy.returncode != 0:
            raise SystemExit(f"copy failed: {copy.stderr[-2000:]}")
        b.ssh(compose_up, timeout=900)  # the engine's own step: volume folders, then docker compose up --wait
        healthy(b)
        floor_up = time.monotonic() - start

    engine = engine_bootstrap + engine_up
    floor = floor_bootstrap + floor_up
    result = {
        "engine_bootstrap_s": round(engine_bootstrap, 1), "engine_up_s": round(engine_up, 1),
        "floor_bootstrap_s": round(floor_bootstrap, 1), "floor_up_s": round(floor_up, 1),
        "bare_to_serving_s": round(engine, 1), "floor_s": round(floor, 1), "overhead": round(engine / floor, 2),
        "noop_up_s": round(noop_s, 1), "goals": GOALS,
    }
    print(f"bare host -> serving: engine {engine:.1f} s (bootstrap {engine_bootstrap:.1f} + up {engine_up:.1f}), "
          f"ssh floor {floor:.1f} s (bootstrap {floor_bootstrap:.1f} + copy and compose up {floor_up:.1f}); "
          f"overhead {engine / floor:.2f}x (goal <= {GOALS['overhead']}); no-op up {noop_s:.1f} s "
          f"(goal <= {GOALS['noop_up_s']:.0f})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
