"""Label Studio: data labeling, with its own login.

Metadata (projects, tasks, annotations, users) in its own Postgres database; uploaded
media and exports in the bucket ``labelstudio`` (django-storages S3 backend, reached on
the Compose network; files are streamed to browsers through Label Studio itself, so no
bucket URL needs to be public). An admin user (``admin@<stack>.mlox``) with a generated
password and a generated API token (``Authorization: Token ...``) is created at start;
``label-studio init`` leaves a user that exists as it is, so the step ``label-studio-admin``
then sets both to the generated ones (a replaced password, or a new stack on kept data).
Behind the proxy at ``label-studio.<domain>`` or ``https://<address>/label-studio/``
with Label Studio's own login. Error reports to Sentry and usage analytics are off.

It runs as the upstream image runs in production: its entrypoint with the command
``label-studio-uwsgi``, which runs the image's start steps (database migrations under a
lock, ``label-studio init`` creating the admin user from ``LABEL_STUDIO_USERNAME`` /
``_PASSWORD`` / ``_USER_TOKEN``) and then uWSGI with the image's ``deploy/uwsgi.ini``
(HTTP on port 8000), not Django's development server (``label-studio start``). Static
files are collected in the image at build time and served by Label Studio's own static
view under uWSGI; upstream's optional nginx container adds nothing here, Caddy is the
proxy. uWSGI's HTTP router closes the connection after each response (as upstream's nginx,
Caddy opens a new one per request: a reused one failed an upload with 502 in the
end-to-end test). Two uWSGI worker processes of four threads each fit the memory budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mlox_iac.components.services.base import (
    Context, Data, Face, Managed, Route, Service, ServiceComponent, ServiceSettings, digest, hc,
    http_check, limits, provisioner,
)

if TYPE_CHECKING:
    import pulumi

NAME = "label-studio"
IMAGE = "heartexlabs/label-studio:1.23.2"
MEMORY_MB = 768
PORT = 8000  # uWSGI's HTTP socket in the image's deploy/uwsgi.ini (upstream's nginx proxies to it)
ENTRYPOINT = "/label-studio/deploy/docker-entrypoint.sh"  # the image's own
DATABASE = "labelstudio"
# Uploaded media and exports. Not "label-studio": on a bare address the S3 API shares the
# path space with the routes, and /label-studio/... is Label Studio's (see render_compose).
BUCKET = "labelstudio"
DATA = "/label-studio/data"  # local caches and exports in progress
UID = 1001  # the upstream image's user

# As root: own the data volume and everything in it (the volume is created by root on the
# host; a restore or a migration writes its files as root), then, as the image's user (the
# user the image itself runs as), its entrypoint in production mode. Label Studio creates
# media/upload/<project> locally before it stores an upload in the bucket, so the whole
# tree must be its user's. It holds only caches and exports in progress: small, quick to
# walk at each start.
_START = (
    f"chown -R {UID} {DATA} && exec setpriv --reuid={UID} --regid=0 --clear-groups "
    f"{ENTRYPOINT} label-studio-uwsgi"
)


# Run by Django's shell after Label Studio is up: the admin's password and API token become
# the generated ones (label-studio init created the user with them, or left an existing one
# as it was). Measured: 19 s and 286 MB at most with Label Studio 1.23.2.
ADMIN_PY = """\
import os

from rest_framework.authtoken.models import Token
from users.models import User

user = User.objects.get(email=os.environ["LABEL_STUDIO_USERNAME"])
password = os.environ["LABEL_STUDIO_PASSWORD"]
if not user.check_password(password):
    user.set_password(password)
    user.save(update_fields=["password"])
