"""The sandbox's steps that touch this machine: its files, its machine, its images, the checks
and the removal. ``mlox_iac.cli.sandbox_cmds`` runs them in order with progress; the pure
parts (names, sizes, the stack file, the cleanup list) are in :mod:`mlox_iac.sandbox.spec`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlox_iac.errors import ConfigError, MloxError
from mlox_iac.sandbox import spec
from mlox_iac.sandbox.spec import Record

REGISTRY = ("registry-1.docker.io", 443)  # Docker Hub, where most of the stack's images come from
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


# ----- checks --------------------------------------------------------------------------

def check_privileges() -> None:
    """Raise :class:`MloxError` with the one line saying what this machine lacks."""
    have = [exe for exe in ("systemd-nspawn", "debootstrap", "ip", "iptables", "nsenter", "ssh", "ssh-keygen")
            if shutil.which(exe) or shutil.which(exe, path="/usr/sbin:/sbin")]
    problem = spec.privilege_problem(sys.platform, os.geteuid() if hasattr(os, "geteuid") else -1, have)
    if problem:
        raise MloxError(problem)


def check_name(project: Path, name: str) -> None:
    """Refuse (exit 2, one line) a name that is not valid or belongs to a non-sandbox stack."""
    from mlox_iac.paths import stack_file

    problem = spec.name_problem(name) or spec.collision_problem(
        project, name, record_exists=spec.record_path(project, name).is_file(),
        stack_exists=stack_file(project, name).is_file(), state_exists=spec.state_path(project, name).is_file())
    if problem:
        raise ConfigError([problem])


def load_record(project: Path, name: str) -> Record | None:
    path = spec.record_path(project, name)
    if not path.is_file():
        return None
    try:
        return Record.from_json(path.read_text())
    except (OSError, ValueError, TypeError) as exc:
        raise MloxError(f"{path}: cannot be read ({exc}); remove the sandbox's leftovers by hand (docs/sandbox.md)") from None


def save_record(project: Path, record: Record) -> None:
    path = spec.record_path(project, record.name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(record.to_json())
    tmp.replace(path)


def _stack_config(project: Path, name: str) -> dict[str, Any] | None:
    """The ``config`` of the stack file as written (None without a stack file)."""
    from mlox_iac.config import stack_yaml
    from mlox_iac.paths import stack_file

    path = stack_file(project, name)
    if not path.is_file():
        return None
    document = stack_yaml.load(path, str(path)) or {}
    config = document.get("config") or {} if isinstance(document, dict) else {}
    return config if isinstance(config, dict) else {}


def own_key(project: Path, name: str) -> Path | None:
    """The sandbox's own SSH key, for a command that logs in to its machine without --identity
    (None for other stacks). The stack's ``mlox:ssh.public_keys`` hold its public half, so a
    server the stack moves to admits it too."""
    key = spec.key_path(project, name)
    return key if spec.record_path(project, name).is_file() and key.is_file() else None


def stack_target(project: Path, name: str) -> tuple[str | None, str | None]:
    """(provider, on-prem host) the stack file names, to see whether the stack moved; (None,
    None) without a stack file."""
    config = _stack_config(project, name)
    if config is None:
        return None, None
    onprem = config.get("mlox:onprem") or {}
    return config.get("mlox:provider"), onprem.get("host") if isinstance(onprem, dict) else None


def moving_to(project: Path, name: str) -> str | None:
    """The provider the stack is being migrated to (a migration record, or ``mlox:migration``
    in its file), None when no move is under way."""
    from mlox_iac.migrations import stack as migrate

    record = migrate.load_record(project, name)
    if record is not None:
        return record.to
    migration = (_stack_config(project, name) or {}).get("mlox:migration")
    return str(migration.get("to") or "new") if isinstance(migration, dict) else None


def registry_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether a container registry answers from here: a name lookup and a TCP connection to
    Docker Hub, each within ``timeout``. ``MLOX_SANDBOX_IMAGES=pull|standins`` decides instead."""
    forced = os.environ.get("MLOX_SANDBOX_IMAGES")
    if forced in spec.IMAGE_MODES:
        return forced == "pull", f"MLOX_SANDBOX_IMAGES={forced}"
    host, port = REGISTRY
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:  # getaddrinfo has no timeout of its own
        infos = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        return False, f"{host}: no answer to the name lookup within {timeout:.0f}s"
    except OSError as exc:
        return False, f"{host}: {exc.strerror or exc}"
    finally:
        pool.shutdown(wait=False)
    try:
        with socket.create_connection(infos[0][4][:2], timeout=timeout):
            return True, f"{host}:{port} answers"
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"


# ----- sizes and images ----------------------------------------------------------------

