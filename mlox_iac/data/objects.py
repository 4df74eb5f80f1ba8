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

Reading back: the keys and sizes come from the S3 listing; the bytes are read from
SeaweedFS' filer (``plan["s3"]["filer"]``), the layer under the S3 gateway that holds the
same entries and chunks, which the volume server checks against their CRCs on every read.
SeaweedFS 4.48's S3 GET moves about 35 MB/s on a 2-core server (its 4.47 reader budget makes
the gateway fetch chunks from the volume server many times; upstream issue #11380), the
filer about 600 MB/s; reading a restored 1 GiB bucket back took 30 s through S3. An object
the filer cannot serve (a key that is not a plain path, a read error) is read through S3
as before, so every object is still read in full and hashed.

rclone runs as the pinned image ``plan["images"]["rclone"]`` on the stack's Compose network
and reaches the object store at its internal endpoint with the stack's S3 keys, read from
the object store's env file and passed to the container by environment, never on a command line.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import volumes
from .host import DataError, Host, read_env_file

Manifest = dict[str, dict[str, Any]]
BEFORE_BUCKET = "mlox-before-restore"
_MOUNT = "/mlox-objects"
FILER_READERS = 8  # objects read from the filer at once


_CA = "/mlox-store-ca.pem"  # an external store's private CA inside the rclone container


def store_env(name: str, s3: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """rclone's settings of the remote ``name`` for the store ``s3`` (a plan's ``s3`` entry, or
    an external store's), its keys read from the store's env file, and the mounts it needs."""
    keys = read_env_file(s3["env_file"])
    prefix = f"RCLONE_CONFIG_{name.upper()}_"
    env = {f"{prefix}TYPE": "s3", f"{prefix}PROVIDER": "Other", f"{prefix}ENDPOINT": s3["endpoint"],
           f"{prefix}FORCE_PATH_STYLE": "true", f"{prefix}ACCESS_KEY_ID": keys.get(s3["access_key_var"], ""),
           f"{prefix}SECRET_ACCESS_KEY": keys.get(s3["secret_key_var"], "")}
    if s3.get("region"):
        env[f"{prefix}REGION"] = s3["region"]
    mounts = []
    if s3.get("ca"):  # rclone's --ca-cert (global): only the external store speaks TLS here
        env["RCLONE_CA_CERT"] = _CA
        mounts.append(f"{s3['ca']}:{_CA}:ro")
    return env, mounts


def rclone(host: Host, args: list[str], env: dict[str, str], mounts: list[str], what: str = "rclone"):
    """The pinned rclone image on the stack's network, its settings by environment only."""
    return host.docker_run(host.plan["images"]["rclone"], args, env=env, mounts=mounts, network=host.plan["network"],
                           what=what)


def _rclone(host: Host, args: list[str], mount: Path | None = None, what: str = "rclone"):
    env, mounts = store_env("store", host.plan["s3"])
    if mount is not None:
        mounts.append(f"{mount}:{_MOUNT}")
    return rclone(host, args, env, mounts, what)


def capture(host: Host, bucket: str, staging: Path, cache: Path | None = None) -> Manifest:
    """Sync ``bucket`` into ``staging`` (incremental) and return the staged copy's manifest."""
    staging.mkdir(parents=True, exist_ok=True)
    _rclone(host, ["sync", f"store:{bucket}", f"{_MOUNT}/", "--use-server-modtime", "--s3-no-check-bucket",
                   "--checkers", "16", "--transfers", "8", "--retries", "3"], mount=staging,
            what=f"copying the objects of bucket {bucket}")
    return volumes.tree_manifest(staging, cache)


def manifest_of(host: Host, bucket: str, cache: Path | None = None) -> Manifest:
    """Key, size and SHA-256 of every live object; each object is downloaded and hashed.

    With ``cache`` (a JSON file on the server), an object already hashed there is not
    downloaded again while its size, its modification time on the server and its MD5 as the
    server lists it (single-part uploads) are unchanged: any write through S3 changes the
    server's modification time. Only objects new or written since are read.
    """
    listing = json.loads(_rclone(host, ["lsjson", "-R", "--files-only", "--use-server-modtime", "--hash-type", "md5",
                                        f"store:{bucket}"], what=f"listing bucket {bucket}").stdout or "[]")
    stamps = {entry["Path"]: [entry["Size"], entry.get("ModTime", ""), (entry.get("Hashes") or {}).get("md5", "")]
              for entry in listing}
    known = volumes.read_hash_cache(cache)
    digests = {key: known[key][3] for key, stamp in stamps.items() if known.get(key, [])[:3] == stamp}
    wanted = sorted(set(stamps) - set(digests))
    if wanted:
        digests.update(_hash_objects(host, bucket, wanted))
    if cache is not None:
        volumes.write_hash_cache(cache, {key: [*stamp, digests[key]] for key, stamp in stamps.items() if key in digests})
    out: Manifest = {}
    for key, digest in digests.items():
        if key in stamps:  # an object that appeared between the listing and the hashing waits for the next run
            out[key] = {"size": stamps[key][0], "sha256": digest}
    return out


def _hash_objects(host: Host, bucket: str, keys: list[str]) -> dict[str, str]:
    """Download and hash the objects ``keys`` of ``bucket``: {key: SHA-256}. Through the filer
    where it can serve them; through S3 for the rest (and for all of them without a filer)."""
    base = _filer_url(host)
    out: dict[str, str] = {}
    if base is not None:
        plain = [key for key in keys if _filer_path_ok(key)]
        with ThreadPoolExecutor(FILER_READERS) as pool:
            for key, digest in zip(plain, pool.map(lambda key: _filer_sha256(base, bucket, key), plain)):
                if digest is not None:
                    out[key] = digest
    rest = [key for key in keys if key not in out]
    if rest:
        if base is not None:
            host.progress("objects", f"bucket {bucket}: reading {len(rest)} object(s) through S3 (the filer did not serve them)")
        out.update(_s3_hash_objects(host, bucket, rest))
    return out


def _filer_url(host: Host) -> str | None:
    """``http://<the filer container's address on the stack network>:<port><bucket root>``, or
    None when the plan names no filer or its container has no address there."""
    filer = host.plan.get("s3", {}).get("filer")
    if not filer:
        return None
    ids = host.compose_run("ps", "-q", filer["service"], what=f"finding the {filer['service']} container").stdout.split()
    if not ids:
        return None
    networks = json.loads(host.run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", ids[0]],
                                   what=f"reading the {filer['service']} container's address").stdout or "{}")
    address = (networks.get(host.plan["network"]) or {}).get("IPAddress")
    return f"http://{address}:{filer['port']}{filer['root']}" if address else None


