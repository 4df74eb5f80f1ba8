"""Caddy: the reverse proxy, and the only container that publishes ports (80 and 443) beyond
the server's loopback (where Postgres and Redis meet users' SSH tunnels).

With ``mlox:domain`` set, every route is its own subdomain (``mlflow.<domain>``,
``s3.<domain>``) with automatic HTTPS from Let's Encrypt, or from the ACME CA at
``mlox:acme_ca`` (whose roots, ``mlox:acme_ca_root``, ship as a plain file in the bundle:
Caddy trusts them for the CA's directory). Inside the Compose network those host names
are aliases of Caddy, so services reach each other's public URLs (MLflow: S3) on the
server itself, whatever public DNS and the network do with a server's own address. Without a domain, Caddy
serves the server's address with a certificate from its own internal CA
(``tls internal``), UIs under a path each (``https://<address>/mlflow/``), the S3
API at the root, and the home page at the root for a browser's unsigned ``GET /``. Every route with ``auth="basic"`` gets basic auth with a generated
password per service (bcrypt hash in Caddy's env file, never in the bundle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from mlox_iac.components.services.base import (
    HOURS_PER_MONTH, Context, Data, Managed, Route, Service, ServiceComponent, ServiceSettings, digest, hc, limits,
)

if TYPE_CHECKING:
    import pulumi

NAME = "caddy"
IMAGE = "caddy:2.11.7"
MEMORY_MB = 128
# The ACME CA's roots: in the bundle, and where containers see them.
ACME_CA_ROOT_FILE = "caddy/acme-ca-root.pem"
ACME_CA_ROOT_PATH = "/etc/caddy/acme-ca-root.pem"


class Settings(ServiceSettings):
    """Caddy reverse proxy (always on: it is the only way in)."""

    ui_user: str = Field("admin", pattern=r"^[a-z][a-z0-9_-]{1,31}$", description="User name for the UIs' basic auth")


def all_routes(ctx: Context) -> list[Route]:
    """The routes of every enabled service, in registry order."""
    from mlox_iac.components.services.registry import SERVICES

    return [r for n in ctx.config.enabled_services() for r in SERVICES[n].routes(ctx)]


def auth_variable(route: Route) -> str:
    return "MLOX_AUTH_" + route.name.upper().replace("-", "_")


def _proxy(route: Route, indent: str) -> list[str]:
    # 64 KiB socket buffers to the upstream instead of Caddy's 4 KiB: 16 times fewer reads
    # and writes per object streamed through the proxy (see benchmarks/load.py).
    keepalive = [] if route.keepalive else [f"{indent}\t\tkeepalive off"]
    transport = [f"{indent}\ttransport http {{", f"{indent}\t\tread_buffer 64KiB", f"{indent}\t\twrite_buffer 64KiB",
                 *keepalive, f"{indent}\t}}"]
    # Keep the client's Host header for the routes with their own auth: S3 signatures cover it.
    host = [] if route.auth == "own" else [f"{indent}\theader_up Host {{upstream_hostport}}"]
    return [f"{indent}reverse_proxy {route.upstream} {{", *host, *transport, f"{indent}}}"]


def _auth(route: Route, indent: str) -> list[str]:
    if route.auth != "basic":
        return []
    return [f"{indent}basic_auth {{", f"{indent}\t{{$MLOX_UI_USER}} {{${auth_variable(route)}}}", f"{indent}}}"]


# The health check asks the admin API every 10 s; keep those requests out of the log.
_QUIET_ADMIN = ["\tlog {", "\t\texclude admin.api", "\t}"]
# With monitoring on: request metrics (per host, so per route with a domain) on a plain-HTTP
# listener that only the Compose network reaches (the port is not published; the admin
# API stays on localhost, where it cannot be reconfigured from other containers).
METRICS_PORT = 9180


def _metrics(ctx: Context) -> tuple[list[str], list[str]]:
    if "monitoring" not in ctx.config.enabled_services():
        return [], []
    return ["\tmetrics {", "\t\tper_host", "\t}"], ["", f"http://:{METRICS_PORT} {{", "\tmetrics /metrics", "}"]


def render_caddyfile(ctx: Context) -> str:
    """The Caddyfile: deterministic, and free of secrets (hashes come from the environment)."""
    routes = all_routes(ctx)
    config = ctx.config
    metrics_option, metrics_site = _metrics(ctx)
    lines: list[str] = []
    if config.domain:
        lines += ["{", f"\temail {config.acme_email}"]
        if config.acme_ca:
            lines += [f"\tacme_ca {config.acme_ca}"]
        if config.acme_ca_root:
            lines += [f"\tacme_ca_root {ACME_CA_ROOT_PATH}"]
        lines += [*_QUIET_ADMIN, *metrics_option, "}"]
        for route in routes:
            lines += ["", f"{route.name}.{config.domain} {{"]
            lines += _auth(route, "\t") + _proxy(route, "\t") + ["}"]
    else:
        lines += ["{", "\tdefault_sni {$MLOX_ADDRESS}", *_QUIET_ADMIN, *metrics_option, "}", "",
                  "https://{$MLOX_ADDRESS} {", "\ttls internal"]
        for route in (r for r in routes if r.root_page):
            from mlox_iac.components.services.home import ROOT_MATCHER

            lines += [f"\t@{route.name} {{", *(f"\t\t{m}" for m in ROOT_MATCHER), "\t}", f"\thandle @{route.name} {{"]
            lines += _auth(route, "\t\t") + _proxy(route, "\t\t") + ["\t}"]
        for route in (r for r in routes if not r.catch_all and not r.root_page):
            handle = "handle_path" if route.strip_prefix else "handle"
            lines += [f"\tredir /{route.name} /{route.name}/", f"\t{handle} /{route.name}/* {{"]
            lines += _auth(route, "\t\t") + _proxy(route, "\t\t") + ["\t}"]
        for route in (r for r in routes if r.catch_all):
            lines += ["\thandle {"] + _auth(route, "\t\t") + _proxy(route, "\t\t") + ["\t}"]
        lines += ["}"]
    lines += metrics_site
    return "\n".join(lines) + "\n"


INTERNAL_CA_DIR = "/mlox/caddy-ca"  # where containers that reach the server's own address find its CA


def internal_ca_mount(ctx: Context) -> list[str]:
    """Caddy's internal CA (the folder of its root.crt), read-only at ``INTERNAL_CA_DIR``: what
    a container verifies the server's own address against when the stack has no domain."""
    return [f"{ctx.data_dir}/volumes/caddy-data/caddy/pki/authorities/local:{INTERNAL_CA_DIR}:ro"]


