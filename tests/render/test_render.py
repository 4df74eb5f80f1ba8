"""Renderers: golden files per scenario, real validators, shellcheck, determinism."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, compose_binary, secret_keys, settings, tool
from mlox_iac.components.services.base import SECRETS_DIR, Context
from mlox_iac.config.loader import validate
from mlox_iac.render import commands
from mlox_iac.render.bootstrap import BootstrapSettings, render_bootstrap
from mlox_iac.render.bundle import bundle_hash, render_bundle, render_compose

GOLDEN = Path(__file__).parent / "golden"
SCENARIOS = {
    "ip_address": settings("onprem"),
    "domain": settings(domain="ml.example.com", acme_email="ops@example.com"),
    # A company ACME CA whose roots are not public: Caddy and MLflow trust the stack's roots.
    "domain_custom_acme_ca": settings(domain="ml.example.com", acme_email="ops@example.com",
                                      acme_ca="https://ca.example.com/acme/acme/directory",
                                      acme_ca_root=(Path(__file__).parent / "acme-ca-root.pem").read_text()),
    "without_mlflow": settings(services={"mlflow": {"enabled": False}}),
    "extra_buckets": settings(services={"seaweedfs": {"buckets": ["raw", "features"]}}),
    "monitoring_and_serving": settings(
        "onprem", services={
            "monitoring": {"enabled": True, "alerts": {"webhook_url": "https://hooks.example.com/mlox"}},
            "serving": {"enabled": True, "models": [{"name": "iris", "alias": "champion", "log_sample": 0.1},
                                                   {"name": "Churn.v2", "memory_mb": 1024, "workers": 2}]}}),
    "monitoring_domain_email": settings(
        hetzner={"location": "fsn1", "server_type": "cx33"}, domain="ml.example.com", acme_email="ops@example.com", volume_size_gb=200, services={
            "monitoring": {"enabled": True, "retention_days": 90, "alerts": {"email": {
                "to": "ops@example.com", "sender": "mlox@example.com", "smarthost": "smtp.example.com:587",
                "username": "mlox"}}},
            "serving": {"enabled": True, "models": [{"name": "iris"}]}}),
    "full_preset": settings("onprem", services={"preset": "full"}),
    # Buckets and databases at a provider: no SeaweedFS or Postgres on the server.
    "external_parts": settings("onprem", services={
        "preset": "full",
        "seaweedfs": {"buckets": ["data"], "external": {
            "endpoint": "https://fsn1.your-objectstorage.com", "region": "fsn1", "bucket_prefix": "team-prod-",
            "access_key_id": "AKIA-TEST", "secret_access_key": "secret-test",
            "ca": (Path(__file__).parent / "acme-ca-root.pem").read_text()}},
        "postgres": {"external": {"host": "db.example.com", "port": 25060, "admin_user": "doadmin",
                                  "admin_password": "pw-test", "admin_database": "defaultdb",
                                  "ca": (Path(__file__).parent / "acme-ca-root.pem").read_text()}},
        "monitoring": {"enabled": True}, "serving": {"enabled": True, "models": [{"name": "iris"}]}}),
    "full_preset_domain": settings("onprem", domain="ml.example.com", acme_email="ops@example.com",
                                   services={"preset": "full"}),
}


def ctx_for(raw: dict) -> Context:
    return Context(validate(raw, secret_keys(raw), "test.yaml", "test"))


def write(files: dict[str, str], directory: Path) -> Path:
    for rel, text in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text)
    return directory


def without_programs(files: dict[str, str]) -> dict[str, str]:
    """The bundle less the programs shipped unchanged from the package (checked against their
    source), and less mlox-client's source copied into image builds (checked below)."""
    from mlox_iac.components.services import programs

    sources = {programs.source(name) for name in programs.names()}
    return {path: text for path, text in files.items()
            if text not in sources and "/mlox-client/src/" not in path}


