"""End to end: a domain-mode stack with real ACME certificates, from Pebble.

One target host (``mlxacme41``). On the CI machine, at the host side of its veth: Pebble
(Let's Encrypt's test ACME server) and its DNS (tests/e2e/acme.py), which answers
``mlflow.<domain>`` and ``s3.<domain>`` with the target's address. The stack is deployed
with ``mlox:domain``, ``mlox:acme_ca`` (Pebble's directory) and ``mlox:acme_ca_root``
(the roots of Pebble's HTTPS and of the certificates it issues) by the real Pulumi engine
(tests/e2e/stack.py), as tests/e2e/test_deploy.py does. Caddy then gets its certificates by
HTTP-01/TLS-ALPN-01 challenges that Pebble validates against ports 80/443 of the target.

Clients run in the client network namespace, whose resolv.conf points at the test DNS:
real host names, real SNI, certificates verified against Pebble's issuing root only,
configured by what ``mlox-iac env --ca`` prints. The target itself cannot resolve the
test domain: MLflow reaches S3's public URL through Caddy's network aliases.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mlox_iac.components.services.registry import SERVICES

try:
    from . import hosts, images
    from .acme import AcmeTestCA
    from .stack import COMPOSE, LONG_RUNNING, Deployment, timed
except ImportError:  # tests/e2e is not a package: pytest put its directory on sys.path
    import hosts  # type: ignore[no-redef]
    import images  # type: ignore[no-redef]
    from acme import AcmeTestCA  # type: ignore[no-redef]
    from stack import COMPOSE, LONG_RUNNING, Deployment, timed  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tests" / "e2e" / "domain_client.py"
PREFIX, INDEX = "mlxacme", 41
DOMAIN = "acme.mlox.test"  # .test: reserved, never resolves anywhere but in the test DNS
CADDY_CERTS = "/mnt/mlox-data/volumes/caddy-data/caddy/certificates"


class DomainDeployment(Deployment):
    """The stack with a domain and the test ACME CA; clients in the client namespace."""

    def __init__(self, host, work: Path, acme: AcmeTestCA, client: hosts.ClientNamespace):
        super().__init__(host, work)
        self.acme, self.client = acme, client
        self.ca_path = work / "pebble-issuing-root.pem"
        self.ca_path.write_text(acme.issuing_root_pem())
        self.raw.update({
            "domain": DOMAIN, "acme_email": f"ops@{DOMAIN}", "acme_ca": acme.directory_url,
            # Caddy must trust Pebble's HTTPS; MLflow's S3 client the certificates Pebble issues.
            "acme_ca_root": acme.https_root_pem + self.ca_path.read_text(),
        })

    def outputs_file(self) -> Path:
        path = self.work / "outputs.json"
        path.write_text(json.dumps(self.outputs))
        path.chmod(0o600)
        return path

    def mlox(self, *args: str) -> subprocess.CompletedProcess:
        """The mlox-iac CLI, run from the client namespace, on this deployment's outputs."""
        return self.in_client([sys.executable, "-m", "mlox_iac.cli.main", *args, "--outputs-file",
                               str(self.outputs_file())], check=False)

    def user_env(self) -> dict[str, str]:
        """The environment user code gets from ``eval "$(mlox-iac env --show-secrets --ca ROOT)"``."""
        exports = self.mlox("env", "--show-secrets", "--ca", str(self.ca_path))
        assert exports.returncode == 0, exports.stderr
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("MLFLOW_", "AWS_")) and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        shown = subprocess.run(["sh", "-c", 'eval "$1" && env -0', "sh", exports.stdout], env=clean,
                               capture_output=True, text=True, check=True).stdout
        return dict(item.split("=", 1) for item in shown.split("\0") if "=" in item)

    def in_client(self, argv: list[str], env: dict | None = None, check: bool = True,
                  timeout: float = 300) -> subprocess.CompletedProcess:
        return self.client.exec(argv, env=env, check=check, timeout=timeout)

    def client_json(self, *args: str, env: dict | None = None) -> dict:
        done = self.in_client([sys.executable, str(CLIENT), *args], env=env or dict(os.environ))
        return json.loads(done.stdout.strip().splitlines()[-1])

    def wait_for_certificates(self, names: list[str], timeout: float = 180) -> dict[str, dict]:
        """Each name's served certificate, once it verifies against Pebble's root."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return {name: self.client_json("cert", name, str(self.ca_path)) for name in names}
            except hosts.CommandError as exc:
                if time.monotonic() > deadline:
                    caddy = self.host.ssh(f"{COMPOSE} logs --tail 40 caddy", check=False).stdout
                    raise AssertionError(f"no certificate from Pebble after {timeout:.0f}s: {exc}\n"
                                         f"--- caddy ---\n{caddy}\n{self.acme.log_tail()}") from None
                time.sleep(3)


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests need root: they boot Debian hosts with systemd-nspawn")
    started = time.monotonic()
    build = images.BackgroundBuild(images.preset_images("core"))  # images build on the CI machine while the target boots
    work = tmp_path_factory.mktemp("domain")
    with hosts.target_hosts(1, prefix=PREFIX, first_index=INDEX) as (host,):
        client = hosts.client_namespace()
        names = [f"{route}.{DOMAIN}" for route in ("mlflow", "s3", "home")]
        acme = AcmeTestCA(work / "acme", host.gateway, host.address, names)
        # `ip netns exec` shows the namespace this file as /etc/resolv.conf.
        resolv = Path("/etc/netns") / client.netns / "resolv.conf"
        try:
            acme.start()
            resolv.parent.mkdir(parents=True, exist_ok=True)
            resolv.write_text(acme.resolv_conf())
            d = DomainDeployment(host, work, acme, client)
            d.build, d.names = build, names
            timed("domain: target and Pebble ready", time.monotonic() - started)
            yield d
        finally:
            acme.stop()
            resolv.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                resolv.parent.rmdir()


def test_1_domain_stack_gets_certificates_from_pebble(domain):
    d = domain
    start = time.monotonic()
    d.up(bootstrap_only=True)
    d.build.wait()
    images.load_images(d.host, sorted({SERVICES[name].image for name in LONG_RUNNING}))  # the core stack's
    d.up()
    rows = d.wait_healthy()
    for service in LONG_RUNNING:
        assert rows[service]["Health"] == "healthy", (service, rows.get(service))
    timed("domain: stack up", time.monotonic() - start)
    assert d.outputs["tls"] == "acme"
    assert d.outputs["urls"] == {"mlflow": f"https://mlflow.{DOMAIN}", "s3": f"https://s3.{DOMAIN}",
                                 "home": f"https://home.{DOMAIN}"}

    start = time.monotonic()
    served = d.wait_for_certificates(d.names)
    timed("domain: certificates issued", time.monotonic() - start)
    for name, cert in served.items():
        assert cert["address"] == d.host.address  # the name resolved to the target
        assert cert["names"] == [name]
        assert cert["issuer"]["commonName"].startswith("Pebble Intermediate CA"), cert["issuer"]
        # The certificate Caddy serves is the one it got from the ACME CA and stored.
        stored = d.host.ssh(f"find {CADDY_CERTS} -name {shlex.quote(name)}.crt").stdout.split()
        assert len(stored) == 1 and "14000-dir" in stored[0], stored
        assert _sha256_of_first_pem(d.host.ssh(["cat", stored[0]]).stdout) == cert["sha256"]
    # Caddy was told to trust the CA roots, which reached it as a plain file in the bundle.
    assert d.host.ssh(f"{COMPOSE} exec -T caddy cat /etc/caddy/acme-ca-root.pem").stdout.strip() == \
        d.raw["acme_ca_root"].strip()

    # Plain HTTP redirects to HTTPS on every name.
    for name in d.names:
        answer = d.client_json("redirect", f"http://{name}/some/path?x=1")
        assert answer == {"status": 308, "location": f"https://{name}/some/path?x=1"}, answer


def test_2_mlflow_and_s3_by_their_names(domain):
    d = domain
    env = d.user_env()
    assert env["MLFLOW_TRACKING_URI"] == f"https://mlflow.{DOMAIN}"
    assert env["AWS_ENDPOINT_URL_S3"] == f"https://s3.{DOMAIN}"
    assert env["AWS_CA_BUNDLE"] == env["MLFLOW_TRACKING_SERVER_CERT_PATH"] == str(d.ca_path)

    # The target itself cannot resolve the test domain: MLflow reaches S3 through Caddy's aliases.
    assert d.host.ssh(f"getent hosts s3.{DOMAIN}", check=False).returncode != 0

    marker = uuid.uuid4().hex[:8]
    start = time.monotonic()
    logged = d.in_client([sys.executable, str(ROOT / "tests" / "e2e" / "mlflow_client.py"), "log", marker], env=env)
    run = json.loads(logged.stdout.strip().splitlines()[-1])
    d.in_client([sys.executable, str(ROOT / "tests" / "e2e" / "mlflow_client.py"), "check", run["run_id"], marker],
                env=env)

    # Large artifacts: MLflow hands out presigned URLs at S3's public URL; they work from outside.
    large = d.client_json("artifacts", marker, env=env)
    assert large == {"presigned_host": f"s3.{DOMAIN}", "presigned_status": 200, "presigned_equal": True,
                     "download_equal": True, "repository": "MlflowArtifactsRepository"}, large

    stored = d.client_json("s3", marker, env=env)
    assert stored == {"equal": True, "listed": True, "endpoint": f"https://s3.{DOMAIN}"}, stored
    timed("domain: MLflow and S3 clients", time.monotonic() - start)

    # Without the issuing root, a client refuses the certificate (it is not a public one).
    untrusted = {k: v for k, v in env.items()
                 if k not in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "MLFLOW_TRACKING_SERVER_CERT_PATH")}
    refused = d.in_client([sys.executable, "-c", "import boto3; boto3.client('s3').list_buckets()"], env=untrusted,
                          check=False)
    assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr[-500:]


def test_3_status_reports_the_acme_certificate(domain):
    d = domain
    status = d.mlox("status", "--json", "--ca", str(d.ca_path))
    assert status.returncode == 0, status.stdout + status.stderr
    probes = {p["name"]: p for p in json.loads(status.stdout)}
    assert set(probes) == {"mlflow", "s3", "home"} and all(p["up"] for p in probes.values()), probes
    served = d.wait_for_certificates(d.names)
    for route, probe in probes.items():
        assert probe["url"].startswith(f"https://{route}.{DOMAIN}/")
        assert probe["cert_not_after"] == served[f"{route}.{DOMAIN}"]["not_after"]
        assert probe["cert_expires_in_s"] > 3600, probe
    # Without the custom CA's root, status says so instead of guessing.
    untrusted = d.mlox("status", "--json")
    assert untrusted.returncode == 1
    assert all("pass --ca" in p["detail"] for p in json.loads(untrusted.stdout)), untrusted.stdout


def test_4_unchanged_redeploy_restarts_nothing(domain):
    d = domain
    before = d.started_at()
    result = d.up()
    assert result.changed() == []
    assert d.started_at() == before


def _sha256_of_first_pem(text: str) -> str:
    import base64
    import hashlib

    body = text.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----", 1)[0]
    return hashlib.sha256(base64.b64decode("".join(body.split()))).hexdigest()