def acme_ca_root_mount(ctx: Context) -> list[str]:
    """The compose volume entry that shows a container the ACME CA's roots, if the stack has them."""
    return [f"./{ACME_CA_ROOT_FILE}:{ACME_CA_ROOT_PATH}:ro"] if ctx.config.acme_ca_root else []


def compose(ctx: Context) -> dict:
    shipped = files(ctx)
    caddy: dict = {
        "image": IMAGE,
        "restart": "unless-stopped",
        "env_file": ctx.env_files(NAME),
        "ports": ["80:80", "443:443"],
        "volumes": ["caddy-data:/data", "caddy-config:/config", "./caddy/Caddyfile:/etc/caddy/Caddyfile:ro",
                    *acme_ca_root_mount(ctx)],
        # A changed Caddyfile (or CA root) changes this label, so Compose recreates the container.
        "labels": {"org.mlox.config-hash": digest(*(shipped[path] for path in sorted(shipped)))},
        "healthcheck": hc(["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:2019/config/"], start_period="5s"),
        "deploy": limits(MEMORY_MB),
    }
    if ctx.config.domain:
        caddy["networks"] = {"default": {"aliases": [f"{r.name}.{ctx.config.domain}" for r in all_routes(ctx)]}}
    return {
        "services": {"caddy": caddy},
        "volumes": {"caddy-data": ctx.volume("caddy-data"), "caddy-config": ctx.volume("caddy-config")},
    }


def routes(ctx: Context) -> list[Route]:
    return []


def files(ctx: Context) -> dict[str, str]:
    out = {"caddy/Caddyfile": render_caddyfile(ctx)}
    if ctx.config.acme_ca_root:
        out[ACME_CA_ROOT_FILE] = ctx.config.acme_ca_root.strip() + "\n"  # public certificates, no secret
    return out


def data(ctx: Context) -> Data:
    # Certificates and the internal CA clients trust: a restored server keeps its identity.
    return Data(volumes=("caddy-data",), not_kept={"caddy-config": "Caddy's autosave, rewritten from the Caddyfile at start"})


READ_ON = "2026-11-26"  # when the managed equivalents' prices below were read


def managed(ctx: Context) -> tuple[Managed, ...]:
    """Managed load balancers (TLS termination and routing), smallest tier."""
    return (
        Managed(NAME, "AWS Application Load Balancer (before LCUs)", "USD", round(0.0225 * HOURS_PER_MONTH, 2),
                "https://aws.amazon.com/elasticloadbalancing/pricing/", READ_ON, "730 h × USD 0.0225/h, us-east-1"),
        Managed(NAME, "DigitalOcean Load Balancer, 1 node", "USD", 12.0,
                "https://www.digitalocean.com/pricing/load-balancers", READ_ON),
        Managed(NAME, "Hetzner Load Balancer LB11", "EUR", 7.49, "https://www.hetzner.com/cloud/load-balancer/",
                READ_ON, "EUR 5.39 before 2026-04-01"),
    )


class Caddy(ServiceComponent):
    """The proxy: one generated UI password per basic-auth route, hashes in its env file."""

    ui_user: str
    ui_passwords: dict

    def __init__(self, name: str, ctx: Context, servers, deps: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:service:Caddy", name, {}, opts)
        self._setup(name, servers)
        self.ui_user = ctx.config.service(NAME).ui_user
        passwords = {r.name: self.password(f"ui-{r.name}", length=24) for r in all_routes(ctx) if r.auth == "basic"}
        self.ui_passwords = {route: p.result for route, p in passwords.items()}
        values: dict = {"MLOX_UI_USER": self.ui_user, "MLOX_ADDRESS": lambda target: target.public_address}
        values.update({auth_variable(Route(r, "", "basic")): p.bcrypt_hash for r, p in passwords.items()})
        self.write_env(NAME, values, ["caddy"])
        self.register_outputs({"ui_passwords": self.ui_passwords})


SERVICE = Service(
    name=NAME, image=IMAGE, memory_mb=MEMORY_MB, requires=(), settings=Settings,
    compose=compose, routes=routes, files=files, data=data, component=Caddy, managed=managed, preset="core",
)
