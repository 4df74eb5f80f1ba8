"""mlox-client stays light (a bare import and connect() load no integration, no Pulumi), is
one package with the stack's own rules (route names, profile directory), and builds a wheel
that installs and imports in a clean venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

from client_helpers import clean, exported, write_profile  # noqa: F401 (clean: a fixture)

from conftest import ROOT

CLIENT = ROOT / "client"
HEAVY = ("boto3", "botocore", "mlflow", "feast", "pyarrow", "sqlalchemy", "psycopg", "psycopg2", "pandas", "numpy",
         "s3fs", "fsspec", "label_studio_sdk", "httpx", "requests", "pulumi", "pydantic", "mlox_iac")


def loaded_after(code: str, env: dict | None = None) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT / "client",
                          env={**(env or os.environ), "PYTHONPATH": str(CLIENT / "src")})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_a_bare_import_loads_no_integration():
    assert loaded_after("import mlox_client") == []


def test_connect_loads_no_integration_either(clean):
    write_profile(clean, "dev", exported())
    code = "import mlox_client; s = mlox_client.connect(); s.s3.storage_options; s.model('churn').headers()"
    assert loaded_after(code, env=dict(os.environ)) == []


def test_route_names_follow_the_stacks_rule():
    from mlox_client.models import route_name
    from mlox_iac.components.services import serving

    for name in ("churn", "Churn.v2", "fraud_detector", "a--b", "Ünïcode-Model", "x" * 80, "9lives"):
        assert route_name(name) == serving.route_name(name), name


def test_profiles_are_where_mlox_iac_writes_them(clean):
    from mlox_client import _settings
    from mlox_iac import connect

    assert _settings.profile_dir() == connect.profile_dir() == clean / "config" / "mlox"


def test_version_is_one():
    import mlox_client

    text = (CLIENT / "pyproject.toml").read_text()
    assert 'version = { attr = "mlox_client.__version__" }' in text and mlox_client.__version__ == "0.1.0"


def _can_build_here() -> bool:
    """Whether this venv's setuptools builds wheels by itself (70.1 has bdist_wheel; before, it
    needs the wheel package): then the build needs no index."""
    import importlib.util

    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def test_the_wheel_installs_in_a_clean_venv_without_pulumi(tmp_path):
    """Build (with this venv's setuptools when it can, offline; else in pip's isolated build
    environment, as python -m build does), install with no index and no dependencies into a
    fresh venv, and import."""
    import shutil

    source = shutil.copytree(CLIENT, tmp_path / "client", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    wheels = tmp_path / "wheels"
    isolation = ["--no-build-isolation"] if _can_build_here() else []
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                            "--disable-pip-version-check", "-w", str(wheels), str(source)],
                           capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("mlox_client-0.1.0-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"mlox_client/py.typed", "mlox_client/faces.json", "mlox_client/__init__.py"} <= set(names)
    metadata = zipfile.ZipFile(wheel).read("mlox_client-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Dist" not in metadata.split("Provides-Extra")[0]  # no dependency outside the extras
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index",
                              "--no-deps", "--disable-pip-version-check", str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    code = ("import importlib.metadata as m, importlib.util as u, json, mlox_client, pathlib; "
            "print(json.dumps([mlox_client.__version__, m.version('mlox-client'), u.find_spec('pulumi') is None, "
            "u.find_spec('mlox_iac') is None, str(pathlib.Path(mlox_client.__file__).parent)]))")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    version, dist_version, no_pulumi, no_mlox_iac, where = json.loads(done.stdout)
    assert (version, dist_version, no_pulumi, no_mlox_iac) == ("0.1.0", "0.1.0", True, True)
    assert where.startswith(str(venv))


def test_the_day_one_example_starts_with_mlox_client_alone():
    """The e2e script (client/examples/day_one.py) loads each integration inside its step:
    its help runs where only mlox-client is installed; the DAG that runs it compiles."""
    done = subprocess.run([sys.executable, str(CLIENT / "examples" / "day_one.py"), "--help"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(CLIENT / "src")})
    assert done.returncode == 0 and "--parquet-mb" in done.stdout, done.stderr
    compile((CLIENT / "examples" / "day_one_dag.py").read_text(), "day_one_dag.py", "exec")
