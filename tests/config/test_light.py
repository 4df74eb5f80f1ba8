"""What loads a stack's config or a client face stays light: no Pulumi (each check in a fresh
interpreter, where nothing else has imported it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT, settings, write_stack

HEAVY = ("pulumi", "pulumi_command", "pulumi_random", "pulumi_tls", "grpc")


def imported_after(code: str) -> list[str]:
    """The heavy modules in sys.modules after running ``code`` in a fresh Python."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_loading_a_stack_config_imports_no_pulumi(tmp_path: Path):
    path = write_stack(tmp_path, settings("onprem", services={"preset": "full"}))
    assert imported_after(f"from mlox_iac.config import load_file; load_file(__import__('pathlib').Path({str(path)!r}))") == []


def test_the_client_faces_and_their_readers_import_no_pulumi():
    code = ("from mlox_iac import connect, faces; from mlox_iac.components.services.registry import SERVICES; "
            "faces.client_faces(); connect.env_exports({'urls': {'mlflow': 'https://x/mlflow'}})")
    assert imported_after(code) == []


def test_building_a_component_still_makes_a_pulumi_resource():
    """The Pulumi base joins a service's component when it is built (ServiceComponent)."""
    assert imported_after("from mlox_iac.components.services import mlflow; mlflow.Mlflow") == []
    code = ("import pulumi; from mlox_iac.components.services.base import _resource_class; "
            "from mlox_iac.components.services import mlflow; "
            "assert issubclass(_resource_class(mlflow.Mlflow), (mlflow.Mlflow, pulumi.ComponentResource))")
    assert "pulumi" in imported_after(code)