def _filer_path_ok(key: str) -> bool:
    """A key the filer serves at the same path: no empty, ``.`` or ``..`` segment, no control characters."""
    return all(part not in ("", ".", "..") for part in key.split("/")) and not any(ord(c) < 32 for c in key)


def _filer_sha256(base: str, bucket: str, key: str) -> str | None:
    """SHA-256 of one object read from the filer, or None when it could not be read in full."""
    url = f"{base}/{urllib.parse.quote(bucket, safe='')}/{urllib.parse.quote(key, safe='/')}"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            expected = response.headers.get("Content-Length")
            got = 0
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                got += len(chunk)
    except Exception:  # noqa: BLE001 - HTTP errors, timeouts, a cut connection: read it through S3 instead
        return None
    if expected is not None and int(expected) != got:
        return None
    return digest.hexdigest()


def _s3_hash_objects(host: Host, bucket: str, keys: list[str] | None) -> dict[str, str]:
    """Download through S3 and hash the objects ``keys`` (all with None): {key: SHA-256}."""
    args = ["hashsum", "sha256", "--download", "--checkers", "16", f"store:{bucket}"]
    if keys is None or any("\n" in key for key in keys):
        sums = _rclone(host, args, what=f"hashing bucket {bucket}").stdout
    else:
        host.data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=host.data_dir, prefix=".hash-list-") as tmp:
            (Path(tmp) / "keys").write_text("".join(f"{key}\n" for key in keys))
            sums = _rclone(host, [*args, "--files-from-raw", f"{_MOUNT}/keys"], mount=Path(tmp),
                           what=f"hashing {len(keys)} objects of bucket {bucket}").stdout
    out = {}
    for line in sums.splitlines():
        digest, _, key = line.partition("  ")
        if key:
            out[key] = digest
    return out


def verify(host: Host, bucket: str, manifest: Manifest, cache: Path | None = None) -> list[str]:
    return volumes.diff(manifest, manifest_of(host, bucket, cache))


def check_copy(bucket: str, restored: Path, manifest: Manifest, cache_dir: Path | None = None) -> None:
    """The restored copy of ``bucket`` against the manifest (before :func:`restore` writes it).

    ``cache_dir`` keeps hashes between runs (a migration restores the same copy again with
    its final delta): files unchanged since they were hashed are not read again."""
    copy_cache = cache_dir / f"hashes-restored-{bucket}.json" if cache_dir else None
    problems = volumes.diff(manifest, volumes.tree_manifest(restored, copy_cache))
    if problems:
        raise DataError(f"bucket {bucket}: the restored copy does not match the backup's manifest: {problems[0]}")


def make_buckets(host: Host, buckets: list[str]) -> None:
    """``buckets`` and the move-aside bucket, created where missing (before :func:`restore`;
    the stack may still be serving: an empty bucket changes nothing it holds)."""
    for name in [*buckets, BEFORE_BUCKET]:
        _rclone(host, ["mkdir", f"store:{name}"], what=f"creating bucket {name}")


def restore(host: Host, bucket: str, restored: Path, manifest: Manifest, cache_dir: Path | None = None) -> dict[str, Any]:
    """Make the bucket hold exactly the restored copy (checked by :func:`check_copy`, its
    buckets made by :func:`make_buckets` first); replaced objects move aside. With
    ``cache_dir``, live objects unchanged since an earlier run hashed them are not read back
    again."""
    live_cache = cache_dir / f"hashes-live-{bucket}.json" if cache_dir else None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    host.progress("objects", f"bucket {bucket}: writing {len(manifest)} objects into the store")
    # --s3-disable-checksum: rclone would otherwise read each large file once more before
    # its upload, for an MD5 it stores as object metadata (a key the original objects did
    # not have); every object is read back and its SHA-256 checked below instead. A lone
    # 1 GiB upload took 15-16 s with it against 20-25 s without (loopback, loaded 2-core
    # machine); in a restore the small objects upload while rclone reads, and the write
    # phase did not change measurably.
    _rclone(host, ["sync", f"{_MOUNT}/", f"store:{bucket}", "--backup-dir", f"store:{BEFORE_BUCKET}/{stamp}/{bucket}",
                   "--s3-disable-checksum", "--checkers", "16", "--transfers", "8", "--retries", "3"], mount=restored,
            what=f"restoring the objects of bucket {bucket}")
    host.progress("objects", f"bucket {bucket}: reading the objects back to verify them")
    problems = verify(host, bucket, manifest, live_cache)
    if problems:
        raise DataError(f"bucket {bucket}: differs after the restore: {problems[0]}")
    return {"objects": len(manifest), "bytes": sum(e.get("size", 0) for e in manifest.values())}
