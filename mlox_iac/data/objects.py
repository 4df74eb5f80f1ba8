"""Bucket objects: every object, verified by key, size and SHA-256.

- capture: ``rclone sync`` copies the bucket into a staging directory on the data volume
  that is kept between runs, so a run downloads only new or changed objects (compared by
  size and the server's modification time) and restic sees unchanged files as unchanged.
  The manifest is computed from that staged copy (hashes cached by size and mtime), which is
  exactly what the snapshot holds. Cost: the staging copy takes as much disk as the buckets.
- restore: ``rclone sync`` from the restored copy into the bucket (created if missing);
  objects it would overwrite or delete move to the bucket ``mlox-before-restore`` instead
  (rclone ``--backup-dir``), then every object is downloaded again and hashed (``rclone
  hashsum sha256 --download``) and compared with the manifest.
- verify: the same download-and-hash of the live bucket against a manifest.

rclone runs as the pinned image ``plan["images"]["rclone"]`` on the stack's Compose network
and reaches the object store at its internal endpoint with the stack's S3 keys, read from
the object store's env file and passed to the container by environment, never on a command line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import volumes
from .host import DataError, Host, read_env_file

Manifest = dict[str, dict[str, Any]]
BEFORE_BUCKET = "mlox-before-restore"
_MOUNT = "/mlox-objects"


def _rclone(host: Host, args: list[str], mount: Path | None = None, what: str = "rclone"):
    s3 = host.plan["s3"]
    keys = read_env_file(s3["env_file"])
    env = {
        "RCLONE_CONFIG_STORE_TYPE": "s3",
        "RCLONE_CONFIG_STORE_PROVIDER": "Other",
        "RCLONE_CONFIG_STORE_ENDPOINT": s3["endpoint"],
        "RCLONE_CONFIG_STORE_FORCE_PATH_STYLE": "true",
        "RCLONE_CONFIG_STORE_ACCESS_KEY_ID": keys.get(s3["access_key_var"], ""),
        "RCLONE_CONFIG_STORE_SECRET_ACCESS_KEY": keys.get(s3["secret_key_var"], ""),
    }
    mounts = [f"{mount}:{_MOUNT}"] if mount is not None else []
    return host.docker_run(host.plan["images"]["rclone"], args, env=env, mounts=mounts, network=host.plan["network"],
                           what=what)


def capture(host: Host, bucket: str, staging: Path, cache: Path | None = None) -> Manifest:
    """Sync ``bucket`` into ``staging`` (incremental) and return the staged copy's manifest."""
    staging.mkdir(parents=True, exist_ok=True)
    _rclone(host, ["sync", f"store:{bucket}", f"{_MOUNT}/", "--use-server-modtime", "--s3-no-check-bucket",
                   "--checkers", "16", "--transfers", "8", "--retries", "3"], mount=staging,
            what=f"copying the objects of bucket {bucket}")
    return volumes.tree_manifest(staging, cache)


def manifest_of(host: Host, bucket: str) -> Manifest:
    """Key, size and SHA-256 of every live object (downloads each one)."""
    listing = json.loads(_rclone(host, ["lsjson", "-R", "--files-only", f"store:{bucket}"],
                                 what=f"listing bucket {bucket}").stdout or "[]")
    sizes = {entry["Path"]: entry["Size"] for entry in listing}
    sums = _rclone(host, ["hashsum", "sha256", "--download", "--checkers", "16", f"store:{bucket}"],
                   what=f"hashing bucket {bucket}").stdout
    out: Manifest = {}
    for line in sums.splitlines():
        digest, _, key = line.partition("  ")
        if key:
            out[key] = {"size": sizes.get(key), "sha256": digest}
    return out


def verify(host: Host, bucket: str, manifest: Manifest) -> list[str]:
    return volumes.diff(manifest, manifest_of(host, bucket))


def restore(host: Host, bucket: str, restored: Path, manifest: Manifest) -> dict[str, Any]:
    """Make the bucket hold exactly the restored objects; replaced ones move aside."""
    problems = volumes.diff(manifest, volumes.tree_manifest(restored))
    if problems:
        raise DataError(f"bucket {bucket}: the restored copy does not match the backup's manifest: {problems[0]}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    _rclone(host, ["mkdir", f"store:{bucket}"], what=f"creating bucket {bucket}")
    _rclone(host, ["mkdir", f"store:{BEFORE_BUCKET}"], what=f"creating bucket {BEFORE_BUCKET}")
    _rclone(host, ["sync", f"{_MOUNT}/", f"store:{bucket}", "--backup-dir", f"store:{BEFORE_BUCKET}/{stamp}/{bucket}",
                   "--checkers", "16", "--transfers", "8", "--retries", "3"], mount=restored,
            what=f"restoring the objects of bucket {bucket}")
    problems = verify(host, bucket, manifest)
    if problems:
        raise DataError(f"bucket {bucket}: differs after the restore: {problems[0]}")
    return {"objects": len(manifest), "bytes": sum(e.get("size", 0) for e in manifest.values())}
