"""Cached virtualenvs the pipeline tests run code in: Airflow 3 itself (for its DagBag and the
release script) and a rendered project's requirements (for the project's own tests).

Airflow is too heavy for the test venv (and its pins fight MLflow's), so it gets a venv of
its own, built once per version into ``~/.cache/mlox-iac-pipeline`` (``MLOX_PIPELINE_CACHE``)
from PyPI and reused by every later run: the first build takes a few minutes, later ones
nothing. A build that fails fails the tests that need it (never a skip).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

AIRFLOW = "3.3.2"  # the stack's (mlox_iac.components.services.airflow.AIRFLOW)
ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    folder = Path(os.environ.get("MLOX_PIPELINE_CACHE") or Path.home() / ".cache" / "mlox-iac-pipeline")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def _lock(name: str):
    with open(cache_dir() / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _build(name: str, pip_args: list[str]) -> Path:
    """A venv ``name`` with ``pip install PIP_ARGS``, built once (``.complete`` marks it)."""
    folder = cache_dir() / name
    with _lock(name):
        if (folder / ".complete").is_file():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        done = subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q",
                               "--disable-pip-version-check", *pip_args], capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"building the venv {name} failed: {done.stderr[-2000:]}")
        (folder / ".complete").touch()
    return folder


def airflow() -> Path:
    """A venv with Apache Airflow at the stack's version (and its standard provider)."""
    from mlox_iac.components.services import airflow as service

    assert service.AIRFLOW == AIRFLOW, "the stack's Airflow moved: update tests/pipeline/venvs.py"
    return _build(f"airflow-{AIRFLOW}", [f"apache-airflow=={AIRFLOW}"])


def project(requirements: Path) -> Path:
    """A venv with a rendered project's requirements, mlox-client from this checkout, and pytest."""
    text = requirements.read_text()
    key = hashlib.sha256(text.encode() + (ROOT / "client" / "pyproject.toml").read_bytes()).hexdigest()[:12]
    wheels = cache_dir() / "client-wheel"
    wheels.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(ROOT / "client")], check=True, capture_output=True)
    return _build(f"project-{key}", ["--find-links", str(wheels), "-r", str(requirements), "pytest"])