def test_images_get_this_checkout_of_mlox_client_whole():
    """JupyterLab's and Airflow's build contexts carry the client's every module and data file,
    as they are in client/src, and a pyproject with the package's version."""
    import mlox_client

    package = ROOT / "client" / "src" / "mlox_client"
    expected = {p.name: p.read_text() for p in package.iterdir() if p.suffix == ".py" or p.name in ("py.typed", "faces.json")}
    bundle = render_bundle(ctx_for(SCENARIOS["full_preset"]))
    for context in ("jupyter/image", "airflow/image"):
        copied = {path.rsplit("/", 1)[1]: text for path, text in bundle.items()
                  if path.startswith(f"{context}/mlox-client/src/mlox_client/")}
        assert copied == expected, context
        assert f'version = "{mlox_client.__version__}"' in bundle[f"{context}/mlox-client/pyproject.toml"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_bundle_matches_golden_files(scenario):
    files = without_programs(render_bundle(ctx_for(SCENARIOS[scenario])))
    directory = GOLDEN / scenario
    if os.environ.get("MLOX_UPDATE_GOLDEN"):
        write(files, directory)
    expected = {str(p.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}
    assert files == expected, f"bundle for {scenario} changed; rerun with MLOX_UPDATE_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_compose_project_passes_docker_compose_config(scenario, tmp_path):
    directory = write(render_bundle(ctx_for(SCENARIOS[scenario])), tmp_path)
    # Compose checks that env files exist; they are written on the host, so stand in empty ones.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    text = (directory / "compose.yaml").read_text().replace(SECRETS_DIR, str(secrets))
    (directory / "compose.yaml").write_text(text)
    for name in ctx_for(SCENARIOS[scenario]).config.enabled_services():
        (secrets / f"{name}.env").write_text("")
    result = subprocess.run([compose_binary(), "-f", str(directory / "compose.yaml"), "config", "-q"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_config_rejects_a_broken_project(tmp_path):
    (tmp_path / "compose.yaml").write_text("services:\n  x:\n    image: a\n    healthchek: {}\n")
    result = subprocess.run([compose_binary(), "-f", str(tmp_path / "compose.yaml"), "config", "-q"],
                            capture_output=True, text=True)
    assert result.returncode != 0  # the validator can fail, so the test above means something


@pytest.mark.parametrize("scenario", ["ip_address", "domain", "domain_custom_acme_ca", "full_preset", "full_preset_domain",
                                      "monitoring_and_serving", "monitoring_domain_email"])
def test_caddyfile_passes_caddy_validate(scenario, tmp_path):
    from mlox_iac.components.services.caddy import ACME_CA_ROOT_FILE, ACME_CA_ROOT_PATH

    files = render_bundle(ctx_for(SCENARIOS[scenario]))
    path = tmp_path / "Caddyfile"
    # The CA root file as the container sees it: Caddy reads it while validating.
    text = files["caddy/Caddyfile"].replace(ACME_CA_ROOT_PATH, str(write(files, tmp_path / "bundle") / ACME_CA_ROOT_FILE))
    path.write_text(text)
    env = {**os.environ, "MLOX_ADDRESS": "192.0.2.50", "MLOX_UI_USER": "admin", "HOME": str(tmp_path),
           "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path),
           }
    from mlox_iac.components.services import caddy

    for route in caddy.all_routes(ctx_for(SCENARIOS[scenario])):  # every basic-auth route's hash
        env[caddy.auth_variable(route)] = "$2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG"
    result = subprocess.run([tool("caddy"), "validate", "--config", str(path), "--adapter", "caddyfile"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Valid configuration" in result.stdout + result.stderr


def test_only_the_proxy_publishes_ports_beyond_the_loopback():
    for scenario, raw in SCENARIOS.items():
        services = render_compose(ctx_for(raw))["services"]
        published = {name for name, s in services.items()
                     if any(not p.startswith("127.0.0.1:") for p in s.get("ports", []))}
        assert published == {"caddy"}, scenario
        assert services["caddy"]["ports"] == ["80:80", "443:443"]
        # The ends of users' SSH tunnels (mlox-client): on the server's loopback only.
        if "postgres" in services:  # not with an external Postgres
            assert services["postgres"]["ports"] == ["127.0.0.1:15432:5432"]
        assert services.get("redis", {}).get("ports", ["127.0.0.1:16379:6379"]) == ["127.0.0.1:16379:6379"]


def test_every_ui_has_a_route_with_auth():
    from mlox_iac.components.services import caddy

    for scenario, raw in SCENARIOS.items():
        ctx = ctx_for(raw)
        routes = {r.name: r for r in caddy.all_routes(ctx)}
        text = render_bundle(ctx)["caddy/Caddyfile"]
        if "s3" in routes:  # not with an external store
            assert routes["s3"].auth == "own"  # S3 authenticates each request by its signature
        if "mlflow" in ctx.config.enabled_services():
            assert routes["mlflow"].auth == "basic"
            assert "{$MLOX_UI_USER} {$MLOX_AUTH_MLFLOW}" in text
        assert text.count("basic_auth") == sum(1 for r in routes.values() if r.auth == "basic"), scenario


def test_services_have_healthchecks_limits_and_restart_policy():
    services = render_compose(ctx_for(SCENARIOS["domain"]))["services"]
    for name, service in services.items():
        assert service["deploy"]["resources"]["limits"]["memory"].endswith("M"), name
        assert ":" in service["image"] and not service["image"].endswith(":latest"), name
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD", name  # so `up --wait` means healthy


def test_render_is_deterministic():
    raw = SCENARIOS["domain"]
    assert render_bundle(ctx_for(raw)) == render_bundle(ctx_for(raw))
    first = render_bootstrap(BootstrapSettings(("10.0.0.0/8",), ("ssh-ed25519 AAAA k",), "docker", ""))
    assert first == render_bootstrap(BootstrapSettings(("10.0.0.0/8",), ("ssh-ed25519 AAAA k",), "docker", ""))


def test_changing_one_service_changes_only_its_files_and_containers():
    before = ctx_for(settings(services={"seaweedfs": {"buckets": ["data"]}}))
    after = ctx_for(settings(services={"seaweedfs": {"buckets": ["data", "more"]}}))
    a, b = render_compose(before)["services"], render_compose(after)["services"]
    changed = {name for name in a if a[name] != b[name]}
    assert changed == {"seaweedfs-buckets"}
    assert render_bundle(before)["caddy/Caddyfile"] == render_bundle(after)["caddy/Caddyfile"]
    assert bundle_hash(render_bundle(before)) != bundle_hash(render_bundle(after))


def test_ui_user_change_touches_only_caddy_files():
    a = render_bundle(ctx_for(settings()))
    b = render_bundle(ctx_for(settings(services={"caddy": {"ui_user": "ops"}})))
    assert a == b  # the user name lives in Caddy's env file, not in the bundle


def _shellcheck(script: str, tmp_path: Path, name: str, shell: str = "bash") -> None:
    path = tmp_path / name
    path.write_text(script)
    result = subprocess.run([tool("shellcheck"), "-s", shell, "-S", "style", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("source, device", [("docker", ""), ("debian", "/dev/disk/by-id/scsi-0HC_Volume_1")])
def test_bootstrap_passes_shellcheck(tmp_path, source, device):
    script = render_bootstrap(BootstrapSettings(("203.0.113.7/32", "2001:db8::/48"), ("ssh-ed25519 AAAA a@b",), source, device))
    _shellcheck(script, tmp_path, "bootstrap.sh")


def test_shellcheck_catches_a_bad_script(tmp_path):
    with pytest.raises(AssertionError):
        _shellcheck("#!/bin/bash\nrm -rf $1/*\n", tmp_path, "bad.sh")


def test_remote_commands_pass_shellcheck(tmp_path):
    from mlox_iac.components.services.postgres import PROVISION_SH

    scripts = {
        "env.sh": commands.write_env_file("mlflow", ["mlflow"]),
        "up.sh": commands.compose_up("abc", ["postgres-data", "caddy-data"]),
        "down.sh": commands.compose_down(),
        "rm.sh": commands.remove_env_file("mlflow"),
    }
    for name, body in scripts.items():
        _shellcheck("#!/bin/sh\n" + body + "\n", tmp_path, name, "sh")
    _shellcheck(PROVISION_SH, tmp_path, "provision.sh", "sh")
    from mlox_iac.components.services.base import provisioner

    _shellcheck("#!/bin/sh\n" + provisioner("/bin/sh /mlox/provision.sh")["entrypoint"][2] + "\n", tmp_path, "idle.sh", "sh")


def test_firewall_ruleset_is_exact():
    from mlox_iac.render.bootstrap import nftables_ruleset

    rules = nftables_ruleset(("198.51.100.0/24", "2001:db8::/48"))
    assert "tcp dport 22 ip saddr { 198.51.100.0/24 } accept" in rules
    assert "tcp dport 22 ip6 saddr { 2001:db8::/48 } accept" in rules
    assert "tcp dport { 80, 443 } accept" in rules
    assert "policy drop" in rules and "flush ruleset" not in rules
    accepts = [line.strip() for line in rules.splitlines() if line.strip().endswith("accept")]
    assert accepts == [
        "iif lo accept", "ct state established,related accept", "ip protocol icmp accept", "ip6 nexthdr icmpv6 accept",
        "udp sport 67 udp dport 68 accept", "udp sport 547 udp dport 546 accept",
        "tcp dport 22 ip saddr { 198.51.100.0/24 } accept", "tcp dport 22 ip6 saddr { 2001:db8::/48 } accept",
        "tcp dport { 80, 443 } accept",
    ]


def test_firewall_ruleset_parses_with_real_nft(tmp_path):
    from mlox_iac.render.bootstrap import nftables_ruleset

    path = tmp_path / "rules.nft"
    path.write_text(nftables_ruleset(("198.51.100.0/24", "2001:db8::/48")))
    result = subprocess.run([tool("nft"), "-c", "-f", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    path.write_text("table inet mlox {\n\tchain input {\n\t\tmeta l4proto { nonsense } accept\n\t}\n}\n")
    assert subprocess.run([tool("nft"), "-c", "-f", str(path)], capture_output=True).returncode != 0


def test_http_checks_run_with_bash_and_pass_on_2xx_only():
    """Every interpreter-free HTTP check of the full preset, run as Docker runs it (compose's
    ``$$`` is one ``$``) against a local server answering each path as told."""
    import http.server
    import threading

    from mlox_iac.components.services.base import http_check

    answers = {"/ok": 200, "/created": 204, "/missing": 404, "/broken": 500, "/moved": 302}
    seen: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Host", "")))
            self.send_response(answers[self.path])
            self.send_header("Location", "/ok")
            self.end_headers()
            self.wfile.write(b"x" * 70_000)  # more than one read's worth: /metrics pages are long

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    def run(test: list[str]) -> int:
        assert test[:3] == ["CMD", "bash", "-c"]
        return subprocess.run(["bash", "-c", test[3].replace("$$", "$")], timeout=20).returncode

    try:
        for path, healthy in [("/ok", True), ("/created", True), ("/missing", False), ("/broken", False),
                              ("/moved", False)]:
            assert (run(http_check(port, path)) == 0) is healthy, path
        assert seen[0] == ("/ok", f"127.0.0.1:{port}")
    finally:
        server.shutdown()
    assert run(http_check(port, "/ok")) != 0  # nothing listens any more

    full = render_compose(ctx_for(SCENARIOS["full_preset"]))["services"]
    checks = [s["healthcheck"]["test"] for s in full.values()]
    assert not [c for c in checks if "urllib" in " ".join(c)]  # no check starts Python to GET a page
    assert sum(c[:3] == ["CMD", "bash", "-c"] for c in checks) >= 8
