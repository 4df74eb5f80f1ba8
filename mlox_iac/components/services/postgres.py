"""PostgreSQL: one database and one user per service that needs one, on the data volume.

Besides the services' databases, one for the team's own tables: ``data`` (role ``data``).
Not reachable from outside the server: services reach it as ``postgres:5432`` on the
Compose network, and it is published on the server's loopback only
(``127.0.0.1:15432``), where a user's SSH tunnel reaches it (``mlox-client`` opens one
with the user's own key; only the admin networks reach port 22). Roles and databases are
created, and every password (the superuser's too) set to the stack's generated one, by the
``postgres-provision`` step whenever its env file changes.

The step connects through Postgres' Unix socket, in a volume the two containers share,
where the image trusts local connections: it needs no password to get in. So a kept data
directory takes the passwords of the stack deploying onto it (a new ``up`` after
``destroy`` kept the data, or a replaced superuser password), although Postgres itself
reads ``POSTGRES_PASSWORD`` only when it creates the data directory.

Or an external Postgres (``external``: a managed database such as RDS or DigitalOcean's):
then no Postgres runs on the server; the provisioning step creates the same roles and
databases there as the admin role given, and every service connects to it with
``sslmode`` verify-full (or verify-ca) against the CA given: TLS is never off.
``mlox-iac migrate --part postgres`` moves the databases between the two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from mlox_iac.components.services.base import (
    HOURS_PER_MONTH, QUICK_CHECK_S, Context, Data, Managed, Service, ServiceComponent, ServiceSettings, digest, hc,
    limits, provisioner, Face,
)

if TYPE_CHECKING:
    import pulumi

NAME = "postgres"
IMAGE = "postgres:15.18-bookworm"
MEMORY_MB = 512
SUPERUSER = "postgres"
PORT = 5432
USER_DATABASE = "data"  # the team's own tables; kept like every service's database
# Published on the server's loopback (not its network): the end of a user's SSH tunnel. Not
# 5432, which an on-prem host may already use for a Postgres of its own.
TUNNEL_PORT = 15432
# Postgres' Unix socket directory in the image; shared with postgres-provision through a volume.
SOCKET_DIR = "/var/run/postgresql"


PART = "postgres"  # what mlox-iac migrate --part calls this service's data
CA_FILE = "postgres/external-ca.pem"  # in the bundle: the external server's CA
CA_PATH = "/etc/mlox/postgres-ca.pem"  # where containers that connect see it


class ExternalPostgres(BaseModel):
    """A Postgres server run by a provider, used instead of the stack's own."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="Host name (or address) of the server, as its certificate names it")
    port: int = Field(5432, ge=1, le=65535, description="Its port")
    admin_user: str = Field("postgres", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,62}$",
                            description="A role that may create roles and databases (the provider's admin)")
    admin_password: SecretStr = Field(description="That role's password (a Pulumi secret)")
    admin_database: str = Field("postgres", pattern=r"^[a-zA-Z_][a-zA-Z0-9_-]{0,62}$",
                                description="The database the admin role connects to")
    sslmode: Literal["verify-full", "verify-ca"] = Field(
        "verify-full", description="How the server's certificate is checked (TLS is never off)")
    ca: str = Field(description="PEM CA certificate(s) that signed the server's certificate (the provider's CA file)")
    in_use: bool = Field(True, description="Whether the services use this server (mlox-iac migrate --part sets it; "
                         "false keeps these settings while the databases live on the server)")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        import ipaddress
        import re

        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        if not re.fullmatch(r"(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*"
                            r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", value):
            raise ValueError(f"{value!r} is not a host name or address (allowed: e.g. db.example.com, 10.0.0.5)")
        return value

    @field_validator("ca")
    @classmethod
    def _ca(cls, value: str) -> str:
        from mlox_iac.config.model import check_ca_certificates

        return check_ca_certificates(value)


class Settings(ServiceSettings):
    """PostgreSQL database server (or an external one)."""

    external: ExternalPostgres | None = Field(None, description="Use this Postgres server instead of running one")


def external(ctx: Context) -> ExternalPostgres | None:
    """The external server when the services use it, else None."""
    return ctx.config.service(NAME).external if ctx.config.part_external(PART) else None


def local(ctx: Context) -> bool:
    """Whether Postgres runs on the server (no external one, or while a move keeps it)."""
    return ctx.config.part_local(PART)


def address(ctx: Context) -> tuple[str, int]:
    """(host, port) the stack's containers connect to."""
    server = external(ctx)
    return (server.host, server.port) if server is not None else (NAME, PORT)


def tls_mounts(ctx: Context) -> list[str]:
    """The external server's CA, mounted read-only into a container that connects to it."""
    return [f"./{CA_FILE}:{CA_PATH}:ro"] if external(ctx) is not None else []


def _tls(server: ExternalPostgres | None) -> dict[str, str]:
    return {"PGSSLMODE": server.sslmode, "PGSSLROOTCERT": CA_PATH} if server is not None else {}


def tls_environment(ctx: Context) -> dict[str, str]:
    """libpq's ``PGSSLMODE`` and ``PGSSLROOTCERT`` (psycopg, psycopg2 and asyncpg read them) for
    a container that connects to an external server; nothing for the stack's own."""
    return _tls(external(ctx))


def memory(ctx: Context) -> int:
    return MEMORY_MB if local(ctx) else 0


def databases(ctx: Context) -> list[str]:
    """One database (and a login role of the same name) per database an enabled service declares
    (this one's own first: the team's)."""
    from mlox_iac.components.services.registry import SERVICES

    wanted = [db for n in ctx.config.enabled_services() for db in SERVICES[n].data(ctx).databases]
    return list(dict.fromkeys(wanted))


def password_variable(database: str) -> str:
    return "MLOX_DB_PASSWORD_" + database.upper().replace("-", "_")


PROVISION_SH = f"""\
#!/bin/sh
# Set the superuser's password, create or update one role and one database per service.
# Safe to run any number of times. Over the Unix socket, which the image trusts: no old
# password is needed, so kept data takes this stack's passwords.
set -eu
export PGHOST={SOCKET_DIR}
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres --set=role="$POSTGRES_USER" \\
  --set=password="$POSTGRES_PASSWORD" <<'SQL'
ALTER ROLE :"role" WITH PASSWORD :'password';
SQL
echo "superuser $POSTGRES_USER ready"
for db in $MLOX_DATABASES; do
  var="MLOX_DB_PASSWORD_$(echo "$db" | tr 'a-z-' 'A-Z_')"
  password="$(printenv "$var")"
  psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \\
    --set=role="$db" --set=password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\\gexec
ALTER ROLE :"role" WITH LOGIN PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'role', :'role') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'role')\\gexec
SQL
  echo "database $db ready"
done
"""


# The same roles and databases on an external server, as its admin role over verified TLS
# (PGSSLMODE, PGSSLROOTCERT). That role is usually not a superuser: it joins each service's
# role, so it may create that role's database and, later, move its data.
EXTERNAL_PROVISION_SH = """\
#!/bin/sh
# Create or update one role and one database per service on the external server. Safe to run any number of times.
set -eu
export PGPASSWORD="$EXTERNAL_POSTGRES_PASSWORD"
for db in $MLOX_DATABASES; do
  var="MLOX_DB_PASSWORD_$(echo "$db" | tr 'a-z-' 'A-Z_')"
  password="$(printenv "$var")"
  psql -v ON_ERROR_STOP=1 -h "$MLOX_PGHOST" -p "$MLOX_PGPORT" -U "$MLOX_PGUSER" -d "$MLOX_PGDATABASE" \\
    --set=role="$db" --set=password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\\gexec
ALTER ROLE :"role" WITH LOGIN PASSWORD :'password';
SELECT format('GRANT %I TO %I', :'role', current_user) WHERE NOT pg_has_role(current_user, :'role', 'MEMBER')\\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'role', :'role') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'role')\\gexec
SQL
  echo "database $db ready"
done
"""


def _external_provision(ctx: Context, server: ExternalPostgres) -> dict:
    return {
        "image": IMAGE,
        **provisioner("/bin/sh /mlox/provision.sh"),
        "env_file": ctx.env_files(NAME),
        "environment": {"MLOX_DATABASES": " ".join(databases(ctx)), "MLOX_PGHOST": server.host,
                        "MLOX_PGPORT": str(server.port), "MLOX_PGUSER": server.admin_user,
                        "MLOX_PGDATABASE": server.admin_database, **_tls(server)},
        "volumes": ["./postgres/provision-external.sh:/mlox/provision.sh:ro", f"./{CA_FILE}:{CA_PATH}:ro"],
        "labels": {"org.mlox.config-hash": digest(EXTERNAL_PROVISION_SH, server.ca)},
        "deploy": limits(64),
    }


def compose(ctx: Context) -> dict:
    """The provisioning step of the side the services use is ``postgres-provision`` (what they
    wait for); while a move keeps both, the other side's is ``-external`` or ``-local``."""
    env_file = ctx.env_files(NAME)
    part: dict = {"services": {}}
    server = ctx.config.service(NAME).external
    in_use = external(ctx) is not None
    if server is not None:
        part["services"]["postgres-provision" if in_use else "postgres-provision-external"] = \
            _external_provision(ctx, server)
    if not local(ctx):
        return part
    own = {
        "services": {
            "postgres": {
                "image": IMAGE,
                "restart": "unless-stopped",
                "env_file": env_file,
                "volumes": ["postgres-data:/var/lib/postgresql/data", f"postgres-socket:{SOCKET_DIR}"],
                "ports": [f"127.0.0.1:{TUNNEL_PORT}:{PORT}"],
                "healthcheck": hc(["CMD", "pg_isready", "-U", SUPERUSER, "-d", "postgres"], interval_s=QUICK_CHECK_S),
                "deploy": limits(MEMORY_MB),
            },
            "postgres-provision": {
                "image": IMAGE,
                **provisioner("/bin/sh /mlox/provision.sh"),
                "env_file": env_file,
                "environment": {"MLOX_DATABASES": " ".join(databases(ctx))},
                "volumes": ["./postgres/provision.sh:/mlox/provision.sh:ro", f"postgres-socket:{SOCKET_DIR}"],
                # A changed script changes this label, so Compose recreates (and reruns) the container.
                "labels": {"org.mlox.config-hash": digest(PROVISION_SH)},
                "depends_on": {"postgres": {"condition": "service_healthy"}},
                "deploy": limits(64),
            },
        },
        "volumes": {"postgres-data": ctx.volume("postgres-data"), "postgres-socket": ctx.runtime_volume()},
    }
    if in_use:  # kept running for a move: its own provisioning step under another name
        own["services"]["postgres-provision-local"] = own["services"].pop("postgres-provision")
    part["services"].update(own["services"])
    part["volumes"] = own["volumes"]
    return part


def routes(ctx: Context) -> list:
    return []  # internal only


# The team's database: directly on the Compose network inside the stack; from outside
# through an SSH tunnel to the loopback address (no route: the proxy speaks HTTP only).
FACE = Face(
    "postgres", route=None, auth="password", extra="sql",
    settings={"address": ("MLOX_POSTGRES_ADDRESS", None),
              "tunnel": ("MLOX_POSTGRES_TUNNEL", f"=127.0.0.1:{TUNNEL_PORT}"),
              "database": ("MLOX_POSTGRES_DATABASE", f"={USER_DATABASE}"),
              "user": ("MLOX_POSTGRES_USER", f"={USER_DATABASE}"),
              "password": ("MLOX_POSTGRES_PASSWORD", "client_secrets.MLOX_POSTGRES_PASSWORD")},
    inside=lambda ctx, route: {"address": f"{NAME}:{PORT}", "database": USER_DATABASE, "user": USER_DATABASE},
)


def files(ctx: Context) -> dict[str, str]:
    out = {"postgres/provision.sh": PROVISION_SH}
    server = ctx.config.service(NAME).external
    if server is not None:  # shipped while configured (also during a move, for the copy's psql)
        out.update({"postgres/provision-external.sh": EXTERNAL_PROVISION_SH, CA_FILE: server.ca})
    return out


def data(ctx: Context) -> Data:
    # Every other database belongs to the service that declares it; each is kept as a dump.
    return Data(databases=(USER_DATABASE,),
                not_kept={"postgres-data": "cluster files: each service's databases are kept as dumps, with their roles",
                          "postgres-socket": "the server's Unix socket, shared with postgres-provision: nothing stored"}
                if local(ctx) else {})


READ_ON = "2026-11-26"  # when the managed equivalents' prices below were read


def managed(ctx: Context) -> tuple[Managed, ...]:
    """Managed PostgreSQL at its smallest tier."""
    return (
        Managed(NAME, "Amazon RDS for PostgreSQL db.t4g.micro, single-AZ, 20 GB gp2", "USD",
                round(0.016 * HOURS_PER_MONTH + 20 * 0.115, 2), "https://aws.amazon.com/rds/postgresql/pricing/",
                READ_ON, "730 h × USD 0.016/h plus 20 GB × USD 0.115 a month, us-east-1"),
        Managed(NAME, "DigitalOcean Managed PostgreSQL, 1 GiB single node", "USD", 15.15,
                "https://www.digitalocean.com/pricing/managed-databases", READ_ON),
    )


class Postgres(ServiceComponent):
    """The Postgres service: superuser and per-service passwords, and its env file."""

    superuser_password: pulumi.Output[str]

    def __init__(self, name: str, ctx: Context, servers, deps: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:service:Postgres", name, {}, opts)
        self._setup(name, servers)
        import pulumi

        superuser = self.password("superuser")
        self.database_passwords = {db: self.password(f"db-{db}") for db in databases(ctx)}
        self.superuser_password = superuser.result
        # What clients in the stack's containers get in their env files (the face's secret).
        self.client_secrets = {"MLOX_POSTGRES_PASSWORD": self.database_password(USER_DATABASE)}
        values = {"POSTGRES_USER": SUPERUSER, "POSTGRES_PASSWORD": superuser.result, "POSTGRES_DB": "postgres"}
        values.update({password_variable(db): p.result for db, p in self.database_passwords.items()})
        server = ctx.config.service(NAME).external
        if server is not None:
            values["EXTERNAL_POSTGRES_PASSWORD"] = pulumi.Output.secret(server.admin_password.get_secret_value())
        self.write_env(NAME, values, sorted(compose(ctx)["services"]))
        self.register_outputs({"superuser_password": self.superuser_password})

    def database_password(self, database: str) -> pulumi.Output[str]:
        return self.database_passwords[database].result


SERVICE = Service(
    name=NAME, image=IMAGE, memory_mb=MEMORY_MB, requires=(), settings=Settings,
    compose=compose, routes=routes, files=files, data=data, component=Postgres, managed=managed, preset="core",
    memory=memory, faces=(FACE,),
)
