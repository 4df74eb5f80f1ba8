"""Model serving: registered MLflow models, by alias, each at its own HTTPS route.

The stack file lists the models (``mlox:services.serving.models``: ``name``, ``alias``, and
optionally ``memory_mb``, ``workers``, ``log_sample``). Each is served at
``model-<name>.<domain>`` or ``https://<address>/model-<name>/`` (``/invocations``,
``/ping``, ``/version``), behind basic auth with a generated password per model (a Pulumi
secret; ``mlox-iac env`` exports it as ``MLOX_MODEL_<NAME>_PASSWORD``).

Moving the alias changes what is served **by itself**, within ``poll_seconds``: the alias
lives in the MLflow registry, not in the stack file, so a ``mlox-iac up`` would see no
change to apply (and could only learn the version by reaching into the server's registry
while planning, which ``preview`` and ``up`` must not do). The model server
(``programs/model_server.py``) polls the alias, starts the new version next to the old,
sends requests to it only once it answers ``/ping``, and lets the old one finish its
requests before stopping it: no request fails during the switch. If the new version
cannot start, the old one keeps serving (alert ``ModelNotServingAlias``).

Runtime: MLflow's own model server (``mlflow models serve``, FastAPI/uvicorn) from the same
pinned MLflow image as the tracking server. Chosen over MLServer's MLflow runtime because it
is the same MLflow version that logged the models (no second MLflow to keep in step, no
flavor loaded by a different version), it serves every pyfunc flavor, and it needs no
second large image on a small disk. Dependencies: each version's ``requirements.txt`` is
installed at start into a per-version environment on the cache volume that sees the
image's packages, so pip adds only what the image lacks, from wheels only (nothing compiles
on a small server); a failure leaves the old version serving. Building an image per model
would need a registry and a build on every alias move, which a one-server stack has not.

Opt-in request logging: ``log_sample`` (0 to 1) of each model's requests are written with
their responses as JSON lines to the bucket ``model-logs`` (``<model>/<date>/...jsonl``).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlox_iac.components.services import programs
from mlox_iac.components.services.base import (
    Context, Data, Face, HOURS_PER_MONTH, Managed, Route, Service, ServiceComponent,
    ServiceSettings, digest, hc, http_check, limits,
)

if TYPE_CHECKING:
    import pulumi

NAME = "serving"
IMAGE = "ghcr.io/mlflow/mlflow:v3.17.2-full"  # the tracking server's image: same MLflow version
MEMORY_MB = 128  # the model server itself; each model adds its own budget (see memory())
METRICS_PORT = 9200
FIRST_PORT = 8001  # model i answers on FIRST_PORT + i inside the Compose network
LOG_BUCKET = "model-logs"


class ModelSettings(BaseModel):
    """One served model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="Registered model name")
    alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Registry alias to serve")
    memory_mb: int = Field(512, ge=128, le=65536, description="Memory for one running version")
    workers: int = Field(1, ge=1, le=8, description="Server worker processes")
    log_sample: float = Field(0.0, ge=0.0, le=1.0, description="Share of requests logged to the bucket (0: off)")


class Settings(ServiceSettings):
    """Serve registered MLflow models by alias, each at its own HTTPS route."""

    models: list[ModelSettings] = Field(default_factory=list, description="Models to serve")
    poll_seconds: int = Field(30, ge=2, le=3600, description="How often the aliases are checked")

    @field_validator("models")
    @classmethod
    def _distinct(cls, models: list[ModelSettings]) -> list[ModelSettings]:
        seen: dict[str, str] = {}
        for model in models:
            route = route_name(model.name)
            if route in seen:
                raise ValueError(f"{model.name!r} and {seen[route]!r} would share the route {route!r} (allowed: distinct names)")
            seen[route] = model.name
        return models


def route_name(model: str) -> str:
    """``model-<name>``: lowercase, other characters as dashes (a DNS label and a path segment)."""
    return "model-" + re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:50]


def _models(ctx: Context) -> list[ModelSettings]:
    return ctx.config.service(NAME).models


def memory(ctx: Context) -> int:
    """The model server, every model's budget, and room for one more while a version switches."""
    budgets = [m.memory_mb for m in _models(ctx)]
    return MEMORY_MB + sum(budgets) + max(budgets, default=0)


def tracking_uri(ctx: Context) -> str:
    from mlox_iac.components.services import mlflow

    return f"http://mlflow:{mlflow.PORT}{mlflow.prefix(ctx)}"  # inside the Compose network


def render_config(ctx: Context) -> str:
    settings = ctx.config.service(NAME)
    models = [{"name": m.name, "alias": m.alias, "port": FIRST_PORT + i, "workers": m.workers, "log_sample": m.log_sample}
              for i, m in enumerate(settings.models)]
    from mlox_iac.components.services import seaweedfs

    return json.dumps({"poll_seconds": settings.poll_seconds, "log_bucket": seaweedfs.bucket_name(ctx, LOG_BUCKET),
                       "models": models}, indent=2) + "\n"


