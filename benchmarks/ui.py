"""The UI's stacks page against the CLI it is built on: time to first paint of the page with
ten deployed stacks, as a ratio to ``mlox-iac status --json`` run for the same ten stacks.

Goal: ratio <= 1.2 (the UI adds no slow path of its own).

Both sides use the real engine: ten stacks in a throwaway project's state (the Pulumi CLI,
``scripts/build-pulumi``), each holding the outputs of a deployed stack, imported with the
Automation API (no cloud, no server to create). Each stack's endpoints are served by an
HTTPS server on 127.0.0.1 with a CA of its own (MLflow's health behind basic auth and the S3
gateway's), so every probe is a real TLS request. The UI (``mlox-iac ui``, started once, as
a user starts it) is opened in Debian's Chromium by Playwright; its time is the page's
first-contentful-paint from the start of the navigation, with nothing cached in the UI (a
fresh UI process per round). The CLI's time is ten ``mlox-iac status --stack sNN --json``
processes one after another, as a user would check ten stacks. Rounds alternate; medians.

    .venv/bin/python benchmarks/ui.py [--stacks 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "ui"), str(ROOT / "tests" / "cli")]

GOAL = 1.2


def make_project(folder: Path, stacks: int, port: int) -> list[str]:
    """A project with ``stacks`` stacks whose state holds a deployed stack's outputs."""
    from mlox_iac import automation

    (folder / "stacks").mkdir(parents=True)
    shutil.copy(ROOT / "Pulumi.yaml", folder / "Pulumi.yaml")
    example = (ROOT / "stacks" / "Pulumi.example-hetzner.yaml").read_text()
    names = [f"s{i:02d}" for i in range(1, stacks + 1)]
    base = f"https://127.0.0.1:{port}"
    for name in names:
        (folder / "stacks" / f"Pulumi.{name}.yaml").write_text(example)
        outputs = {"provider": "hetzner", "server": "main", "server_address": "127.0.0.1", "ssh_user": "root",
                   "ssh_port": 22, "services": ["postgres", "seaweedfs", "mlflow", "caddy"], "tls": "acme",
                   "urls": {"s3": base, "mlflow": f"{base}/mlflow"}, "ui_user": "admin",
                   "ui_passwords": {"mlflow": "ui-pass"}, "mlflow_tracking_uri": f"{base}/mlflow",
                   "s3_endpoint": base, "s3_buckets": ["data"]}
        stack = automation.open_stack(name, project_dir=folder, create=True, validate=False)
        deployment = stack.export_stack()
        state = deployment.deployment or {}
        state["resources"] = [{"urn": f"urn:pulumi:{name}::mlox::pulumi:pulumi:Stack::mlox-{name}", "custom": False,
                               "type": "pulumi:pulumi:Stack", "outputs": outputs}]
        deployment.deployment = state
        stack.import_stack(deployment)
    return names


def time_cli(names: list[str], env: dict, ca: Path, folder: Path) -> float:
    start = time.perf_counter()
    for name in names:
        done = subprocess.run([sys.executable, "-m", "mlox_iac.cli.main", "status", "--stack", name, "--json",
                               "--ca", str(ca)], cwd=folder, env=env, capture_output=True, text=True)
        rows = json.loads(done.stdout) if done.returncode == 0 else None
        assert rows and all(r["up"] for r in rows), (name, done.returncode, done.stderr[-500:])
    return time.perf_counter() - start


def time_ui(names: list[str], env: dict, ca: Path, folder: Path) -> float:
    from playwright.sync_api import sync_playwright

    from browser import launch

    proc = subprocess.Popen([sys.executable, "-m", "mlox_iac.cli.main", "ui", "--no-browser", "--ca", str(ca)],
                            cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            assert line, "mlox-iac ui ended"
            found = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line)
            url = found.group(1) if found else None
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page()
            page.set_default_timeout(300_000)
            page.goto(url)  # the first paint of the stacks page, reached through the token's redirect
            paint = "performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint')"
            page.wait_for_function(f"!!{paint}", timeout=30_000)  # recorded just after the load, at times
            fcp = page.evaluate(f"{paint}.startTime")
            up = page.locator('tr[data-health="up"]').count()
            browser.close()
        assert up == len(names), f"{up} of {len(names)} stacks up on the page"
        return fcp / 1000
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("pulumi", path=str(ROOT / ".venv" / "bin")) is None:
        print("benchmarks/ui.py needs the Pulumi CLI in .venv/bin (scripts/build-pulumi)", file=sys.stderr)
        return 2
    from cli_helpers import Handler, make_tls  # the CLI tests' HTTPS stand-in for a stack's proxy
    import ssl
    import threading
    from http.server import ThreadingHTTPServer

    with tempfile.TemporaryDirectory(prefix="mlox-ui-bench-") as tmp:
        tmp_path = Path(tmp)
        tls = make_tls(tmp_path / "tls")
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_path, tls.key_path)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = {**os.environ, "PULUMI_CONFIG_PASSPHRASE": "benchmark", "PULUMI_SKIP_UPDATE_CHECK": "true",
               "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
        for key in ("PULUMI_BACKEND_URL", "PULUMI_ACCESS_TOKEN", "MLOX_STACK", "MLOX_OUTPUTS_FILE"):
            env.pop(key, None)
        os.environ.update({k: env[k] for k in ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_SKIP_UPDATE_CHECK", "PATH", "HOME")})
        folder = tmp_path / "project"
        env["MLOX_PROJECT_DIR"] = str(folder)
        started = time.perf_counter()
        names = make_project(folder, args.stacks, server.server_address[1])
        print(f"{len(names)} stacks in the engine's state in {time.perf_counter() - started:.1f} s")
        cli_times, ui_times = [], []
        for round_ in range(1, args.rounds + 1):
            cli_times.append(time_cli(names, env, tls.ca_path, folder))
            ui_times.append(time_ui(names, env, tls.ca_path, folder))
            print(f"round {round_}: status x{len(names)} {cli_times[-1]:.2f} s, stacks page first paint "
                  f"{ui_times[-1]:.2f} s")
        server.shutdown()
    cli, ui = statistics.median(cli_times), statistics.median(ui_times)
    ratio = ui / cli
    print(f"stacks page first paint / mlox-iac status --json x{len(names)}: {ui:.2f} s / {cli:.2f} s = {ratio:.2f} "
          f"(goal <= {GOAL}: {'met' if ratio <= GOAL else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
