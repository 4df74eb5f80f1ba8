"""SeaweedFS: the S3-compatible object store (MinIO's community edition is archived).

One ``weed server`` (master, volume, filer and S3 gateway in one process) with its
data on the data volume. The S3 API is published only through the proxy. Its one S3
identity gets a generated access key and secret; the identity file is written inside
the container at start from the env file, so no credential lands in the bundle.

Or an external S3-compatible store (``external``: Hetzner Object Storage, AWS S3,
DigitalOcean Spaces, a MinIO or SeaweedFS of your own): then no SeaweedFS runs, the buckets
are created there (named ``bucket_prefix`` + name) by a provisioning step with rclone, and
every service that uses buckets reaches that endpoint with its credentials (Pulumi secrets)
over verified TLS. ``mlox-iac migrate --part objects`` moves the buckets between the two;
while it runs, both are configured (``mlox:part_move``) and the local one keeps running
until ``--finish``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from mlox_iac.components.services.base import (
    QUICK_CHECK_S, Context, Data, Managed, Route, Service, ServiceComponent, ServiceSettings, hc, limits, provisioner,
    Face,
)

if TYPE_CHECKING:
    import pulumi

NAME = "seaweedfs"
IMAGE = "chrislusf/seaweedfs:4.48"
MEMORY_MB = 512
S3_PORT = 8333
FILER_PORT = 8888  # weed server's default; only on the stack network (backups read objects back through it)
BUCKETS_DIR = "/buckets"  # where the filer keeps the S3 buckets (filer.toml buckets_folder, default)

# Memory. One `weed server` process holds master, volume server, filer and S3 gateway.
# Measured at 4.48 in a 512 MiB container (anonymous memory, not counting page cache):
# - Go's garbage collector lets the heap grow to twice its live size and returns freed
#   pages to the kernel slowly; it does not know the cgroup limit. One 100 MB boto3
#   upload took the process from 27 to 326 MiB, a second to 359, a third (10 threads) to
#   508, and a fourth over the limit. With GOMEMLIMIT the same uploads stay under 170 MiB.
# - Every concurrency limit defaults to 0 (unlimited). Each S3 upload reads its body in
#   4 MiB chunks (-filer.maxMB) and keeps up to 4 of them in flight, copied into a
#   multipart body and parsed again by the volume server in the same process: about
#   75 MiB per upload at its peak, times however many uploads clients send at once. Each
#   GET prefetches 4 chunks, with no shared cap. 16 concurrent PUTs, or 16 concurrent GETs
#   of 64 MB, got it OOM-killed even with GOMEMLIMIT.
# So: at most UPLOADS_AT_ONCE uploads are served at once (further requests wait, they are
# not refused); S3 GETs share READ_BUFFERS_MB of chunk buffers (further reads wait for
# buffers); GOMEMLIMIT makes the runtime collect and return memory well before the
# container limit. With these, 16 concurrent 24 MB PUTs peaked at 188 MiB and 16
# concurrent GETs at 167 MiB. The Go limit also covers the filer's leveldb2 caches, which
# grow with the metadata; the last quarter of the container limit is for the page cache
# of files being written, which the kernel charges to the container.
#
# Reading. 4.47 added the GET buffer budget (-s3.readerCacheSizeMB); since then the gateway
# fetches the same chunks from the volume server many times over (upstream issue #11380,
# "S3 latency after upgrading to 4.47"; a CPU profile here: two thirds of the time in the
# volume server serving chunk reads). A 1 GiB GET took 57 s, 16 concurrent 64 MB range GETs
# 20 s, while the filer underneath served the same 1 GiB in 1.6 s. Larger budgets did not
# help: 128 MB was as slow, 256 MB and unlimited got the container OOM-killed within the
# first 20 MB. The shared chunk cache (-s3.cacheCapacityMB, 0 = off) makes repeated fetches
# of a chunk hit memory: with 32 MB, the 1 GiB GET took 32 s and the 16 range GETs 14 s,
# and the process peaked at 314 MiB resident (261 MiB without it), under GOMEMLIMIT.
UPLOADS_AT_ONCE = 2
READ_BUFFERS_MB = 64
CHUNK_CACHE_MB = 32
GO_MEMORY_LIMIT_MB = MEMORY_MB * 3 // 4

# Volume slots. Each bucket is a SeaweedFS collection, and a collection's first write grows
# 7 volumes of up to -master.volumeSizeLimitMB (1 GiB) each. With -volume.max=0 SeaweedFS
# counts the slots from the free disk as if every volume were already full: a cloud
# server's 16-20 GB data volume gets 14-18 slots, so only the first two buckets written
# could hold objects; the third (a user's bucket, or mlox-before-restore during a restore)
# answered every upload with InternalError "no free volumes left" (found by the Hetzner ->
# DigitalOcean move test, reproduced on a 16 GB disk). Volumes are not preallocated and
# only take the space of what is written, so a fixed count is safe; when the disk itself
# is full, uploads fail and everything stored stays readable (measured on a 2 GB disk:
# 241 objects written, every one read back intact).
VOLUME_SLOTS = 128

# The S3 identity file, built from the env file when the container starts.
_START = (
    "umask 077; "
    "printf '{\"identities\":[{\"name\":\"mlox\",\"credentials\":[{\"accessKey\":\"%s\",\"secretKey\":\"%s\"}],"
    "\"actions\":[\"Admin\",\"Read\",\"List\",\"Tagging\",\"Write\"]}]}' \"$$S3_ACCESS_KEY\" \"$$S3_SECRET_KEY\" > /tmp/s3.json && "
    f"exec /usr/bin/weed server -dir=/data -ip=seaweedfs -ip.bind=0.0.0.0 -volume.max={VOLUME_SLOTS} "
    f"-master.volumeSizeLimitMB=1024 -s3 -s3.port={S3_PORT} -s3.config=/tmp/s3.json "
    f"-s3.concurrentFileUploadLimit={UPLOADS_AT_ONCE} -s3.readerCacheSizeMB={READ_BUFFERS_MB} "
    f"-s3.cacheCapacityMB={CHUNK_CACHE_MB}"
)
# Create each bucket (ignoring "exists"), then fail unless every bucket is listed.
_BUCKETS = (
    "(set -eu; for b in $$MLOX_BUCKETS; do "
    "echo \"s3.bucket.create -name $$b\" | weed shell -master=seaweedfs:9333 >/dev/null 2>&1 || true; done; "
    "list=$$(echo s3.bucket.list | weed shell -master=seaweedfs:9333); "
    "for b in $$MLOX_BUCKETS; do echo \"$$list\" | grep -q \"$$b\" || { echo \"bucket $$b missing\" >&2; exit 1; }; "
    "echo \"bucket $$b ready\"; done)"
)


PART = "objects"  # what mlox-iac migrate --part calls this service's data
# The rclone image that creates buckets on an external store (the one backups use).
RCLONE_IMAGE = "rclone/rclone:1.60.1"
CA_FILE = "seaweedfs/external-ca.pem"  # in the bundle, when the external store has a private CA
CA_PATH = "/etc/mlox/s3-ca.pem"  # where containers that use the store see it


class ExternalS3(BaseModel):
    """An S3-compatible store run by a provider, used instead of SeaweedFS."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(description="https URL of the S3 API, e.g. https://fsn1.your-objectstorage.com")
    region: str = Field("us-east-1", pattern=r"^[a-z0-9-]{1,32}$", description="The store's region (signing region)")
    bucket_prefix: str = Field("", description="Prepended to every bucket name there (bucket names are global "
                               "at most providers), e.g. team-prod-")
    access_key_id: SecretStr = Field(description="Access key (a Pulumi secret)")
    secret_access_key: SecretStr = Field(description="Secret key (a Pulumi secret)")
    ca: str | None = Field(None, description="PEM CA certificate(s) of the endpoint, when not publicly trusted")
    in_use: bool = Field(True, description="Whether the services use this store (mlox-iac migrate --part sets it; "
                         "false keeps these settings while the buckets live on the server)")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            parts = None
        if (parts is None or parts.scheme != "https" or not parts.hostname or parts.username is not None
                or parts.path not in ("", "/") or parts.query or any(c.isspace() for c in value)):
            raise ValueError(f"{value!r} is not an https endpoint (allowed: https://HOST[:PORT], no path; "
                             "TLS is always verified)")
        return value.rstrip("/")

    @field_validator("bucket_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        import re

        if value and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{0,39}", value):
            raise ValueError(f"{value!r} is not a bucket prefix (allowed: up to 40 of a-z 0-9 . -, "
                             "starting with a letter or digit)")
        return value

    @field_validator("ca")
    @classmethod
    def _ca(cls, value: str | None) -> str | None:
        from mlox_iac.config.model import check_ca_certificates

        return None if value is None else check_ca_certificates(value)

    @property
    def host(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.endpoint).hostname or ""


class Settings(ServiceSettings):
    """SeaweedFS S3-compatible object store (or an external S3 store)."""

    buckets: list[str] = Field(default_factory=lambda: ["data"], description="Buckets for user data")
    external: ExternalS3 | None = Field(None, description="Use this S3-compatible store instead of running SeaweedFS")

    @field_validator("buckets")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        import re

        for n in names:
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", n):
                raise ValueError(f"{n!r} is not a valid bucket name (allowed: 3-63 of a-z 0-9 . -)")
        return names

    @model_validator(mode="after")
    def _prefixed(self) -> "Settings":
        prefix = self.external.bucket_prefix if self.external is not None else ""
        for name in self.buckets:
            if len(prefix + name) > 63:
                raise ValueError(f"bucket {name!r} with the prefix {prefix!r} is longer than 63 characters "
                                 "(allowed: a shorter prefix or bucket name)")
        return self


def external(ctx: Context) -> ExternalS3 | None:
    """The external store when the services use it (not while a move out copies, nor after a
    move home cut over), else None."""
    return ctx.config.service(NAME).external if ctx.config.part_external(PART) else None


def local(ctx: Context) -> bool:
    """Whether SeaweedFS runs on the server (no external store, or while a move keeps it)."""
    return ctx.config.part_local(PART)


def buckets(ctx: Context) -> list[str]:
    """Every bucket an enabled service declares (the user's buckets are this service's own)."""
    from mlox_iac.components.services.registry import SERVICES

    return list(dict.fromkeys(b for n in ctx.config.enabled_services() for b in SERVICES[n].data(ctx).buckets))


def bucket_name(ctx: Context, name: str, store: ExternalS3 | None | bool = True) -> str:
    """What the bucket ``name`` is called in the store the services use (``store`` True), or in
    ``store`` itself (an :class:`ExternalS3`, or None for SeaweedFS)."""
    chosen = external(ctx) if store is True else store
    return (chosen.bucket_prefix if isinstance(chosen, ExternalS3) else "") + name


def endpoint(ctx: Context) -> str:
    """The S3 endpoint the stack's containers use."""
    store = external(ctx)
    return store.endpoint if store is not None else f"http://{NAME}:{S3_PORT}"


def region(ctx: Context) -> str:
    store = external(ctx)
    return store.region if store is not None else "us-east-1"


def ca_mounts(ctx: Context) -> list[str]:
    """The external store's private CA, mounted read-only into a container that uses the store."""
    store = external(ctx)
    return [f"./{CA_FILE}:{CA_PATH}:ro"] if store is not None and store.ca else []


def ca_environment(ctx: Context) -> dict[str, str]:
    """``AWS_CA_BUNDLE`` for boto3/botocore, when the external store has a private CA."""
    return {"AWS_CA_BUNDLE": CA_PATH} if ca_mounts(ctx) else {}


# Create each bucket of the external store (rclone mkdir is a no-op where it exists), then
# list them: a store that refuses the keys or is unreachable fails the step. rclone reads the
# keys from the env file's EXTERNAL_S3_* variables.
_EXTERNAL_BUCKETS = (
    "(set -eu; export RCLONE_CONFIG_STORE_ACCESS_KEY_ID=\"$$EXTERNAL_S3_ACCESS_KEY\" "
    "RCLONE_CONFIG_STORE_SECRET_ACCESS_KEY=\"$$EXTERNAL_S3_SECRET_KEY\"; "
    "for b in $$MLOX_BUCKETS; do rclone mkdir \"store:$$b\"; echo \"bucket $$b ready\"; done; "
    "rclone lsd store: >/dev/null)"
)


def _external_buckets(ctx: Context, store: ExternalS3) -> dict:
    return {
        "image": RCLONE_IMAGE,
        **provisioner(_EXTERNAL_BUCKETS),
        "env_file": ctx.env_files(NAME),
        "environment": {"MLOX_BUCKETS": " ".join(bucket_name(ctx, b, store) for b in buckets(ctx)),
                        "RCLONE_CONFIG_STORE_TYPE": "s3", "RCLONE_CONFIG_STORE_PROVIDER": "Other",
                        "RCLONE_CONFIG_STORE_ENDPOINT": store.endpoint, "RCLONE_CONFIG_STORE_REGION": store.region,
                        "RCLONE_CONFIG_STORE_ENV_AUTH": "false", **({"SSL_CERT_FILE": CA_PATH} if store.ca else {})},
        **({"volumes": [f"./{CA_FILE}:{CA_PATH}:ro"]} if store.ca else {}),
        "deploy": limits(64),
    }


def compose(ctx: Context) -> dict:
    """The buckets step of the store the services use is ``seaweedfs-buckets`` (what they wait
    for); while a move keeps both stores, the other one's is ``-external`` or ``-local``."""
    env_file = ctx.env_files(NAME)
    part: dict = {"services": {}}
    store = ctx.config.service(NAME).external
    in_use = external(ctx) is not None
    if store is not None:
        part["services"]["seaweedfs-buckets" if in_use else "seaweedfs-buckets-external"] = _external_buckets(ctx, store)
    if not local(ctx):
        return part
    own = {
        "services": {
            "seaweedfs": {
                "image": IMAGE,
                "restart": "unless-stopped",
                "env_file": env_file,
                "environment": {"GOMEMLIMIT": f"{GO_MEMORY_LIMIT_MB}MiB"},
                "entrypoint": ["/bin/sh", "-c", _START],
                "volumes": ["seaweedfs-data:/data"],
                "healthcheck": hc(["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{S3_PORT}/healthz"],
                                  interval_s=QUICK_CHECK_S),
                "deploy": limits(MEMORY_MB),
            },
            "seaweedfs-buckets": {
                "image": IMAGE,
                **provisioner(_BUCKETS),
                "environment": {"MLOX_BUCKETS": " ".join(buckets(ctx))},
                "depends_on": {"seaweedfs": {"condition": "service_healthy"}},
                "deploy": limits(128),
            },
        },
        "volumes": {"seaweedfs-data": ctx.volume("seaweedfs-data")},
    }
    if in_use:  # kept running for a move: its own buckets step under another name
        own["services"]["seaweedfs-buckets-local"] = own["services"].pop("seaweedfs-buckets")
    part["services"].update(own["services"])
    part["volumes"] = own["volumes"]
    return part


def routes(ctx: Context) -> list[Route]:
    # S3 authenticates every request by its signature, which covers the path: no prefix, no basic auth.
    # An external store is reached at its own endpoint, not through the proxy.
    if external(ctx) is not None:
        return []
    return [Route("s3", f"seaweedfs:{S3_PORT}", auth="own", catch_all=True)]


# Path-style requests signed with the stack's one S3 identity (boto3 reads these variables).
# Health: the gateway's own /healthz (an unsigned GET of the bare root is the home page).
FACE = Face(
    "s3", route="s3", auth="s3", extra="s3", health="/healthz",
    settings={"url": ("AWS_ENDPOINT_URL_S3", "s3_endpoint"),
              "access_key": ("AWS_ACCESS_KEY_ID", "s3_access_key"),
              "secret_key": ("AWS_SECRET_ACCESS_KEY", "s3_secret_key"),
              "buckets": ("MLOX_S3_BUCKETS", "s3_buckets")},
    inside=lambda ctx, route: {"url": endpoint(ctx), "buckets": ",".join(bucket_name(ctx, b) for b in buckets(ctx))},
)


def files(ctx: Context) -> dict[str, str]:
    store = ctx.config.service(NAME).external
    # Shipped while the store is configured (also during a move, for the copy's rclone).
    return {CA_FILE: store.ca} if store is not None and store.ca else {}


def data(ctx: Context) -> Data:
    return Data(
        buckets=tuple(ctx.config.service(NAME).buckets),
        not_kept={"seaweedfs-data": "SeaweedFS' own files: every bucket's objects are kept object by object"}
        if local(ctx) else {},
    )


def memory(ctx: Context) -> int:
    return MEMORY_MB if local(ctx) else 0


def managed(ctx: Context) -> tuple[Managed, ...]:
    """The providers' object stores, holding as much as the data volume."""
    from mlox_iac.pricing import OBJECT_STORAGE

    gb = ctx.config.volume_size_gb
    return tuple(Managed(NAME, f"{store.name}, {gb} GB", store.currency, store.monthly(gb), store.source,
                         store.read_on, store.note) for store in OBJECT_STORAGE.values())


class Seaweedfs(ServiceComponent):
    """The SeaweedFS service: generated S3 keys and its env file."""

    access_key: pulumi.Output[str]
    secret_key: pulumi.Output[str]

    def __init__(self, name: str, ctx: Context, servers, deps: dict, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlox:service:Seaweedfs", name, {}, opts)
        self._setup(name, servers)
        import pulumi

        # SeaweedFS' own keys are generated even while the store is external: a move home uses them.
        self.local_access_key = self.password("access-key", length=20).result
        self.local_secret_key = self.password("secret-key", length=40).result
        values = {"S3_ACCESS_KEY": self.local_access_key, "S3_SECRET_KEY": self.local_secret_key}
        settings = ctx.config.service(NAME).external
        if settings is not None:
            values["EXTERNAL_S3_ACCESS_KEY"] = pulumi.Output.secret(settings.access_key_id.get_secret_value())
            values["EXTERNAL_S3_SECRET_KEY"] = pulumi.Output.secret(settings.secret_access_key.get_secret_value())
        # The keys the services use: the store's in use.
        in_use = external(ctx) is not None
        self.access_key = values["EXTERNAL_S3_ACCESS_KEY"] if in_use else self.local_access_key
        self.secret_key = values["EXTERNAL_S3_SECRET_KEY"] if in_use else self.local_secret_key
        self.client_secrets = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self.write_env(NAME, values, sorted(compose(ctx)["services"]))
        self.register_outputs({"access_key": self.access_key, "secret_key": self.secret_key})


SERVICE = Service(
    name=NAME, image=IMAGE, memory_mb=MEMORY_MB, requires=("caddy",), settings=Settings,
    compose=compose, routes=routes, files=files, data=data, component=Seaweedfs, managed=managed, preset="core",
    memory=memory, faces=(FACE,),
)
