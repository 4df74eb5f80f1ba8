"""Volume files: kept as they are, verified by path, size and SHA-256.

- capture: nothing is copied; restic reads ``<data>/volumes/<volume>`` directly (read-only
  mount), and the manifest lists every regular file (and symlink) with its size and SHA-256.
- restore: the snapshot's copy (already restored beside the live data) is verified against
  the manifest, then swapped in by rename; the live directory is kept as
  ``.<volume>.before-restore`` until the next restore of that volume.
- verify: the manifest of the live directory against an expected one.

The writers of a volume (the containers that mount it) are stopped by the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .host import DataError, Host, diff_manifests

Manifest = dict[str, dict[str, Any]]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_manifest(root: Path, cache: Path | None = None) -> Manifest:
    """``{relative path: {"size", "sha256"}}`` for every file under ``root`` (symlinks: ``{"link"}``).

    ``cache`` (a JSON file outside ``root``) remembers hashes by size, mtime and inode, so
    an unchanged tree is not read again.
    """
    known = read_hash_cache(cache)
    fresh: dict[str, list] = {}
    out: Manifest = {}
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if path.is_symlink():
                out[rel] = {"link": os.readlink(path)}
                continue
            if not path.is_file():
                continue
            key = [st.st_size, st.st_mtime_ns, st.st_ino]
            cached = known.get(rel)
            digest = cached[3] if cached and cached[:3] == key else sha256_file(path)
            fresh[rel] = [*key, digest]
            out[rel] = {"size": st.st_size, "sha256": digest}
    if cache is not None:
        write_hash_cache(cache, fresh)
    return out


def read_hash_cache(cache: Path | None) -> dict[str, list]:
    """A hash cache as :func:`write_hash_cache` left it (empty when missing or unreadable)."""
    if cache is None or not cache.is_file():
        return {}
    try:
        return json.loads(cache.read_text())
    except ValueError:
        return {}


def write_hash_cache(cache: Path, entries: dict[str, list]) -> None:
    """Write a hash cache whole, then rename it into place."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    tmp.replace(cache)


def diff(expected: Manifest, actual: Manifest) -> list[str]:
    return diff_manifests(expected, actual, changed=lambda e, a: f"differs ({e} != {a})")


def live_dir(host: Host, volume: str) -> Path:
    return host.data_dir / "volumes" / volume


def capture(host: Host, volume: str, cache: Path | None = None) -> Manifest:
    """The manifest of the live volume (restic reads the files themselves)."""
    return tree_manifest(live_dir(host, volume), cache)


def verify(host: Host, volume: str, manifest: Manifest) -> list[str]:
    return diff(manifest, tree_manifest(live_dir(host, volume)))


def check_copy(volume: str, restored: Path, manifest: Manifest) -> None:
    """The restored copy of ``volume`` against the manifest (before :func:`restore` swaps it in)."""
    problems = diff(manifest, tree_manifest(restored))
    if problems:
        raise DataError(f"volume {volume}: the restored copy does not match the backup's manifest: {problems[0]}")


def restore(host: Host, volume: str, restored: Path, manifest: Manifest) -> dict[str, Any]:
    """Swap a copy checked by :func:`check_copy` in for the live volume; the old files are kept beside it."""
    live = live_dir(host, volume)
    before = live.parent / f".{volume}.before-restore"
    if before.exists():
        shutil.rmtree(before)
    if live.exists():
        live.rename(before)
    restored.rename(live)
    problems = verify(host, volume, manifest)
    if problems:
        raise DataError(f"volume {volume}: differs after the swap: {problems[0]} (the old files are in {before})")
    return {"files": len(manifest), "bytes": sum(e.get("size", 0) for e in manifest.values())}