def _preset_config(preset: str):
    """A sandbox stack's settings for ``preset``, validated (placeholder address and key)."""
    from mlox_iac.config.model import StackConfig

    record = Record(name="size", machine="size", network=spec.DEFAULT_NETWORK, index=1, memory_mb=1 << 20,
                    preset=preset, images="pull")
    settings = spec.stack_settings(record, ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ7eBjBSRNkuS+BTDG+3vvqteolSI3QO1RHW674qdPL size"])
    settings["onprem"]["private_key"] = "placeholder"
    return StackConfig.model_validate(settings)


def needed_memory_mb(preset: str) -> int:
    """What the preset's services and the system need (the stack's memory budget)."""
    return _preset_config(preset).memory_needed_mb()


def _compose_images(config) -> list[str]:
    """What the host must have: each service's image, or for one built on the host (``build``),
    the images its Dockerfile starts FROM; rclone, which copies the buckets when the stack is
    migrated or restored (a sandbox moved to a server stages its objects with it); and restic
    too when the stack backs up."""
    from mlox_iac.components.services.base import Context
    from mlox_iac.render.bundle import render_bundle, render_compose

    ctx = Context(config)
    bundle = render_bundle(ctx)
    images: set[str] = set()
    for service in render_compose(ctx)["services"].values():
        if service.get("build"):
            dockerfile = bundle[f"{service['build']['context'].removeprefix('./')}/Dockerfile"]
            images.update(re.findall(r"^FROM\s+(\S+)", dockerfile, re.M))
        elif service.get("image"):
            images.add(str(service["image"]))
    from mlox_iac.render.backup import IMAGES as BACKUP_IMAGES, RCLONE_IMAGE

    # The data tools run as containers of their own, not in compose.
    images.update(BACKUP_IMAGES if config.backup is not None else (RCLONE_IMAGE,))
    return sorted(images)


def preset_images(preset: str) -> list[str]:
    """The images a new sandbox of ``preset`` runs."""
    return _compose_images(_preset_config(preset))


def stack_images(project: Path, name: str) -> list[str]:
    """The images the stack's compose project names, from its (validated) file."""
    from mlox_iac import automation

    return _compose_images(automation.validate_stack(name, project_dir=project))


# ----- creating ------------------------------------------------------------------------

def _networks_here() -> list[str]:
    """The IPv4 networks this machine routes or has an address in."""
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in routes.splitlines() if line.split() and line.split()[0] != "default"]
    addresses = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    return found + [line.split()[3] for line in addresses.splitlines() if len(line.split()) > 3]


def _taken_indexes(project: Path, network: str) -> list[int]:
    taken = []
    for path in (Path(project) / spec.SANDBOX_DIR).glob(f"*/{spec.RECORD}"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            other = Record.from_json(path.read_text())
            if other.network == network:
                taken.append(other.index)
    return taken


def new_record(project: Path, name: str, preset: str, memory_mb: int, images: str) -> Record:
    """A record for a new sandbox: its machine name and a free /24 of ``MLOX_SANDBOX_NETWORK``."""
    try:
        network = spec.parse_network(os.environ.get("MLOX_SANDBOX_NETWORK") or spec.DEFAULT_NETWORK)
        index = spec.pick_index(network, _networks_here(), _taken_indexes(project, network))
    except ValueError as exc:
        raise ConfigError([f"MLOX_SANDBOX_NETWORK: {exc}"]) from None
    return Record(name=name, machine=spec.machine_name(project, name), network=network, index=index,
                  memory_mb=memory_mb, preset=preset, images=images,
                  ip_forward_before=IP_FORWARD.read_text().strip() if IP_FORWARD.exists() else None)


def create_files(project: Path, record: Record) -> None:
    """The sandbox's directory (0700), its record, SSH key and passphrase (0600)."""
    folder = spec.sandbox_dir(project, record.name)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    save_record(project, record)
    key = spec.key_path(project, record.name)
    if not key.is_file():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mlox-sandbox-{record.name}",
                        "-f", str(key)], check=True, capture_output=True)
    key.chmod(0o600)
    phrase = spec.passphrase_path(project, record.name)
    if not phrase.is_file():
        fd = os.open(phrase, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24) + "\n")


def host_of(project: Path, record: Record):
    """The record's machine as a :class:`~mlox_iac.sandbox.hosts.TargetHost` (adopted if it runs)."""
    from mlox_iac.sandbox.hosts import TargetHost

    host = TargetHost(record.machine, record.index, spec.key_path(project, record.name), subnet_prefix=record.network,
                      machine_dir=spec.machine_dir(project, record.name), memory_mb=record.memory_mb, routed=False)
    host._adopt()
    return host


def subnet_in_use(record: Record) -> str | None:
    """A network interface other than the sandbox's own that already routes its /24."""
    import ipaddress

    mine = ipaddress.ip_network(record.subnet)
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "inet" and parts[1].split("@")[0] != record.veth:
            if ipaddress.ip_interface(parts[3]).network.overlaps(mine):
                return parts[1]
    return None


