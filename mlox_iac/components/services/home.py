"""Home: the stack's own front page, behind the proxy's basic auth.

Without a domain it is the bare address's root page (``https://<address>/``); with one,
``home.<domain>``. It lists every service with a link and its health (asked on the Compose
network, past the proxy), the last backup's age and result (the server's backup state, read
only), and the Prometheus and Alertmanager pages when monitoring runs.

The S3 API stays at the bare root: without a domain only a plain ``GET``/``HEAD`` of ``/``
that carries no S3 signature (no ``Authorization: AWS...`` header, no query string) is the
home page (:data:`ROOT_MATCHER`); every signed request, ``ListBuckets`` included, still
reaches SeaweedFS, so no client setting changes.

The page is one standard-library program (``programs/home_page.py``) run with MLflow's
image (its Python, already on the server: no image of its own); what it lists is rendered
here into ``home/home.json``, which holds no secret.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from mlox_iac.components.services import programs
from mlox_iac.components.services.base import (
    Context, Data, Face, Managed, Route, Service, ServiceComponent, ServiceSettings, digest, hc,
    http_check, limits,
)

if TYPE_CHECKING:
    import pulumi

NAME = "home"
PORT = 8080
MEMORY_MB = 32  # measured: 17 MiB resident serving the page with 14 services probed
BACKUP_STATE = "/var/lib/mlox-backup"  # mlox_iac.data.backup.STATE_DIR on the server
PROGRAM = "home/home_page.py"
LISTING = "home/home.json"
# The requests that are the home page at the bare address: a browser's, never an S3 client's
# (SigV2 and SigV4 both sign in an "AWS..." Authorization header, or in the query string).
ROOT_MATCHER = ("method GET HEAD", "path /", "not header Authorization AWS*", 'expression {query} == ""')


class Settings(ServiceSettings):
    """The stack's home page: every service with its link and health, the last backup."""


def _image() -> str:
    from mlox_iac.components.services import mlflow

    return mlflow.IMAGE


def routes(ctx: Context) -> list[Route]:
    return [Route(NAME, f"{NAME}:{PORT}", auth="basic", root_page=True)]


# People open it; clients need nothing of it but its address and the proxy's basic auth.
FACE = Face("home", route=NAME, auth="basic", health="/")


def _internal_url(ctx: Context, route: Route, health: str) -> str:
    """Where the proxy would send the route's health request, on the Compose network."""
    kept = "" if ctx.config.domain or route.strip_prefix or route.catch_all else f"/{route.name}"
    return f"http://{route.upstream}{kept}{health}"


def listing(ctx: Context) -> dict:
    """What the page lists: each route (link, how it is probed inside), the monitoring pages."""
    from mlox_iac import faces
    from mlox_iac.components.services import caddy
    from mlox_iac.components.services.registry import SERVICES

    owner = {r.name: n for n in ctx.config.enabled_services() for r in SERVICES[n].routes(ctx)}
    entries = []
    for route in caddy.all_routes(ctx):
        if route.name == NAME:
            continue
        health = faces.health_path(route.name)
        where = None if route.catch_all else (f"https://{route.name}.{ctx.config.domain}/" if ctx.config.domain
                                              else f"/{route.name}/")
        entries.append({
            "name": route.name, "service": owner[route.name],
            "version": SERVICES[owner[route.name]].image.rpartition(":")[2],
            # Relative links on the bare address (the page does not know it); a host per route with a domain.
            # An API for clients (S3, Feast, a served model) is shown by its address, not linked.
            "link": None if route.api else where,
            "address": where if route.api else None,  # None for the S3 API: the bare address itself
            "api": route.catch_all or route.api,
            "auth": route.auth,
            "probe": _internal_url(ctx, route, health),
        })
    internal = [n for n in ctx.config.enabled_services() if not SERVICES[n].routes(ctx) and n != "caddy"]
    monitoring = {e["name"]: e["link"] for e in entries if e["name"] in ("prometheus", "alertmanager")}
    return {"stack": ctx.config.stack_name, "domain": ctx.config.domain, "routes": entries, "internal": internal,
            "monitoring": monitoring, "backup": ctx.config.backup is not None}


def files(ctx: Context) -> dict[str, str]:
    return {PROGRAM: programs.source("home_page.py"), LISTING: json.dumps(listing(ctx), indent=2, sort_keys=True) + "\n"}


def compose(ctx: Context) -> dict:
    shipped = files(ctx)
    volumes = [f"./{PROGRAM}:/mlox/home_page.py:ro", f"./{LISTING}:/mlox/home.json:ro"]
    if ctx.config.backup is not None:
        volumes.append(f"{BACKUP_STATE}:/mlox/backup:ro")
    return {"services": {NAME: {
        "image": _image(),
        "restart": "unless-stopped",
        "command": ["python3", "/mlox/home_page.py"],
        "environment": {"PORT": str(PORT), "LISTING": "/mlox/home.json", "BACKUP_STATE": "/mlox/backup"},
        "volumes": volumes,
        "labels": {"org.mlox.config-hash": digest(*(shipped[p] for p in sorted(shipped)))},
        "healthcheck": hc(http_check(PORT, "/healthz"), start_period="5s"),
        "deploy": limits(MEMORY_MB),
    }}}


def data(ctx: Context) -> Data:
    return Data()  # nothing of its own: it reads the others' state


def managed(ctx: Context) -> tuple[Managed, ...]:
    """A managed set comes with its providers' consoles, at no charge of their own."""
    return (
        Managed(NAME, "AWS Management Console (comes with the account)", "USD", 0.0,
                "https://aws.amazon.com/console/", "2026-12-06", "no charge of its own; the services it shows are billed"),
    )


class Home(ServiceComponent):
    """The home page: no credential of its own (the proxy's basic auth guards it)."""

    def __init__(self, name: str, ctx: Context, servers, deps: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:service:Home", name, {}, opts)
        self._setup(name, servers)
        self.register_outputs({})


SERVICE = Service(
    name=NAME, image=_image(), memory_mb=MEMORY_MB, requires=("caddy",), settings=Settings,
    compose=compose, routes=routes, files=files, data=data, component=Home, managed=managed, preset="core",
    faces=(FACE,),
)
