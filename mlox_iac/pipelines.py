"""Pipeline projects: ``mlox-iac new pipeline`` renders one, ``mlox-iac code push`` ships it.

Rendering is Copier's, from the template in ``mlox_iac/templates/pipeline`` (its answers are
kept in the project's ``.copier-answers.yml``). A push is a release of the project's files:

- its name is the hash of what it ships (``dags/``, ``src/``, ``requirements.txt``), so
  pushing the same files twice changes nothing;
- its dependencies travel as wheels: downloaded on this machine (which reaches a package
  index) for the server's Python and platform, binary only, cached per requirements and
  platform, copied with the files; the server installs them with ``pip --no-index`` into an
  environment it reuses while the requirements stay the same (``render/release.py``);
- Airflow's ``DagBag`` parses the release on the server before the DAG folder is switched
  to it; a release that does not parse is refused and the running one stays.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlox_iac.errors import ConfigError, MloxError
from mlox_iac.render import release as release_script

TEMPLATE = Path(__file__).resolve().parent / "templates" / "pipeline"
CLIENT_DIR = Path(__file__).resolve().parents[1] / "client"  # mlox-client, beside mlox-iac in a checkout
SHIPPED = ("dags", "src", "requirements.txt")  # what a release carries
SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
AIRFLOW_USER = "50000:0"  # the user of the Airflow image


# --------------------------------------------------------------------------- new


def render(dest: Path, answers: Mapping[str, Any], *, overwrite: bool = False) -> Path:
    """Render the pipeline template into ``dest`` with ``answers`` (the rest: defaults)."""
    from copier import run_copy
    from copier.errors import CopierError

    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise ConfigError([f"DIR: {dest} is not empty (allowed: a new or empty folder, or --force to render over it)"])
    try:
        run_copy(str(TEMPLATE), str(dest), data=dict(answers), defaults=True, overwrite=overwrite, quiet=True,
                 unsafe=False, vcs_ref=None)
    except (CopierError, ValueError) as error:
        raise ConfigError([_copier_problem(error)]) from None
    return dest


def _copier_problem(error: Exception) -> str:
    """Copier's validation message ("question: text") as one line."""
    text = " ".join(str(error).split())
    return text if ":" in text else f"answers: {text}"


def answers_of(project: Path) -> dict[str, Any]:
    """The answers a project was rendered with (``.copier-answers.yml``)."""
    import yaml

    path = project / ".copier-answers.yml"
    if not path.is_file():
        raise ConfigError([f"{path}: missing (allowed: a project made by `mlox-iac new pipeline`)"])
    return {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if not k.startswith("_")}


# --------------------------------------------------------------------------- a release


def shipped_files(project: Path) -> list[Path]:
    """What a release carries, relative to the project, in a stable order."""
    files: list[Path] = []
    for name in SHIPPED:
        path = project / name
        if path.is_file():
            files.append(Path(name))
        elif path.is_dir():
            files += sorted(p.relative_to(project) for p in path.rglob("*")
                            if p.is_file() and not SKIPPED_PARTS & set(p.parts) and p.suffix not in (".pyc", ".pyo"))
    missing = [n for n in SHIPPED if not (project / n).exists()]
    if missing:
        raise ConfigError([f"{project}: {', '.join(missing)} missing (allowed: a project made by `mlox-iac new pipeline`)"])
    return files


