"""Install mlflow==VERSION (+ extra requirements) into the running venv (image build only).

Plain `pip install mlflow==VERSION ...` first. If that cannot resolve because the index
this machine reaches has the `mlflow` release but not the matching `mlflow-skinny` /
`mlflow-tracing` releases (seen for 3.18.0: "No matching distribution found for
mlflow-skinny==3.18.0"), fall back to: the `mlflow` wheel itself without dependencies
(it is a superset: it ships the whole `mlflow` package, including what skinny and
tracing ship), plus the requirements of mlflow VERSION and of skinny/tracing at
FALLBACK_VERSION (the newest release the index has). The result reports and runs
mlflow VERSION.

usage: python install_mlflow.py VERSION FALLBACK_VERSION [extra requirement ...]
"""

import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

version, fallback, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
pip = [sys.executable, "-m", "pip"]

if subprocess.call([*pip, "install", f"mlflow=={version}", *extra]) == 0:
    sys.exit(0)

print(f"install_mlflow: plain install of mlflow=={version} failed; using the "
      f"skinny/tracing {fallback} dependency lists (see this script's docstring)", flush=True)
SUBPACKAGES = ("mlflow-skinny", "mlflow-tracing", "mlflow")


def base_requirements(lines):
    out = []
    for line in lines or []:
        req, _, marker = line.partition(";")
        name = req.strip().split("<")[0].split(">")[0].split("=")[0].split("!")[0].split("[")[0].split("~")[0].strip()
        if "extra ==" in marker or name.lower().replace("_", "-") in SUBPACKAGES:
            continue
        out.append(line.strip())
    return out


subprocess.check_call([*pip, "install", "--no-deps", f"mlflow=={version}"])
reqs = base_requirements(metadata.requires("mlflow"))
with tempfile.TemporaryDirectory() as tmp:
    subprocess.check_call([*pip, "download", "--no-deps", "-d", tmp,
                           f"mlflow-skinny=={fallback}", f"mlflow-tracing=={fallback}"])
    for whl in Path(tmp).glob("*.whl"):
        with zipfile.ZipFile(whl) as zf:
            meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            meta = zf.read(meta_name).decode()
        reqs += base_requirements(
            line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")
        )
reqs = sorted(set(reqs)) + extra
print("install_mlflow: requirements:", " ".join(reqs), flush=True)
subprocess.check_call([*pip, "install", *reqs])
got = metadata.version("mlflow")
if got != version:
    sys.exit(f"install_mlflow: installed mlflow {got}, expected {version}")
