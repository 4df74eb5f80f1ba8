"""The whole stack: its server (two while ``mlox-iac migrate`` moves it), the services in
dependency order, and a bundle per server.

Resources of a server are named after it (``mlox:server``, default ``main``), so a move
to another host of the same provider creates new resources beside the old ones instead of
replacing them. The services' credentials are generated once and written to every server.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pulumi

from mlox_iac.components.bundle import Bundle
from mlox_iac.components.server import Server
from mlox_iac.components.services.base import Context
from mlox_iac.components.services.registry import SERVICES
from mlox_iac.config.model import StackConfig


@dataclass(frozen=True)
class Target:
    """What a service component needs of one server: how to reach it, and what to wait for."""

    name: str
    connection: object
    user: str
    public_address: pulumi.Output[str]
    ready: pulumi.Resource


@dataclass(frozen=True)
class ServerPlan:
    """One server of the stack: its resource name, the config it is built from, and its role."""

    name: str
    config: StackConfig
    serving: bool  # the stack's outputs point at it
    protect: bool  # kept, stopped, until ``mlox-iac migrate --finish``


def server_plans(config: StackConfig) -> list[ServerPlan]:
    """The servers a config describes: one, or the old and the new one during a migration."""
    move = config.migration
    if move is None:
        return [ServerPlan(config.server, config, serving=True, protect=False)]
    new = config.for_target(move.to)
    after_cutover = move.state != "provisioning"
    if move.source_address:
        # The old server pushes the data to the new one over SSH: admit it there.
        new = new.model_copy(update={"ssh": _admit(new.ssh, move.source_address)})
    if not after_cutover:
        # Until the cutover the new server holds only a copy: abort may delete its data.
        new = new.model_copy(update={"keep_data_on_destroy": False})
    old = config
    if move.return_address:
        # Aborting after the cutover: the new server sends the data back to the old one.
        old = old.model_copy(update={"ssh": _admit(old.ssh, move.return_address)})
    if move.state == "finishing" and config.provider != "onprem":
        # --finish deletes the old cloud server with its volume (its data is verified on the
        # new one); an on-prem host keeps its data directory (the machine is the user's).
        old = old.model_copy(update={"keep_data_on_destroy": False})
    return [
        ServerPlan(config.server, old, serving=not after_cutover, protect=move.state == "cutover"),
        ServerPlan(move.server, new, serving=after_cutover, protect=False),
    ]


class MloxStack(pulumi.ComponentResource):
    """Everything one stack deploys; its outputs are what users and ``mlox-iac`` connect with."""

    outputs: dict

    def __init__(self, name: str, config: StackConfig, build_dir: Path, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:stack:Stack", name, {}, opts)
        child = pulumi.ResourceOptions(parent=self)
        ctx = Context(config)
        plans = server_plans(config)
        servers, bundles, targets = {}, {}, []
        for plan in plans:
            # protect is inherited by every child: the old server's machine, volume and commands.
            opts_ = pulumi.ResourceOptions(parent=self, protect=plan.protect)
            server = Server(plan.name, plan.config, opts=opts_)
            # One build directory per server (the bundles are the same but written separately).
            where = build_dir if plan.name == config.server else build_dir / plan.name
            bundle = Bundle(f"{plan.name}-bundle", Context(plan.config), server, build_dir=where, opts=opts_)
            servers[plan.name], bundles[plan.name] = server, bundle
            # Services write their env files once the bundle they re-apply is on the server.
            targets.append(Target(plan.name, server.connection, server.user, server.public_address, ready=bundle.copy))
        services: dict = {}
        for service in config.enabled_services():
            services[service] = SERVICES[service].component(service, ctx, targets, services, opts=child)
        ups = {}
        for plan in plans:
            ups[plan.name] = bundles[plan.name].apply(
                [s.env_commands[plan.name] for s in services.values() if plan.name in s.env_commands])
        serving = next(p for p in plans if p.serving)
        backup = None
        if config.backup is not None:
            from mlox_iac.components.backup import Backup

            # One name whatever the server (its repository password must never change); it
            # runs on the serving server only, so the old one stops backing up at the cutover.
            serving_target = next(t for t in targets if t.name == serving.name)
            backup = Backup("main-backup", ctx, serving_target, bundles[serving.name].bundle_hash,
                            after=[ups[serving.name]], opts=child)
        self.outputs = _stack_outputs(serving.config, ctx, serving.name, servers[serving.name], services,
                                      bundles[serving.name])
        if backup is not None:
            # Without this password the backups cannot be read: shown by `outputs --show-secrets`.
            self.outputs["backup_password"] = pulumi.Output.secret(backup.repository_password)
            self.outputs["backup_repository"] = config.backup.repository
            self.outputs["backup_schedule"] = config.backup.schedule
        if config.migration is not None:
            # How mlox-iac migrate reaches each server (the same keys as the stack's own outputs).
            self.outputs["migration"] = {
                "from": config.provider, "to": config.migration.to, "state": config.migration.state,
                **{role: {"server": p.name, "server_address": servers[p.name].public_address,
                          "ssh_user": servers[p.name].user, "ssh_port": _ssh_port(p.config),
                          "ssh_host_keys": servers[p.name].host_keys}
                   for role, p in zip(("old", "new"), plans)},
            }
        self.register_outputs({})


def _stack_outputs(config: StackConfig, ctx: Context, name: str, server: Server, services: dict, bundle: Bundle) -> dict:
    """Service URLs and user names in clear; passwords and keys as secrets."""
    from mlox_iac import faces
    from mlox_iac.components.services import caddy

    address = server.public_address
    routes = {r.name: r for r in caddy.all_routes(ctx)}
    urls = {name: address.apply(lambda a, r=r: ctx.public_url(r, a)) for name, r in routes.items()}
    out: dict = {
        "provider": config.provider,
        "server": name,
        "server_address": address,
        "ssh_user": server.user,
        "ssh_port": _ssh_port(config),
        "ssh_host_keys": server.host_keys,
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
        from mlox_iac.components.services import seaweedfs

        # An external store is reached at its own endpoint, with its own keys and bucket names.
        external = seaweedfs.external(ctx)
        out["s3_endpoint"] = external.endpoint if external is not None else urls["s3"]
        out["s3_access_key"] = pulumi.Output.secret(store.access_key)
        out["s3_secret_key"] = pulumi.Output.secret(store.secret_key)
        out["s3_buckets"] = [seaweedfs.bucket_name(ctx, b) for b in seaweedfs.buckets(ctx)]
    out["parts"] = parts_output(config)
    if "mlflow" in services:
        out["mlflow_tracking_uri"] = urls["mlflow"]
    # Services with their own login (auth "own") name its password as `login_password`.
    logins = {n: s.login_password for n, s in services.items() if getattr(s, "login_password", None) is not None}
    out["login_passwords"] = pulumi.Output.secret(logins)
    tokens = {n: s.api_token for n, s in services.items() if getattr(s, "api_token", None) is not None}
    out["api_tokens"] = pulumi.Output.secret(tokens)
    # The credentials a client face reads from no other output (databases for mlox-client).
    wanted = faces.client_secret_names()
    secrets = {k: v for s in services.values() for k, v in (getattr(s, "client_secrets", None) or {}).items()
               if k in wanted}
    out["client_secrets"] = pulumi.Output.secret(secrets)
    return out


def parts_output(config: StackConfig) -> dict:
    """Where each part's data lives (``local`` or the external endpoint): ``status`` probes the
    external ones, ``up`` refuses to switch a deployed part without ``migrate --part``."""
    from mlox_iac.components.services import postgres, seaweedfs

    ctx = Context(config)
    out: dict = {}
    if config.service_enabled(seaweedfs.NAME):
        store = seaweedfs.external(ctx)
        out["objects"] = ({"uses": "external", "endpoint": store.endpoint, "ca": store.ca} if store is not None
                          else {"uses": "local"})
    if config.service_enabled(postgres.NAME):
        server = postgres.external(ctx)
        out["postgres"] = ({"uses": "external", "host": server.host, "port": server.port, "sslmode": server.sslmode,
                            "ca": server.ca} if server is not None else {"uses": "local"})
    if config.part_move is not None:
        out["moving"] = config.part_move.model_dump()
    return out


def _admit(ssh, address: str):
    """SSH settings that also let ``address`` in (the other server of a move)."""
    return ssh.model_copy(update={"admin_cidrs": [*ssh.admin_cidrs, str(ipaddress.ip_network(address))]})


def _ssh_port(config: StackConfig) -> int:
    return config.onprem.port if config.provider == "onprem" and config.onprem else 22
