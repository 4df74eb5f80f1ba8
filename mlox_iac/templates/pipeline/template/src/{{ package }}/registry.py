"""The registered model's ``champion``: its version from MLflow's REST API, its model from a
local cache.

Every Airflow task is a new process. Importing MLflow and downloading the champion's
artifacts took 8–10 s of each task that only needs to predict with it (benchmarks/pipeline.py
in mlox-iac). Here the version is one HTTPS request, and the model is loaded with skops from a
file that the first task to need that version wrote. ``train`` writes the file of the
version it registers, so the tasks after it find it.

A cache file is named by the model, its version and the version's creation time, so a model
deleted and registered again under the same version numbers never reads an old file. skops
loads it trusting only the types ``model.TRUSTED_TYPES`` names; a file with any other type,
or one that cannot be read, is set aside and the version is loaded from MLflow again.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

ALIAS = "champion"
KEEP = 4  # cache files kept per model: the newest


@dataclass(frozen=True)
class Version:
    """One registered model version, as the registry describes it."""

    name: str
    version: str
    created: int  # the version's creation time in ms (its cache key, with the version)


def cache_dir() -> Path:
    """``PIPELINE_CACHE_DIR``, else ``~/.cache/<package>/models``."""
    folder = os.environ.get("PIPELINE_CACHE_DIR")
    return Path(folder) if folder else Path.home() / ".cache" / __package__ / "models"


def current(stack, name: str, alias: str = ALIAS) -> Version | None:
    """The version ``alias`` points at, or None when the model or the alias does not exist."""
    import requests

    env = stack.mlflow.env()
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    answer = requests.get(f"{env['MLFLOW_TRACKING_URI'].rstrip('/')}/api/2.0/mlflow/registered-models/alias",
                          params={"name": name, "alias": alias}, auth=(user, password) if user else None,
                          verify=env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True, timeout=60)
    # No such model: 404 RESOURCE_DOES_NOT_EXIST; a model without the alias: MLflow 3 answers
    # 400 INVALID_PARAMETER_VALUE "Registered model alias champion not found."
    if answer.status_code in (400, 404) and ("RESOURCE_DOES_NOT_EXIST" in answer.text[:500]
                                             or "not found" in answer.text[:500].lower()):
        return None
    if answer.status_code != 200:
        raise RuntimeError(f"MLflow: the {alias!r} alias of {name!r}: HTTP {answer.status_code}: {answer.text[:300]}")
    found = answer.json()["model_version"]
    return Version(name, str(found["version"]), int(found.get("creation_timestamp") or 0))


def _path(version: Version) -> Path:
    return cache_dir() / f"{version.name}-v{version.version}-{version.created}.skops"


def _trusted() -> list[str]:
    from . import model

    return sorted({t for types in model.TRUSTED_TYPES.values() for t in types})


def save(version: Version, estimator) -> Path | None:
    """Write the version's model to the cache (atomically; None where the cache is not
    writable, which only costs the next task a download)."""
    import skops.io

    path = _path(version)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".skops")
    except OSError:
        return None
    os.close(fd)
    try:
        skops.io.dump(estimator, tmp)
        os.replace(tmp, path)
    except OSError:
        return None
    finally:
        Path(tmp).unlink(missing_ok=True)  # left only when the dump or the rename failed
    old = sorted(path.parent.glob(f"{version.name}-v*.skops"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in old[KEEP:]:
        stale.unlink(missing_ok=True)
    return path


def load(stack, version: Version):
    """(model, where it came from: "cache" or "mlflow") of the version; what MLflow gave is
    cached for the next task."""
    import skops.io

    path = _path(version)
    if path.exists():
        try:
            return skops.io.load(path, trusted=_trusted()), "cache"
        except Exception:  # noqa: BLE001 (unreadable or untrusted: set aside, loaded from MLflow below)
            path.unlink(missing_ok=True)
    mlflow = stack.mlflow.module()
    estimator = mlflow.sklearn.load_model(f"models:/{version.name}/{version.version}")
    save(version, estimator)
    return estimator, "mlflow"


def champion(stack, name: str):
    """(version, model, "cache" or "mlflow") of the current champion, or (None, None, None)."""
    version = current(stack, name)
    if version is None:
        return None, None, None
    return (version.version, *load(stack, version))