def content_hash(project: Path, files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for rel in files:
        digest.update(str(rel).encode() + b"\0" + (project / rel).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def requirements_hash(requirements: str, platform: Mapping[str, str], client_wheel: Path | None) -> str:
    digest = hashlib.sha256(requirements.encode())
    digest.update(json.dumps(dict(platform), sort_keys=True).encode())
    if client_wheel is not None:  # its files, not the zip's timestamps (a rebuilt wheel is the same wheel)
        import zipfile

        with zipfile.ZipFile(client_wheel) as wheel:
            for member in sorted(wheel.namelist()):
                digest.update(member.encode() + b"\0" + wheel.read(member))
    return digest.hexdigest()[:16]


def release_tarball(project: Path, files: Sequence[Path]) -> bytes:
    """The release's files as a gzip'd tar (owned by the Airflow user, modes kept)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for rel in files:
            info = tar.gettarinfo(str(project / rel), arcname=str(rel))
            info.uid, info.gid, info.uname, info.gname = 50000, 0, "", ""
            with open(project / rel, "rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


# --------------------------------------------------------------------------- wheels


def pip_platform_args(platform: Mapping[str, str]) -> list[str]:
    """``pip download`` options for the server's Python and platform (binary wheels only).
    pip does not widen a ``manylinux_2_N`` platform to older glibc versions: list them."""
    arch, glibc = platform["machine"], platform["glibc"]
    major, minor = (int(x) for x in glibc.split(".")[:2])
    if major != 2:
        raise MloxError(f"the server's C library is glibc {glibc}: only glibc 2.x is known")
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
    tags += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    out = ["--only-binary=:all:", "--python-version", platform.get("python_full") or platform["python"],
           "--implementation", "cp", "--abi", "cp" + platform["python"].replace(".", "")]
    for tag in tags:
        out += ["--platform", tag]
    return out


def build_client_wheel(out: Path) -> Path | None:
    """mlox-client as a wheel, from this checkout's ``client/`` (None outside a checkout)."""
    if not (CLIENT_DIR / "pyproject.toml").is_file():
        return None
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("mlox_client-*.whl"):
        old.unlink()
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(out), str(CLIENT_DIR)], capture_output=True, text=True)
    if done.returncode != 0:
        raise MloxError(f"building mlox-client's wheel failed: {done.stderr.strip()[-500:]}")
    return next(out.glob("mlox_client-*.whl"))


def wheel_cache() -> Path:
    return Path(os.environ.get("MLOX_WHEEL_CACHE") or Path.home() / ".cache" / "mlox-iac" / "wheels")


def wheelhouse(requirements: Path, platform: Mapping[str, str], client_wheel: Path | None,
               run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> tuple[str, Path]:
    """The wheels of ``requirements`` for ``platform``: (their hash, their folder), downloaded once."""
    text = requirements.read_text()
    key = requirements_hash(text, platform, client_wheel)
    folder = wheel_cache() / key
    if (folder / ".complete").is_file():
        return key, folder
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    if client_wheel is not None:
        links = ["--find-links", str(client_wheel.parent)]
        (folder / client_wheel.name).write_bytes(client_wheel.read_bytes())
    def download(*what: str) -> None:
        done = run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(folder),
                    *links, *pip_platform_args(platform), *what], capture_output=True, text=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()[-3:]
            raise MloxError(f"{requirements.name}: the wheels for the server (Python {platform['python']}, "
                            f"{platform['machine']}) could not be downloaded: {' '.join(lines)[:800]}")

    download("-r", str(requirements))
    # pip evaluates environment markers with this machine's Python, not the target's: a
    # dependency only the server's needs (redis wants async-timeout on Python < 3.11.3, and
    # Debian's 3.11 is 3.11.2) would be missing there. Add those until nothing is missing.
    for _ in range(5):
        missing = missing_for_server(folder, platform.get("markers") or {}, text.splitlines())
        if not missing:
            break
        download(*missing)
    (folder / ".complete").touch()
    return key, folder