def ensure_host(project: Path, record: Record):
    """The machine, running: re-adopted when it runs, booted (its rootfs copied on first use)
    when it does not (after a reboot of this machine, say). Returns the TargetHost."""
    host = host_of(project, record)
    if host.running:
        if host._ssh_ok():
            return host
        host.stop()  # running but unreachable: boot it again
    taken = subnet_in_use(record)
    if taken:
        raise MloxError(f"sandbox {record.name}: its network {record.subnet} is in use by {taken} on this machine; "
                        f"remove the sandbox (mlox-iac sandbox down --name {record.name}) and set MLOX_SANDBOX_NETWORK "
                        "to a free private /16")
    if not (host.rootfs / "etc/hostname").exists():
        from mlox_iac.sandbox.hosts import ensure_rootfs

        host.create(ensure_rootfs(install_tools=False))  # a copy of the cached Debian root filesystem
    host.start(ssh_timeout=60)
    return host


def write_stack(project: Path, record: Record) -> bool:
    """Write the stack file and store the machine's key as its secret; False when it exists."""
    from mlox_iac import automation
    from mlox_iac.cli.init_cmd import DEFAULT_PUBLIC_KEYS
    from mlox_iac.config.loader import validate
    from mlox_iac.paths import stack_file

    path = stack_file(project, record.name)
    if path.is_file():
        return False
    key = spec.key_path(project, record.name)
    keys = [Path(f"{key}.pub").read_text().strip()]
    # The user's own key too, so `mlox-iac ssh --stack NAME` works as for any server.
    own = next((p for p in (Path.home() / ".ssh" / n for n in DEFAULT_PUBLIC_KEYS) if p.is_file()), None)
    if own is not None:
        keys.append(own.read_text().strip())
    settings = spec.stack_settings(record, keys)
    validate({**settings, "onprem": {**settings["onprem"], "private_key": "[secret]"}}, {"onprem.private_key"},
             str(path.relative_to(project)), record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(spec.render_stack_file(record, settings))
    tmp.replace(path)
    automation.set_secrets(record.name, {"mlox:onprem.private_key": key.read_text()},
                           path_keys=("mlox:onprem.private_key",), project_dir=project)
    return True


def missing_on_host(host, names: Sequence[str]) -> list[str]:
    """The images the machine's Docker lacks (all of them when Docker is not there yet)."""
    tags = " ".join(f"'{n}'" for n in names)
    cp = host.ssh(f"for i in {tags}; do docker image inspect --format . \"$i\" >/dev/null 2>&1 || echo \"$i\"; done",
                  check=False)
    return list(names) if cp.returncode != 0 else [n for n in cp.stdout.split() if n]


def standins_problem(names: Sequence[str]) -> str | None:
    """One line when the stand-ins cannot be built here (no checkout, no Docker, an image
    without a stand-in)."""
    from mlox_iac.sandbox import images

    if not images.STANDINS_DIR.is_dir():
        return (f"no container registry is reachable and there are no stand-in images to build ({images.STANDINS_DIR} "
                "is missing): run mlox-iac from a checkout of mlox-iac, or set MLOX_STANDINS_DIR")
    if not (shutil.which("dockerd") and shutil.which("docker")):
        return "building the stand-in images needs Docker on this machine (apt-get install docker.io)"
    unknown = [n for n in names if n not in images.STANDINS]
    if unknown:
        return f"no stand-in image for {', '.join(unknown)} (known: {', '.join(images.STANDINS)})"
    return None


def fetch_ca(project: Path, record: Record, outputs: Mapping[str, Any]) -> Path | None:
    """The machine's internal CA certificate where ``mlox-iac env/status`` look for it, so
    they need no SSH key for the sandbox."""
    from mlox_iac import connect

    if outputs.get("tls") != "internal":
        return None
    from mlox_iac.errors import MloxError

    dest = Path(project) / ".mlox" / record.name / "caddy-root.crt"
    for attempt in range(3):
        # A machine that has just booted, on a busy computer, can be slow to answer ssh.
        try:
            path = connect.fetch_ca(outputs, dest, identity=spec.key_path(project, record.name), refresh=True,
                                    timeout=60)
            break
        except MloxError as error:
            if "timed out" not in str(error) or attempt == 2:
                raise
    connect.write_ca_bundle(path)
    return path


def wait_healthy(project: Path, name: str, outputs: Mapping[str, Any], timeout: float = 300) -> list[str]:
    """Probe the services through the proxy until all answer (a machine that was started
    again, say, runs its containers' restart and health checks first); the names of those
    still down after ``timeout``."""
    import time

    from mlox_iac import connect

    ca = Path(project) / ".mlox" / name / "caddy-root.crt"
    deadline = time.monotonic() + timeout
    while True:
        down = [r.name for r in connect.probe(outputs, ca if ca.is_file() else None) if not r.up]
        if not down or time.monotonic() > deadline:
            return down
        time.sleep(3)


# ----- status --------------------------------------------------------------------------

def status(project: Path, name: str) -> dict[str, Any]:
    """The machine (running, reachable, memory) and each service's probe through the proxy."""
    from mlox_iac import automation, connect
    from mlox_iac.sandbox import hosts

    record = load_record(project, name)
    if record is None:
        raise MloxError(f"no sandbox {name} in this project (create it: sudo mlox-iac sandbox up --name {name})")
    host = host_of(project, record)
    reachable = host.running and host._ssh_ok()
    used, _ = hosts.memory_cgroup_usage(record.machine)
    machine = {"name": record.machine, "address": record.address, "running": host.running, "reachable": reachable,
               "memory_mb": record.memory_mb, "memory_used_mb": None if used is None else used // (1024 * 1024)}
    services: list[dict[str, Any]] = []
    problem = None
    if not reachable:
        problem = f"the machine is {'not answering' if host.running else 'stopped'}: sudo mlox-iac sandbox up --name {name} brings it back"
    elif not record.finished("deploy"):
        problem = f"the stack is not deployed yet: sudo mlox-iac sandbox up --name {name} goes on where it stopped"
    else:
        outputs = automation.outputs(name, project_dir=project, show_secrets=True)
        ca = Path(project) / ".mlox" / name / "caddy-root.crt"
        if not ca.is_file():
            ca = fetch_ca(project, record, outputs) or ca
        services = [r.to_dict() for r in connect.probe(outputs, ca if ca.is_file() else None)]
        down = [r["name"] for r in services if not r["up"]]
        if down:
            problem = f"down: {', '.join(down)} (mlox-iac logs SERVICE --stack {name} --identity {spec.key_path(project, name)})"
    return {"name": name, "machine": machine, "done": record.done, "services": services,
            "healthy": problem is None, "problem": problem}


# ----- removing ------------------------------------------------------------------------

def cleanup_of(project: Path, record: Record, *, stack_moved: bool) -> spec.Cleanup:
    """:func:`spec.cleanup_list` with this project's settings: where bundles are rendered, and
    whether the state lives in the project (the default backend)."""
    from mlox_iac import automation

    build_root = os.environ.get("MLOX_BUILD_DIR")
    project_name = str(automation._project_document(project).get("name") or "mlox")
    return spec.cleanup_list(project, record, stack_moved=stack_moved, build_root=Path(build_root) if build_root else None,
                             own_state=automation.backend_url(project) is not None, project_name=project_name)


def remove_paths(project: Path, cleanup: spec.Cleanup) -> None:
    for source, dest in cleanup.keep:
        if source.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, dest)
            dest.chmod(0o600)
    for path in cleanup.paths:
        if path.is_dir() and not path.is_symlink():
            subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)
        else:
            path.unlink(missing_ok=True)
    if cleanup.stack:  # the stack's own folder under .mlox, when nothing else is left in it
        with contextlib.suppress(OSError):
            (Path(project) / ".mlox" / cleanup.stack).rmdir()
    with contextlib.suppress(OSError):
        (Path(project) / spec.SANDBOX_DIR).rmdir()


