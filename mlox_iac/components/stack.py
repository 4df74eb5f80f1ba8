"""The whole stack: one server, its services in dependency order, and the bundle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi

from mlox_iac.components.bundle import Bundle
from mlox_iac.components.server import Server
from mlox_iac.components.services.base import Context
from mlox_iac.components.services.registry import SERVICES
from mlox_iac.config.model import StackConfig

SERVER_NAME = "main"


@dataclass(frozen=True)
class Target:
    """What a service component needs of its server: how to reach it, and what to wait for."""

    connection: object
    user: str
    public_address: pulumi.Output[str]
    ready: pulumi.Resource


class MloxStack(pulumi.ComponentResource):
    """Everything one stack deploys; its outputs are what users and ``mlox-iac`` connect with."""

    outputs: dict

    def __init__(self, name: str, config: StackConfig, build_dir: Path, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:stack:Stack", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)
        ctx = Context(config)
        server = Server(SERVER_NAME, config, opts=child)
        bundle = Bundle(f"{SERVER_NAME}-bundle", ctx, server, build_dir=build_dir, opts=child)
        # Services write their env files once the bundle they re-apply is on the server.
        target = Target(server.connection, server.user, server.public_address, ready=bundle.copy)
        services: dict = {}
        for service in config.enabled_services():
            services[service] = SERVICES[service].component(service, ctx, target, services, opts=child)
        bundle.apply([s.env_command for s in services.values() if s.env_command is not None])
        self.outputs = _stack_outputs(config, ctx, server, services, bundle)
        self.register_outputs({})


def _stack_outputs(config: StackConfig, ctx: Context, server: Server, services: dict, bundle: Bundle) -> dict:
    """Service URLs and user names in clear; passwords and keys as secrets."""
    from mlox_iac.components.services import caddy

    address = server.public_address
    routes = {r.name: r for r in caddy.all_routes(ctx)}
    urls = {name: address.apply(lambda a, r=r: ctx.public_url(r, a)) for name, r in routes.items()}
    out: dict = {
        "provider": config.provider,
        "server_address": address,
        "ssh_user": server.user,
        "ssh_port": config.onprem.port if config.provider == "onprem" and config.onprem else 22,
        "services": config.enabled_services(),
        "urls": urls,
        "bundle_hash": bundle.bundle_hash,
        "tls": "acme" if config.domain else "internal",
    }
    proxy = services.get("caddy")
    if proxy is not None:
        out["ui_user"] = proxy.ui_user
        out["ui_passwords"] = pulumi.Output.secret(proxy.ui_passwords)
    store = services.get("seaweedfs")
    if store is not None:
        from mlox_iac.components.services.seaweedfs import buckets

        out["s3_endpoint"] = urls["s3"]
        out["s3_access_key"] = pulumi.Output.secret(store.access_key)
        out["s3_secret_key"] = pulumi.Output.secret(store.secret_key)
        out["s3_buckets"] = buckets(ctx)
    if "mlflow" in services:
        out["mlflow_tracking_uri"] = urls["mlflow"]
    # Services with their own login (auth "own") name its password as `login_password`.
    logins = {n: s.login_password for n, s in services.items() if getattr(s, "login_password", None) is not None}
    out["login_passwords"] = pulumi.Output.secret(logins)
    tokens = {n: s.api_token for n, s in services.items() if getattr(s, "api_token", None) is not None}
    out["api_tokens"] = pulumi.Output.secret(tokens)
    return out
