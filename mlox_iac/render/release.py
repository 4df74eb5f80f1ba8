"""The release step of ``mlox-iac code push``, run by Python inside the Airflow scheduler.

A pure renderer: :data:`SCRIPT` is the program, :func:`argv` its arguments. It runs with
the image's own Python (``python - ARGS`` with the script on stdin), as the user airflow,
after the project's files and wheels were copied onto the server:

1. the environment ``<code>/venvs/<requirements hash>``: a virtualenv built from the copied
   wheels only (``pip --no-index``), reused by every release with the same requirements;
2. the release's DAGs parsed by Airflow's own ``DagBag``; any import error refuses the
   release: the errors are printed, the release folder removed, the running one untouched;
3. the switch: ``<dags>/<project>`` is a symbolic link to the release's ``dags/`` folder,
   replaced atomically (``rename``), and ``<code>/<project>/current`` names the release.
   Older releases beyond the newest ``keep`` are removed.

It prints one JSON object: ``{"ok": true, "release": ..., "previous": ..., "dags": [...]}`` or
``{"ok": false, "errors": {file: error}}`` (exit 3).
"""

from __future__ import annotations

CODE_DIR = "/opt/airflow/code"  # the volume airflow-code in the scheduler and the DAG processor
DAGS_DIR = "/opt/airflow/dags"
REFUSED = 3

SCRIPT = r'''
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--code", required=True)
parser.add_argument("--dags", required=True)
parser.add_argument("--project", required=True)
parser.add_argument("--release", required=True)
parser.add_argument("--requirements", required=True)
parser.add_argument("--keep", type=int, default=3)
parser.add_argument("--check-only", action="store_true")
args = parser.parse_args()

code, dags = Path(args.code), Path(args.dags)
project = code / args.project
release = project / "releases" / args.release
venv = code / "venvs" / args.requirements
wheels = code / "wheels" / args.requirements
current_file = project / "current"
previous = current_file.read_text().strip() if current_file.exists() else None


def say(**fields):
    print(json.dumps(fields, sort_keys=True), flush=True)


# 1. the environment, once per set of requirements
if not (venv / ".complete").exists():
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "--disable-pip-version-check", "--no-index", "--find-links", str(wheels),
                           "--only-binary=:all:", "-r", str(release / "requirements.txt")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        if not args.check_only and args.release != previous:
            shutil.rmtree(release, ignore_errors=True)
        say(ok=False, errors={"requirements.txt": (done.stdout + done.stderr)[-3000:]})
        sys.exit(3)
    (venv / ".complete").touch()
link = release / "venv"
if not link.is_symlink():
    link.symlink_to(venv)

# 2. Airflow's own parse of the release's DAGs (the DAG processor's)
try:  # Airflow 3.1+; before, airflow.models
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag

bag = DagBag(dag_folder=str(release / "dags"), safe_mode=False)
errors = {os.path.relpath(k, release): v for k, v in bag.import_errors.items()}
if not errors and not bag.dag_ids:
    errors = {"dags/": "no DAG found"}
if errors:
    if args.release != previous:
        shutil.rmtree(release, ignore_errors=True)
    say(ok=False, errors=errors, previous=previous)
    sys.exit(3)
if args.check_only:
    say(ok=True, checked=args.release, dags=sorted(bag.dag_ids))
    sys.exit(0)

# 3. the switch: a new link renamed over the old one
dags.mkdir(parents=True, exist_ok=True)
target = dags / args.project
part = dags / f".{args.project}.part"
if part.is_symlink() or part.exists():
    part.unlink()
part.symlink_to(release / "dags")
os.replace(part, target)
(project / "current.part").write_text(args.release + "\n")
os.replace(project / "current.part", current_file)
releases = sorted((p for p in (project / "releases").iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
for old in releases[:-args.keep]:
    if old.name not in (args.release, previous):
        shutil.rmtree(old, ignore_errors=True)
say(ok=True, release=args.release, previous=previous, dags=sorted(bag.dag_ids), changed=previous != args.release)
'''


def argv(project: str, release: str, requirements: str, *, code: str = CODE_DIR, dags: str = DAGS_DIR,
         keep: int = 3, check_only: bool = False) -> list[str]:
    """The script's arguments (after ``python -``)."""
    out = ["--code", code, "--dags", dags, "--project", project, "--release", release, "--requirements", requirements,
           "--keep", str(keep)]
    return out + (["--check-only"] if check_only else [])