def restore_ip_forward(record: Record) -> bool:
    """Turn IP forwarding off again when it was off before the sandbox and no other machine
    (any ``ve-*`` interface) needs it now. True when it was turned off."""
    if record.ip_forward_before != "0":
        return False
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    if any(line.split(":")[1].strip().startswith("ve-") for line in links.splitlines() if line.count(":") >= 2):
        return False
    IP_FORWARD.write_text("0\n")
    return True


def leftovers(project: Path, cleanup: spec.Cleanup) -> list[str]:
    """What of ``cleanup`` is still there (empty once ``sandbox down`` has done its job)."""
    from mlox_iac.sandbox import hosts

    left = []
    if hosts._nspawn_pids_for(cleanup.machine, cleanup.rootfs):
        left.append(f"machine {cleanup.machine} still runs")
    if hosts._link_exists(cleanup.veth):
        left.append(f"network interface {cleanup.veth}")
    for table, chain, rule in cleanup.firewall_rules:
        if subprocess.run(["iptables", "-w", "-t", table, "-C", chain, *rule], capture_output=True).returncode == 0:
            left.append(f"iptables -t {table} {chain} {' '.join(rule)}")
    left += [f"cgroup {d}" for d in hosts.cgroup_dirs(cleanup.machine)]
    return left + [str(p) for p in cleanup.paths if p.exists() or p.is_symlink()]