def missing_for_server(folder: Path, markers: Mapping[str, str], requested: Sequence[str] = ()) -> list[str]:
    """The requirements of the wheels in ``folder`` that apply on the server (its marker
    environment, ``markers``) and that no wheel there provides, as pip requirement strings.
    ``requested``: requirements.txt's lines (for the extras they ask of a distribution)."""
    import zipfile
    from email.parser import HeaderParser

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    metadata: dict[str, list[str]] = {}
    for wheel in folder.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
            if name is None:
                continue
            message = HeaderParser().parsestr(archive.read(name).decode("utf-8", "replace"))
        metadata[canonicalize_name(message["Name"] or wheel.name.split("-")[0])] = message.get_all("Requires-Dist") or []
    parsed: dict[str, list[Requirement]] = {}
    for dist, lines in metadata.items():
        parsed[dist] = []
        for line in lines:
            try:
                parsed[dist].append(Requirement(line))
            except InvalidRequirement:
                continue
    # The extras asked of each distribution: by requirements.txt, then by every requirement
    # that applies (a package's own `pkg[a,b]; extra == "all"` included), until none is added.
    extras: dict[str, set[str]] = {}
    for line in requested:
        line = line.split(" #")[0].strip()
        if line and not line.startswith(("#", "-")):
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            extras.setdefault(canonicalize_name(req.name), set()).update(req.extras)
    reached = set(extras)  # what requirements.txt needs, then what those need (a wheel nothing needs is left out)

    def applies(req: Requirement, dist: str) -> bool:
        return req.marker is None or any(req.marker.evaluate({**markers, "extra": extra})
                                         for extra in ("", *sorted(extras.get(dist, ()))))

    grown = True
    while grown:
        grown = False
        for dist, reqs in parsed.items():
            for req in reqs if dist in reached else ():
                name = canonicalize_name(req.name)
                asked = extras.setdefault(name, set())
                if applies(req, dist) and (name not in reached or not set(req.extras) <= asked):
                    asked.update(req.extras)
                    reached.add(name)
                    grown = True
    missing: dict[str, str] = {}
    for dist, reqs in parsed.items():
        for req in reqs if dist in reached else ():
            name = canonicalize_name(req.name)
            if name in metadata or name in missing or not applies(req, dist):
                continue
            missing[name] = f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}"
    return sorted(missing.values())