token = os.environ["LABEL_STUDIO_USER_TOKEN"]
Token.objects.filter(user=user).exclude(key=token).delete()
Token.objects.get_or_create(user=user, defaults={"key": token})
print(f"admin {user.email} ready")
"""
ADMIN_MB = 384


class Settings(ServiceSettings):
    """Label Studio data labeling (Postgres metadata, media and exports in the bucket)."""


def admin_user(ctx: Context) -> str:
    return f"admin@{ctx.config.stack_name}.mlox"


def compose(ctx: Context) -> dict:
    from mlox_iac.components.services import postgres, seaweedfs

    db_host, db_port = postgres.address(ctx)
    environment = {
        "DJANGO_DB": "default", "POSTGRE_HOST": db_host, "POSTGRE_PORT": str(db_port),
        "POSTGRE_NAME": DATABASE, "POSTGRE_USER": DATABASE,
        "LABEL_STUDIO_BASE_DATA_DIR": DATA, "LABEL_STUDIO_USERNAME": admin_user(ctx),
        "STORAGE_TYPE": "s3", "STORAGE_AWS_BUCKET_NAME": seaweedfs.bucket_name(ctx, BUCKET),
        "STORAGE_AWS_REGION_NAME": seaweedfs.region(ctx),
        "STORAGE_AWS_ENDPOINT_URL": seaweedfs.endpoint(ctx), "STORAGE_AWS_FOLDER": "media",
        "USE_NGINX_FOR_UPLOADS": "false",  # stream files from the bucket through Label Studio
        "SSRF_PROTECTION_ENABLED": "true", "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "LATEST_VERSION_CHECK": "false",
        # The admin's generated token authenticates as "Authorization: Token ..." (legacy tokens).
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # uWSGI: deploy/uwsgi.ini reads these; its default (two processes per core) would not
        # fit the memory budget, threads serve concurrent requests in little memory.
        "UWSGI_PROCESSES": "2", "UWSGI_NUMBER_OF_THREADS": "4",
        **postgres.tls_environment(ctx), **seaweedfs.ca_environment(ctx),
    }
    return {
        "services": {
            "label-studio": {
                "image": IMAGE,
                "restart": "unless-stopped",
                "user": "0",
                "env_file": ctx.env_files(NAME),
                "environment": environment,
                "entrypoint": ["/bin/sh", "-c", _START],
                "volumes": [f"label-studio-data:{DATA}", *postgres.tls_mounts(ctx), *seaweedfs.ca_mounts(ctx)],
                "healthcheck": hc(
                    http_check(PORT, "/health"),
                    # The first start runs the database migrations: over 6 minutes on a busy 2-core server.
                    start_period="900s",
                ),
                "depends_on": {
                    "postgres-provision": {"condition": "service_healthy"},
                    "seaweedfs-buckets": {"condition": "service_healthy"},
                },
                "deploy": limits(MEMORY_MB),
            },
            "label-studio-admin": {
                "image": IMAGE,
                **provisioner("python3 /label-studio/label_studio/manage.py shell < /mlox/admin.py"),
                "user": "0",
                "env_file": ctx.env_files(NAME),
                # Django's settings make the data directory; this step has no use for the volume.
                "environment": {**environment, "LABEL_STUDIO_BASE_DATA_DIR": "/tmp/label-studio"},
                # Django connects to the database as the service does: an external server's CA too.
                "volumes": ["./label-studio/admin.py:/mlox/admin.py:ro", *postgres.tls_mounts(ctx),
                            *seaweedfs.ca_mounts(ctx)],
                "labels": {"org.mlox.config-hash": digest(ADMIN_PY)},
                "depends_on": {"label-studio": {"condition": "service_healthy"}},
                "deploy": limits(ADMIN_MB),
            },
        },
        "volumes": {"label-studio-data": ctx.volume("label-studio-data")},
    }


def routes(ctx: Context) -> list[Route]:
    # Label Studio's own login; it builds its links from LABEL_STUDIO_HOST and expects the
    # proxy to strip the path prefix. uWSGI's HTTP router closes the connection after each
    # response (upstream's nginx opens one per request too), so Caddy must not reuse it.
    return [Route(NAME, f"{NAME}:{PORT}", auth="own", keepalive=False)]


# The SDK's variables; the token is the admin's (``Authorization: Token ...``).
FACE = Face(
    "label-studio", route=NAME, auth="token", health="/health", extra="labelstudio",
    settings={"url": ("LABEL_STUDIO_URL", "urls.label-studio"),
              "token": ("LABEL_STUDIO_API_KEY", "api_tokens.label-studio")},
    inside=lambda ctx, route: {"url": f"http://{NAME}:{PORT}"},
)


def files(ctx: Context) -> dict[str, str]:
    return {"label-studio/admin.py": ADMIN_PY}


def data(ctx: Context) -> Data:
    return Data(databases=(DATABASE,), buckets=(BUCKET,), volumes=("label-studio-data",))


READ_ON = "2026-12-06"  # when the managed equivalents' prices below were read


def managed(ctx: Context) -> tuple[Managed, ...]:
    """Managed labeling: a cloud labeling service, and Label Studio's own hosted plan."""
    return (
        Managed(NAME, "Amazon SageMaker Ground Truth", "USD", None,
                "https://aws.amazon.com/sagemaker/ai/groundtruth/pricing/", READ_ON,
                "billed by usage: per object labeled, plus a labeling workforce if hired; no flat price"),
        Managed(NAME, "Label Studio Starter Cloud (HumanSignal)", "USD", None, "https://humansignal.com/pricing/",
                READ_ON, "a subscription per user and month; its price was not confirmed"),
    )


class LabelStudio(ServiceComponent):
    """The Label Studio service: admin password and API token, database and S3 credentials."""

    login_password: pulumi.Output[str]
    api_token: pulumi.Output[str]

    def __init__(self, name: str, ctx: Context, server, deps: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:service:LabelStudio", name, {}, opts)
        self._setup(name, server)
        self.login_password = self.password("admin", length=24).result
        self.api_token = self.password("api-token", length=40).result
        self.client_secrets = {"LABEL_STUDIO_API_KEY": self.api_token}
        route = routes(ctx)[0]

        def host(target):  # per server: a migration runs it on two
            return target.public_address.apply(lambda address: ctx.public_url(route, address))

        self.write_env(
            NAME,
            {
                "LABEL_STUDIO_PASSWORD": self.login_password,
                "SECRET_KEY": self.password("django-secret-key", length=50).result,
                "LABEL_STUDIO_USER_TOKEN": self.api_token,
                "POSTGRE_PASSWORD": deps["postgres"].database_password(DATABASE),
                "STORAGE_AWS_ACCESS_KEY_ID": deps["seaweedfs"].access_key,
                "STORAGE_AWS_SECRET_ACCESS_KEY": deps["seaweedfs"].secret_key,
                "LABEL_STUDIO_HOST": host,
                "CSRF_TRUSTED_ORIGINS": lambda target: host(target).apply(lambda url: "https://" + urlsplit(url).netloc),
            },
            [NAME, "label-studio-admin"],
            after=[deps["postgres"], deps["seaweedfs"]],
        )
        self.register_outputs({"login_password": self.login_password, "api_token": self.api_token})


SERVICE = Service(
    name=NAME, image=IMAGE, memory_mb=MEMORY_MB, requires=("postgres", "seaweedfs", "caddy"), settings=Settings,
    compose=compose, routes=routes, files=files, data=data, component=LabelStudio, managed=managed, faces=(FACE,),
)
