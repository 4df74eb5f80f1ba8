"""Apache Airflow 3: pipelines for data collection, processing and training.

LocalExecutor; metadata in its own Postgres database; three long-running containers from
one image: the API server and UI (``airflow``, Airflow's own login through the FAB auth
manager, behind the proxy at ``airflow.<domain>`` or ``https://<address>/airflow/``),
the scheduler (which runs the tasks) and the DAG processor. No triggerer: deferrable
operators wait until one is added.

- DAGs come from the git repository ``mlox:services.airflow.dags_repo`` names (a
  ``GitDagBundle``, refreshed every 30 s at ``dags_ref``); without one, from the kept
  volume ``airflow-dags``.
- Task logs go to the bucket ``airflow-logs`` (remote logging), so the UI and API show
  them after the task's container-local copy is gone.
- Generated: the Fernet key (connections' passwords encrypted in the database), the API
  secret key, the JWT secret, and the password of the user ``admin``, created (or its
  password reset to the generated one) by the one-shot step ``airflow-init``.
- Connections for the user, from the environment: ``aws_default`` (the stack's S3, also
  used for the logs) and ``mlflow_default`` (the tracking server on the Compose network).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pydantic import Field

from mlox_iac.components.services.base import (
    HOURS_PER_MONTH, Context, Data, Managed, Route, Service, ServiceComponent, ServiceSettings, hc, limits,
    provisioner, Face, digest,
)

if TYPE_CHECKING:
    import pulumi

NAME = "airflow"
IMAGE = "apache/airflow:3.3.2"
API_MB, SCHEDULER_MB, DAG_PROCESSOR_MB = 768, 1024, 512
MEMORY_MB = API_MB + SCHEDULER_MB + DAG_PROCESSOR_MB
PORT = 8080
DATABASE = NAME
BUCKET = "airflow-logs"
ADMIN = "admin"
DAGS = "/opt/airflow/dags"
SCHEDULER_HEALTH_PORT = 8974

# Migrate the database, then create the admin user or set its password to the generated
# one. The password reaches Airflow's prompt on stdin (printf is a shell builtin), never
# a command line.
INIT = (
    "set -eu; airflow db migrate; "
    "pw() { printf '%s\\n%s\\n' \"$$AIRFLOW_ADMIN_PASSWORD\" \"$$AIRFLOW_ADMIN_PASSWORD\"; }; "
    f"pw | airflow users create --username {ADMIN} --role Admin --firstname Admin --lastname User "
    f"--email {ADMIN}@airflow.mlox; "
    f"pw | airflow users reset-password --username {ADMIN}"
)


class Settings(ServiceSettings):
    """Apache Airflow pipelines (LocalExecutor, DAGs from git, task logs in the bucket)."""

    dags_repo: str | None = Field(
        None, pattern=r"^(https://|http://|git://|ssh://|file://|git@)\S+$",
        description="Git repository the DAGs are synced from (https://, ssh://, git@host:path, git://, file://)",
    )
    dags_ref: str = Field("main", pattern=r"^[A-Za-z0-9._/-]{1,100}$", description="Branch, tag or commit of dags_repo")
    dags_subdir: str | None = Field(None, pattern=r"^[A-Za-z0-9._/-]{1,200}$", description="Folder of the DAGs in dags_repo")


def prefix(ctx: Context) -> str:
    return "" if ctx.config.domain else f"/{NAME}"


def bundles(ctx: Context) -> list[dict]:
    """Airflow's DAG bundles: the configured git repository, else the kept dags volume."""
    settings = ctx.config.service(NAME)
    if settings.dags_repo:
        kwargs = {"repo_url": settings.dags_repo, "tracking_ref": settings.dags_ref, "refresh_interval": 30}
        if settings.dags_subdir:
            kwargs["subdir"] = settings.dags_subdir
        return [{"name": "dags", "classpath": "airflow.providers.git.bundles.git.GitDagBundle", "kwargs": kwargs}]
    return [{"name": "dags", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
             "kwargs": {"path": DAGS, "refresh_interval": 30}}]


