"""MLflow tracking server and model registry.

Backend store in Postgres (its own database and role), artifacts in the SeaweedFS
bucket ``mlflow-artifacts``, served through MLflow's artifact proxy so clients need no
S3 credentials. MLflow reaches S3 at its public URL (through Caddy): the server hands
clients presigned S3 URLs for large downloads and multipart uploads, and those must work
from outside. With a domain that URL's host name is an alias of Caddy inside the Compose
network (see caddy.py), and the certificate is verified: against the image's public roots,
or against ``mlox:acme_ca_root`` for a custom ACME CA. Behind the proxy with basic auth;
the MLflow client sends it from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.
The Flask secret is generated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from mlox_iac.components.services.base import (
    Context, Data, Face, Managed, QUICK_CHECK_S, Route, Service, ServiceComponent, ServiceSettings,
    hc, http_check, limits,
)
from mlox_iac.components.services import caddy

if TYPE_CHECKING:
    import pulumi

NAME = "mlflow"
IMAGE = "ghcr.io/mlflow/mlflow:v3.17.2-full"
MEMORY_MB = 1024
PORT = 5000
DATABASE = NAME  # runs, metrics, the model registry
BUCKET = "mlflow-artifacts"  # artifacts and model files, through MLflow's artifact proxy


class Settings(ServiceSettings):
    """MLflow tracking server and model registry."""

    workers: int = Field(2, ge=1, le=8, description="Server worker processes (each needs about 250 MiB)")


def prefix(ctx: Context) -> str:
    """Path prefix of every MLflow route: none with a domain, ``/mlflow`` on the bare address."""
    return "" if ctx.config.domain else f"/{NAME}"


def compose(ctx: Context) -> dict:
    from mlox_iac.components.services import postgres, seaweedfs

    db_host, db_port = postgres.address(ctx)
    command = [
        "mlflow", "server", "--host", "0.0.0.0", "--port", str(PORT),
        "--workers", str(ctx.config.service(NAME).workers),
        # The password comes from PGPASSWORD in the env file, never from this URI.
        "--backend-store-uri", f"postgresql+psycopg2://mlflow@{db_host}:{db_port}/mlflow",
        "--serve-artifacts", "--artifacts-destination", f"s3://{seaweedfs.bucket_name(ctx, BUCKET)}",
        # Requests arrive through Caddy, which sets the Host header to the upstream.
        "--allowed-hosts", f"{NAME}:{PORT},localhost:{PORT},127.0.0.1:{PORT}",
        # Uvicorn kills a worker that does not answer its supervisor within 5 s; on a busy
        # 2-core server (a full preset starting) a worker's imports take longer, and it is
        # killed and restarted in a loop.
        "--uvicorn-opts", "--timeout-worker-healthcheck 60",
    ]
    if prefix(ctx):
        command += ["--static-prefix", prefix(ctx)]
    health_path = f"{prefix(ctx)}/health"
    environment = {
        "AWS_DEFAULT_REGION": seaweedfs.region(ctx),
        # The background job runner (GenAI scoring) needs ~1.5 GiB more; off on small servers.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **postgres.tls_environment(ctx),
    }
    volumes = postgres.tls_mounts(ctx)
    if seaweedfs.external(ctx) is not None:
        # An external store's certificate is verified: against the public roots, or its own CA.
        volumes += seaweedfs.ca_mounts(ctx)
        environment.update(seaweedfs.ca_environment(ctx))
    elif not ctx.config.domain:
        # S3 is reached at the server's own address through Caddy: boto3 verifies its
        # certificate against Caddy's internal CA (verification is never turned off).
        volumes += caddy.internal_ca_mount(ctx)
        environment["AWS_CA_BUNDLE"] = f"{caddy.INTERNAL_CA_DIR}/root.crt"
    elif ctx.config.acme_ca_root:
        # A custom ACME CA issued S3's certificate: boto3 verifies against its roots.
        volumes += caddy.acme_ca_root_mount(ctx)
        environment["AWS_CA_BUNDLE"] = caddy.ACME_CA_ROOT_PATH
    return {
        "services": {
            "mlflow": {
                "image": IMAGE,
                "restart": "unless-stopped",
                "env_file": ctx.env_files(NAME),
                "environment": environment,
                **({"volumes": volumes} if volumes else {}),
                "command": command,
                "healthcheck": hc(
                    # Cheap (bash alone), so it can run every few seconds: services wait for
                    # MLflow (serving; the moves of a part).
                    http_check(PORT, health_path),
                    # The first start upgrades the database schema; on a busy 2-core server
                    # that took over 3 minutes, and failures inside the start period do not count.
                    start_period="180s", interval_s=QUICK_CHECK_S,
                ),
                "depends_on": {
                    "postgres-provision": {"condition": "service_healthy"},
                    "seaweedfs-buckets": {"condition": "service_healthy"},
                },
                "deploy": limits(MEMORY_MB),
            },
        },
    }


def routes(ctx: Context) -> list[Route]:
    # MLflow serves every route under --static-prefix itself, so the prefix is kept.
    return [Route(NAME, f"{NAME}:{PORT}", auth="basic", strip_prefix=False)]


def tracking_uri(ctx: Context) -> str:
    """The tracking server on the Compose network (no proxy, so no basic auth)."""
    return f"http://{NAME}:{PORT}{prefix(ctx)}"


# For clients inside the stack (JupyterLab, Airflow's tasks): artifacts stream through the
# tracking server on the Compose network. MLflow's default for a server that offers them is
# presigned S3 URLs at the stack's public address; without a domain its certificate comes
# from Caddy's internal CA, which those containers do not hold, and the bytes would leave
# the Compose network only to come back through the proxy.
INSIDE_ENV = {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false"}


# The MLflow client reads these variables itself; behind the proxy it sends basic auth.
FACE = Face(
    "mlflow", route=NAME, auth="basic", health="/health", extra="mlflow",
    settings={"url": ("MLFLOW_TRACKING_URI", "mlflow_tracking_uri"),
              "user": ("MLFLOW_TRACKING_USERNAME", "ui_user"),
              "password": ("MLFLOW_TRACKING_PASSWORD", "ui_passwords.mlflow")},
    inside=lambda ctx, route: {"url": tracking_uri(ctx)},
)


def files(ctx: Context) -> dict[str, str]:
    return {}


def data(ctx: Context) -> Data:
    return Data(databases=(DATABASE,), buckets=(BUCKET,))


READ_ON = "2026-11-26"  # when the managed equivalents' prices below were read


def managed(ctx: Context) -> tuple[Managed, ...]:
    """Managed MLflow tracking servers."""
    return (
        Managed(NAME, "Amazon SageMaker AI managed MLflow, Small tracking server", "USD", None,
                "https://aws.amazon.com/sagemaker/ai/pricing/", READ_ON,
                "billed per hour of tracking server plus storage"),
        Managed(NAME, "Databricks managed MLflow", "USD", None, "https://www.databricks.com/product/pricing", READ_ON,
                "part of a Databricks workspace, billed in DBUs"),
    )


def s3_endpoint(ctx: Context):
    """Where MLflow writes artifacts and its presigned URLs point: an external store's endpoint,
    or SeaweedFS at its public URL (through the proxy), a function of each server."""
    from mlox_iac.components.services import seaweedfs

    if seaweedfs.external(ctx) is not None:
        return seaweedfs.endpoint(ctx)
    route = seaweedfs.routes(ctx)[0]
    return lambda target: target.public_address.apply(lambda address: ctx.public_url(route, address))


class Mlflow(ServiceComponent):
    """The MLflow service: Flask secret, database and S3 credentials in its env file."""

    def __init__(self, name: str, ctx: Context, servers, deps: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:service:Mlflow", name, {}, opts)
        self._setup(name, servers)
        flask_secret = self.password("flask-secret", length=48)
        self.write_env(
            NAME,
            {
                "PGPASSWORD": deps["postgres"].database_password(DATABASE),
                "AWS_ACCESS_KEY_ID": deps["seaweedfs"].access_key,
                "AWS_SECRET_ACCESS_KEY": deps["seaweedfs"].secret_key,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret.result,
                "MLFLOW_S3_ENDPOINT_URL": s3_endpoint(ctx),
            },
            [NAME],
            after=[deps["postgres"], deps["seaweedfs"]],
        )
        self.register_outputs({})


SERVICE = Service(
    name=NAME, image=IMAGE, memory_mb=MEMORY_MB, requires=("postgres", "seaweedfs", "caddy"), settings=Settings,
    compose=compose, routes=routes, files=files, data=data, component=Mlflow, managed=managed, preset="core", faces=(FACE,),
)