def wheels_tarball(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:  # wheels are compressed already
        for wheel in sorted(folder.glob("*.whl")):
            info = tar.gettarinfo(str(wheel), arcname=wheel.name)
            info.uid, info.gid, info.uname, info.gname = 50000, 0, "", ""
            with open(wheel, "rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the server side


# The server's Python: its version, machine and C library (pip's target), and its PEP 508
# marker environment (what the wheels' dependencies are evaluated against).
PLATFORM_PROBE = ("import json, os, platform, sys; "
                  "v = '%d.%d.%d' % sys.version_info[:3]; "
                  "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'python_full': v, "
                  "'machine': platform.machine(), 'glibc': platform.libc_ver()[1] or '0.0', 'markers': {"
                  "'implementation_name': sys.implementation.name, 'implementation_version': v, 'os_name': os.name, "
                  "'platform_machine': platform.machine(), 'platform_release': platform.release(), "
                  "'platform_system': platform.system(), 'platform_version': platform.version(), "
                  "'python_full_version': platform.python_version(), "
                  "'platform_python_implementation': platform.python_implementation(), "
                  "'python_version': '.'.join(platform.python_version_tuple()[:2]), 'sys_platform': sys.platform}}))")


@dataclass
class Server:
    """How a push reaches the stack's Airflow: a shell on the host (as root) and the scheduler's Python."""

    shell: Callable[[str, bytes | None], subprocess.CompletedProcess]  # (command, stdin) on the host, as root
    compose: str  # the stack's `docker compose ...` on the host
    host_code: str  # the volume airflow-code on the host
    host_dags: str  # the volume airflow-dags on the host
    scheduler: str = "airflow-scheduler"
    code: str = release_script.CODE_DIR  # the same volume in the scheduler
    dags: str = release_script.DAGS_DIR  # the folder Airflow scans, in the scheduler

    def run(self, command: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        done = self.shell(command, stdin)
        if check and done.returncode != 0:
            err = done.stderr.decode(errors="replace") if isinstance(done.stderr, bytes) else str(done.stderr)
            raise MloxError(f"on the server, `{command[:120]}` failed ({done.returncode}): {err.strip()[-600:]}")
        return done

    def in_scheduler(self, argv: Sequence[str], stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(f"{self.compose} exec -T {self.scheduler} " + shlex.join(argv), stdin, check=check)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def push(project: Path, server: Server, *, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Ship the project to the stack's Airflow as a release (see the module's docstring).

    Returns the release script's answer (``release``, ``previous``, ``dags``, ``changed``);
    raises :class:`PushRefused` with the parse errors when the DAGs do not parse."""
    answers = answers_of(project)
    name = str(answers.get("project_name") or project.name)
    files = shipped_files(project)
    release = content_hash(project, files)
    code = Path(server.host_code)
    current = server.run(f"cat {shlex.quote(str(code / name / 'current'))} 2>/dev/null || true").stdout
    if _text(current).strip() == release:
        return {"ok": True, "release": release, "previous": release, "changed": False, "dags": []}

    progress("asking the server's Airflow for its Python and platform")
    platform = json.loads(_text(server.in_scheduler(["python", "-c", PLATFORM_PROBE]).stdout).strip().splitlines()[-1])
    client_wheel = build_client_wheel(wheel_cache() / "mlox-client")
    progress(f"wheels of requirements.txt for Python {platform['python']} ({platform['machine']}, glibc {platform['glibc']})")
    requirements, folder = wheelhouse(project / "requirements.txt", platform, client_wheel)

    wheels_on_server = code / "wheels" / requirements
    have = server.run(f"test -f {shlex.quote(str(wheels_on_server / '.complete'))} && echo yes || true").stdout
    if _text(have).strip() != "yes":
        progress(f"copying {sum(1 for _ in folder.glob('*.whl'))} wheels to the server")
        target = shlex.quote(str(wheels_on_server))
        server.run(f"rm -rf {target} && mkdir -p {target} && tar -x -C {target} && touch {target}/.complete",
                   wheels_tarball(folder))
    progress(f"copying release {release}")
    target = code / name / "releases" / release
    quoted = shlex.quote(str(target))
    owned = " ".join(shlex.quote(str(p)) for p in (code, code / "venvs", code / "wheels", code / name, code / name / "releases"))
    server.run(f"rm -rf {quoted} && mkdir -p {quoted} {owned} && tar -xz -C {quoted} && chown {AIRFLOW_USER} {owned} && "
               f"chown -R {AIRFLOW_USER} {quoted} {shlex.quote(str(wheels_on_server))} && "
               # the Airflow user links the project's folder into the DAG folder (group 0 is its group)
               f"chgrp 0 {shlex.quote(server.host_dags)} && chmod g+w {shlex.quote(server.host_dags)}",
               release_tarball(project, files))
    progress("building its environment and parsing its DAGs with Airflow")
    done = server.in_scheduler(["python", "-", *release_script.argv(name, release, requirements, code=server.code,
                                                                            dags=server.dags)],
                               release_script.SCRIPT.encode(), check=False)
    lines = [line for line in _text(done.stdout).splitlines() if line.startswith("{")]
    if not lines:
        raise MloxError(f"the release step on the server failed ({done.returncode}): {_text(done.stderr).strip()[-800:]}")
    answer = json.loads(lines[-1])
    if not answer.get("ok"):
        raise PushRefused(release, answer.get("errors") or {}, answer.get("previous"))
    return answer


def parse_error_line(text: str) -> str:
    """A DAG file's parse error in one line: Airflow reports the whole Python traceback; the
    user needs the line of their file and the exception (``line 17: ImportError: ...``)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not any(line.startswith("Traceback") for line in lines):
        return " ".join(" ".join(lines).split())[-600:]
    frames = [re.search(r'^File "[^"]*/dags/[^"]*", line (\d+)', line) for line in lines]
    numbers = [m.group(1) for m in frames if m]
    last = lines[-1][-600:]
    return f"line {numbers[-1]}: {last}" if numbers else last


class PushRefused(MloxError):
    """The release's DAGs (or its requirements) failed on the server; the running release stays."""

    def __init__(self, release: str, errors: Mapping[str, str], previous: str | None):
        self.release, self.errors, self.previous = release, dict(errors), previous
        first = next(iter(self.errors.items()), ("?", "unknown error"))
        detail = parse_error_line(str(first[1]))
        kept = f"release {previous} keeps running" if previous else "nothing was running"
        more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
        super().__init__(f"push refused, {kept}: {first[0]}: {detail}{more}")