def environment(ctx: Context) -> dict[str, str]:
    """Airflow's non-secret settings, the same in every Airflow container."""
    from mlox_iac.components.services import mlflow, postgres, seaweedfs

    env = {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
        # Tasks report to the API server over the Compose network.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{NAME}:{PORT}{prefix(ctx)}/execution/",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles(ctx), sort_keys=True),
        "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
        "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{seaweedfs.bucket_name(ctx, BUCKET)}/logs",
        "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "aws_default",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(SCHEDULER_HEALTH_PORT),
        "AIRFLOW__API__WORKERS": "1",
        **postgres.tls_environment(ctx), **seaweedfs.ca_environment(ctx),
    }
    if "mlflow" in ctx.config.enabled_services():
        env["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
            {"conn_type": "http", "host": f"http://mlflow:{mlflow.PORT}{mlflow.prefix(ctx)}"}, sort_keys=True)
    return env


def tls_mounts(ctx: Context) -> list[str]:
    """The external Postgres' and S3 store's CAs, where they are used."""
    from mlox_iac.components.services import postgres, seaweedfs

    return [*postgres.tls_mounts(ctx), *seaweedfs.ca_mounts(ctx)]


def _container(ctx: Context, command: list[str], health: list[str], memory_mb: int, every: str = "10s",
               timeout: str = "5s", volumes: tuple[str, ...] = ()) -> dict:
    from mlox_iac import faces

    return {
        "image": IMAGE,
        "restart": "unless-stopped",
        "env_file": ctx.env_files(NAME),
        "environment": environment(ctx),
        "command": command,
        # mlox-client's settings for tasks (faces.INSIDE_PATH); the secrets are in the env file.
        "volumes": [*volumes, faces.inside_mount(), *tls_mounts(ctx)],
        # A changed mounted file changes this label, so Compose recreates the container.
        "labels": {"org.mlox.config-hash": digest(faces.inside_settings(ctx))},
        "healthcheck": {**hc(health, start_period="90s"), "interval": every, "timeout": timeout},
        "depends_on": {"airflow-init": {"condition": "service_healthy"}},
        "deploy": limits(memory_mb),
    }


def _python_get(url: str) -> list[str]:
    return ["CMD", "python", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=4)"]


def compose(ctx: Context) -> dict:
    dags = {} if ctx.config.service(NAME).dags_repo else {"volumes": (f"airflow-dags:{DAGS}",)}
    part = {
        "services": {
            "airflow-init": {
                "image": IMAGE,
                **provisioner(INIT),
                "env_file": ctx.env_files(NAME),
                "environment": environment(ctx),
                **({"volumes": tls_mounts(ctx)} if tls_mounts(ctx) else {}),
                "depends_on": {"postgres-provision": {"condition": "service_healthy"},
                               "seaweedfs-buckets": {"condition": "service_healthy"}},
                "deploy": limits(512),
            },
            "airflow": _container(ctx, ["airflow", "api-server", "--port", str(PORT)],
                                  _python_get(f"http://127.0.0.1:{PORT}{prefix(ctx)}/api/v2/monitor/health"), API_MB),
            "airflow-scheduler": _container(ctx, ["airflow", "scheduler"],
                                            _python_get(f"http://127.0.0.1:{SCHEDULER_HEALTH_PORT}/health"),
                                            SCHEDULER_MB, **dags),
            "airflow-dag-processor": _container(
                ctx, ["airflow", "dag-processor"],
                # `airflow jobs check` starts a Python process that imports Airflow: not every 10 s,
                # and not within 5 s on a busy 2-core server (13 s measured while the stack starts).
                ["CMD", "airflow", "jobs", "check", "--job-type", "DagProcessorJob", "--local"], DAG_PROCESSOR_MB,
                every="60s", timeout="60s", **dags),
        },
    }
    if dags:
        part["volumes"] = {"airflow-dags": ctx.volume("airflow-dags")}
    return part


def routes(ctx: Context) -> list[Route]:
    # Airflow's own login; it serves everything under the base URL's path, so the prefix is kept.
    return [Route(NAME, f"{NAME}:{PORT}", auth="own", strip_prefix=False)]


# Airflow's own login: the REST API (/api/v2) takes a JWT that /auth/token gives for the
# admin's user name and password.
FACE = Face(
    "airflow", route=NAME, auth="login", health="/api/v2/monitor/health", extra="airflow",
    settings={"url": ("MLOX_AIRFLOW_URL", "urls.airflow"),
              "user": ("MLOX_AIRFLOW_USERNAME", f"={ADMIN}"),
              "password": ("MLOX_AIRFLOW_PASSWORD", "login_passwords.airflow")},
    inside=lambda ctx, route: {"url": f"http://{NAME}:{PORT}{prefix(ctx)}", "user": ADMIN},
)