def _server_ca(ctx: Context) -> list[str]:
    """Without a domain: Caddy's internal CA (read-only), for the presigned S3 URLs MLflow hands out."""
    if ctx.config.domain:
        return []
    from mlox_iac.components.services import caddy

    return caddy.internal_ca_mount(ctx)


def compose(ctx: Context) -> dict:
    from mlox_iac import faces
    from mlox_iac.components.services import seaweedfs

    files_ = {**files(ctx), faces.INSIDE_FILE: faces.inside_settings(ctx)}
    return {
        "services": {
            "serving": {
                "image": IMAGE,
                "restart": "unless-stopped",
                "env_file": ctx.env_files(NAME),
                "environment": {
                    "MLFLOW_TRACKING_URI": tracking_uri(ctx),
                    "MLOX_S3_ENDPOINT": seaweedfs.endpoint(ctx),
                    "AWS_DEFAULT_REGION": seaweedfs.region(ctx),
                    "MLOX_SERVING_CONFIG": "/mlox/models.json",
                    "PYTHONUNBUFFERED": "1",
                    # An external store's private CA joins the public roots (model_server.trust_server_ca).
                    **({"MLOX_SERVER_CA": seaweedfs.CA_PATH} if seaweedfs.ca_mounts(ctx) else {}),
                },
                "command": ["python3", "/mlox/model_server.py"],
                "volumes": ["serving-cache:/cache", "./serving/model_server.py:/mlox/model_server.py:ro",
                            "./serving/models.json:/mlox/models.json:ro", *_server_ca(ctx), *seaweedfs.ca_mounts(ctx),
                            faces.inside_mount()],  # mlox-client's settings for the models' own code
                "labels": {"org.mlox.config-hash": digest(*(files_[k] for k in sorted(files_)))},
                # Healthy once the model server runs; each model's route answers 503 until a version is up.
                "healthcheck": hc(http_check(METRICS_PORT, "/metrics")),
                "depends_on": {"mlflow": {"condition": "service_healthy"},
                               "seaweedfs-buckets": {"condition": "service_healthy"}},
                "deploy": limits(memory(ctx)),
            },
        },
        "volumes": {"serving-cache": ctx.volume("serving-cache")},
    }


def routes(ctx: Context) -> list[Route]:
    return [Route(route_name(m.name), f"serving:{FIRST_PORT + i}", auth="basic", api=True)
            for i, m in enumerate(_models(ctx))]


def _port(ctx: Context, route: str | None) -> int:
    return next(FIRST_PORT + i for i, m in enumerate(_models(ctx)) if route_name(m.name) == route)


# One per served model: POST <url>/invocations (MLflow's scoring protocol) with basic auth;
# inside the stack straight to the model's port.
FACE = Face(
    "model-*", route="model-*", auth="basic", health="/ping",
    settings={"url": ("MLOX_{ROUTE}_URL", "urls.{route}"),
              "user": ("MLOX_{ROUTE}_USER", "ui_user"),
              "password": ("MLOX_{ROUTE}_PASSWORD", "ui_passwords.{route}")},
    inside=lambda ctx, route: {"url": f"http://{NAME}:{_port(ctx, route)}"},
)


def files(ctx: Context) -> dict[str, str]:
    return {"serving/model_server.py": programs.source("model_server.py"), "serving/models.json": render_config(ctx)}


def data(ctx: Context) -> Data:
    return Data(
        buckets=(LOG_BUCKET,),
        not_kept={"serving-cache": "downloaded model versions and their packages: fetched again from the registry"},
    )


READ_ON = "2026-12-06"  # when the managed equivalents' prices below were read


def managed(ctx: Context) -> tuple[Managed, ...]:
    """A managed real-time endpoint on the smallest general-purpose instance, 24/7."""
    return (
        Managed(NAME, "Amazon SageMaker real-time endpoint, one ml.m5.large instance, 24/7", "USD",
                round(0.115 * HOURS_PER_MONTH, 2), "https://aws.amazon.com/sagemaker/ai/pricing/", READ_ON,
                "730 h × USD 0.115/h for ml.m5.large (2 vCPU, 8 GiB), the us-east-1 rate as remembered, not "
                "confirmed on the pricing page; several models share it only as a multi-model endpoint"),
    )


class Serving(ServiceComponent):
    """Model serving: S3 keys for the request log, and the credentials of mlox-client for the
    models' code, in its env file (route passwords are Caddy's)."""

    def __init__(self, name: str, ctx: Context, servers, deps: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:service:Serving", name, {}, opts)
        self._setup(name, servers)
        # The S3 keys (the request log) are among the credentials mlox-client needs in a model's code.
        values, after = self.client_env(ctx, deps)
        self.write_env(NAME, values, [NAME], after=after)
        self.register_outputs({})


SERVICE = Service(
    name=NAME, image=IMAGE, memory_mb=MEMORY_MB, requires=("mlflow", "seaweedfs", "caddy"), settings=Settings,
    compose=compose, routes=routes, files=files, data=data, component=Serving, memory=memory,
    managed=managed, faces=(FACE,),
)
