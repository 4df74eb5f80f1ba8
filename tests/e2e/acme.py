"""A test ACME CA on the CI machine: Pebble, Let's Encrypt's test server (Debian ``pebble``),
and its mock DNS server ``pebble-challtestsrv`` (same package), for domain-mode stacks.

Both listen only on one address of this machine that a target host reaches (the host
side of its veth, 10.77.<i>.1), so groups of tests with different hosts never share one.

- **DNS** (challtestsrv on port 53): A records ``<name> -> <target address>`` for the
  test domain's host names, nothing for any other name (no default answers). Pebble's
  validation authority asks it (``pebble -dnsserver``); clients ask it through a
  ``resolv.conf`` of their network namespace (:meth:`AcmeTestCA.resolv_conf`).
- **ACME** (Pebble): directory at ``https://<address>:14000/dir``, challenges validated on
  the real ports 80 (HTTP-01) and 443 (TLS-ALPN-01) of the resolved address, without
  Pebble's random sleeps (``PEBBLE_VA_NOSLEEP``) or its deliberately rejected nonces
  (``PEBBLE_WFE_NONCEREJECT=0``, to keep CI deterministic).
- **TLS**: Debian's package has no test certificate for Pebble's own HTTPS (upstream's
  ``test/certs`` are stripped), so a root and a certificate for the address are made here
  (:mod:`testca`): :attr:`AcmeTestCA.https_root_pem` is what Caddy must trust to reach the
  directory. Pebble makes a new issuing root at every start; :meth:`issuing_root_pem`
  fetches it from the management interface (``/roots/0``): what clients trust.

Stdlib plus ``cryptography`` (via :mod:`testca`). Logs go to ``<work>/pebble.log`` and
``<work>/challtestsrv.log``.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for testca
from testca import root_ca, server_cert  # noqa: E402

ACME_PORT = 14000
MANAGEMENT_PORT = 15000
DNS_PORT = 53
DNS_MANAGEMENT_PORT = 8055


class AcmeTestCA:
    """Pebble and its DNS on ``address``, answering ``names`` with ``target``."""

    def __init__(self, work: Path, address: str, target: str, names: list[str]):
        self.work = Path(work)
        self.address = address
        self.target = target
        self.names = list(names)
        self.directory_url = f"https://{address}:{ACME_PORT}/dir"
        self._procs: list[subprocess.Popen] = []
        self.https_root_pem = ""

    # ---- lifecycle

    def start(self, timeout: float = 30) -> None:
        for tool in ("pebble", "pebble-challtestsrv"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed: apt-get install pebble (scripts/setup --e2e does)")
        self.work.mkdir(parents=True, exist_ok=True)
        root = root_ca("mlox e2e: Pebble's HTTPS root")
        leaf = server_cert(root, self.address)
        self.https_root_pem = root.cert_pem
        (self.work / "https-root.pem").write_text(root.cert_pem)
        (self.work / "pebble-cert.pem").write_text(leaf.cert_pem)
        (self.work / "pebble-key.pem").write_text(leaf.key_pem)
        (self.work / "pebble-key.pem").chmod(0o600)
        config = {"pebble": {
            "listenAddress": f"{self.address}:{ACME_PORT}",
            "managementListenAddress": f"{self.address}:{MANAGEMENT_PORT}",
            "certificate": str(self.work / "pebble-cert.pem"),
            "privateKey": str(self.work / "pebble-key.pem"),
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        (self.work / "pebble-config.json").write_text(json.dumps(config, indent=2))
        dns = f"{self.address}:{DNS_PORT}"
        self._spawn("challtestsrv", [
            "pebble-challtestsrv", "-defaultIPv4", "", "-defaultIPv6", "", "-dns01", dns,
            "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"{self.address}:{DNS_MANAGEMENT_PORT}",
        ], {})
        self._wait(lambda: _tcp_open(self.address, DNS_MANAGEMENT_PORT), timeout, "challtestsrv")
        for name in self.names:
            self._dns_manage("add-a", {"host": name, "addresses": [self.target]})
        self._spawn("pebble", ["pebble", "-config", str(self.work / "pebble-config.json"), "-dnsserver", dns],
                    {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
        self._wait(lambda: self._directory_answers(), timeout, "pebble directory")

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self._procs.clear()

    def __enter__(self) -> "AcmeTestCA":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- what tests read

    def issuing_root_pem(self) -> str:
        """The root Pebble signs certificates under (new at every start)."""
        return self._get(f"https://{self.address}:{MANAGEMENT_PORT}/roots/0")

    def resolv_conf(self) -> str:
        """A resolv.conf that sends every lookup to the test DNS."""
        return f"nameserver {self.address}\noptions timeout:2 attempts:2\n"

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name in ("challtestsrv", "pebble"):
            path = self.work / f"{name}.log"
            if path.exists():
                out += [f"--- {name} ---", *path.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(out)

    # ---- helpers

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        import os

        log = open(self.work / f"{name}.log", "ab")
        self._procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **env}, start_new_session=True))
        log.close()

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) before {what} was ready\n"
                                       + self.log_tail())
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {timeout:.0f}s\n" + self.log_tail())
            time.sleep(0.2)

    def _directory_answers(self) -> bool:
        try:
            return "newOrder" in self._get(self.directory_url)
        except OSError:
            return False

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.https_root_pem)

    def _get(self, url: str) -> str:
        with urllib.request.urlopen(url, context=self._context(), timeout=5) as answer:
            return answer.read().decode()

    def _dns_manage(self, action: str, body: dict) -> None:
        request = urllib.request.Request(f"http://{self.address}:{DNS_MANAGEMENT_PORT}/{action}",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()


def _tcp_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False