def files(ctx: Context) -> dict[str, str]:
    return {}


def data(ctx: Context) -> Data:
    kept = () if ctx.config.service(NAME).dags_repo else ("airflow-dags",)
    return Data(databases=(DATABASE,), buckets=(BUCKET,), volumes=kept)


READ_ON = "2026-12-06"  # when the managed equivalents' prices below were read


def managed(ctx: Context) -> tuple[Managed, ...]:
    """Managed Airflow: MWAA's and Cloud Composer's smallest environments, running 24/7 as ours does."""
    return (
        Managed(NAME, "Amazon MWAA, mw1.small environment (us-east-1)", "USD", round(0.49 * HOURS_PER_MONTH, 2),
                "https://aws.amazon.com/managed-workflows-for-apache-airflow/pricing/", READ_ON,
                "730 h × USD 0.49/h with a scheduler, a worker and the web server; more workers and the metadata "
                "storage cost extra; rate as quoted by https://c3x.dev/blog/mwaa-cost-managed-airflow/; the smaller "
                "mw1.micro (3 concurrent tasks) is not priced here"),
        Managed(NAME, "Google Cloud Composer 3, Small preset", "USD", None, "https://cloud.google.com/composer/pricing",
                READ_ON, "billed at USD 0.06 per DCU-hour for what the environment provisions, 24/7; the Small "
                "preset's DCU count was not confirmed (third-party estimates: USD 300-400 a month at idle)"),
    )


class Airflow(ServiceComponent):
    """The Airflow service: Fernet key, API and JWT secrets, admin password, connections."""

    login_password: pulumi.Output[str]

    def __init__(self, name: str, ctx: Context, server, deps: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:service:Airflow", name, {}, opts)
        self._setup(name, server)
        import pulumi
        import pulumi_random as random

        # A Fernet key is 32 random bytes in URL-safe base64.
        fernet = random.RandomBytes(f"{name}-fernet-key", length=32, opts=self._child)
        self.login_password = self.password("admin", length=24).result
        self.client_secrets = {"MLOX_AIRFLOW_PASSWORD": self.login_password}
        route = routes(ctx)[0]
        # With a trailing slash: Airflow mounts its auth routes at the base URL's path + "auth".

        def base_url(target):  # per server: a migration runs it on two
            return target.public_address.apply(lambda address: ctx.public_url(route, address) + "/")

        from mlox_iac.components.services import postgres, seaweedfs

        db_password = deps["postgres"].database_password(DATABASE)
        db_host, db_port = postgres.address(ctx)
        clients, client_deps = self.client_env(ctx, deps)
        s3 = {"endpoint_url": seaweedfs.endpoint(ctx), "region_name": seaweedfs.region(ctx)}
        aws = pulumi.Output.all(deps["seaweedfs"].access_key, deps["seaweedfs"].secret_key).apply(
            lambda keys: json.dumps({"conn_type": "aws", "login": keys[0], "password": keys[1], "extra": s3},
                                    sort_keys=True))
        self.write_env(
            NAME,
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_password.apply(
                    lambda p: f"postgresql+psycopg2://{DATABASE}:{p}@{db_host}:{db_port}/{DATABASE}"),
                "AIRFLOW__CORE__FERNET_KEY": fernet.base64.apply(lambda b: b.replace("+", "-").replace("/", "_")),
                "AIRFLOW__API__SECRET_KEY": self.password("api-secret-key", length=48).result,
                "AIRFLOW__API_AUTH__JWT_SECRET": self.password("jwt-secret", length=48).result,
                "AIRFLOW__API__BASE_URL": base_url,
                "AIRFLOW_ADMIN_PASSWORD": self.login_password,
                "AIRFLOW_CONN_AWS_DEFAULT": aws,
                **clients,  # what mlox-client in a task needs
            },
            ["airflow-init", "airflow", "airflow-scheduler", "airflow-dag-processor"],
            after=list(dict.fromkeys([deps["postgres"], deps["seaweedfs"], *client_deps])),
        )
        self.register_outputs({"login_password": self.login_password})


SERVICE = Service(
    name=NAME, image=IMAGE, memory_mb=MEMORY_MB, requires=("postgres", "seaweedfs", "caddy"), settings=Settings,
    compose=compose, routes=routes, files=files, data=data, component=Airflow, managed=managed, faces=(FACE,),
)
