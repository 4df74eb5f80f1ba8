"""SeaweedFS: the S3-compatible object store (MinIO's community edition is archived).

One ``weed server`` (master, volume, filer and S3 gateway in one process) with its
data on the data volume. The S3 API is published only through the proxy. Its one S3
identity gets a generated access key and secret; the identity file is written inside
the container at start from the env file, so no credential lands in the bundle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from mlox_iac.components.services.base import (
    Context, Data, Managed, Route, Service, ServiceComponent, ServiceSettings, hc, limits, provisioner, Face,
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


class Settings(ServiceSettings):
    """SeaweedFS S3-compatible object store."""

    buckets: list[str] = Field(default_factory=lambda: ["data"], description="Buckets for user data")

    @field_validator("buckets")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        import re

        for n in names:
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", n):
                raise ValueError(f"{n!r} is not a valid bucket name (allowed: 3-63 of a-z 0-9 . -)")
        return names


def buckets(ctx: Context) -> list[str]:
    """Every bucket an enabled service declares (the user's buckets are this service's own)."""
    from mlox_iac.components.services.registry import SERVICES

    return list(dict.fromkeys(b for n in ctx.config.enabled_services() for b in SERVICES[n].data(ctx).buckets))


def compose(ctx: Context) -> dict:
    env_file = ctx.env_files(NAME)
    return {
        "services": {
            "seaweedfs": {
                "image": IMAGE,
                "restart": "unless-stopped",
                "env_file": env_file,
                "environment": {"GOMEMLIMIT": f"{GO_MEMORY_LIMIT_MB}MiB"},
                "entrypoint": ["/bin/sh", "-c", _START],
                "volumes": ["seaweedfs-data:/data"],
                "healthcheck": hc(["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{S3_PORT}/healthz"]),
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


def routes(ctx: Context) -> list[Route]:
    # S3 authenticates every request by its signature, which covers the path: no prefix, no basic auth.
    return [Route("s3", f"seaweedfs:{S3_PORT}", auth="own", catch_all=True)]


# Path-style requests signed with the stack's one S3 identity (boto3 reads these variables).
# Health: the gateway's own /healthz (an unsigned GET of the bare root is the home page).
FACE = Face(
    "s3", route="s3", auth="s3", extra="s3", health="/healthz",
    settings={"url": ("AWS_ENDPOINT_URL_S3", "s3_endpoint"),
              "access_key": ("AWS_ACCESS_KEY_ID", "s3_access_key"),
              "secret_key": ("AWS_SECRET_ACCESS_KEY", "s3_secret_key"),
              "buckets": ("MLOX_S3_BUCKETS", "s3_buckets")},
    inside=lambda ctx, route: {"url": f"http://{NAME}:{S3_PORT}", "buckets": ",".join(buckets(ctx))},
)


def files(ctx: Context) -> dict[str, str]:
    return {}


def data(ctx: Context) -> Data:
    return Data(
        buckets=tuple(ctx.config.service(NAME).buckets),
        not_kept={"seaweedfs-data": "SeaweedFS' own files: every bucket's objects are kept object by object"},
    )


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
        self.access_key = self.password("access-key", length=20).result
        self.secret_key = self.password("secret-key", length=40).result
        self.client_secrets = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self.write_env(NAME, {"S3_ACCESS_KEY": self.access_key, "S3_SECRET_KEY": self.secret_key}, ["seaweedfs"])
        self.register_outputs({"access_key": self.access_key, "secret_key": self.secret_key})


SERVICE = Service(
    name=NAME, image=IMAGE, memory_mb=MEMORY_MB, requires=("caddy",), settings=Settings,
    compose=compose, routes=routes, files=files, data=data, component=Seaweedfs, managed=managed, preset="core", faces=(FACE,),
)
