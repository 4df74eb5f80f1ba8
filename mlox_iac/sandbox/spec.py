"""What a sandbox is, without touching anything: its record, names, memory, stack file, the
refusals, and the list of what ``sandbox down`` removes.

A sandbox is an ordinary stack (``stacks/Pulumi.<name>.yaml``) on a local machine. What
makes it a sandbox is its record, ``.mlox/sandbox/<name>/sandbox.json``, written before
anything is created, beside the machine's SSH key and the stack's passphrase (both 0600)
and the machine's root filesystem. The stack file carries a comment saying so, for people.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mlox_iac.paths import stack_file

SANDBOX_DIR = Path(".mlox") / "sandbox"
RECORD = "sandbox.json"
DEFAULT_NAME = "sandbox"
PRESETS = ("core", "full")
MACHINE_PREFIX = "mlxsb"  # + 7 hex digits: ve-<machine> fits a network interface name (15)
# The /16 the sandboxes' /24 networks come from (MLOX_SANDBOX_NETWORK); one /24 each.
DEFAULT_NETWORK = "10.79"
HEADROOM_MB = 512  # above what the services and the system need: page cache, the bootstrap's apt
# Phases of ``sandbox up``, in order; the record lists those that finished.
PHASES = ("host", "stack", "bootstrap", "images", "deploy")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
# Ways the images reach the machine: the machine pulls them, as a server does, or stand-ins
# built here from tests/standins are loaded into it.
IMAGE_MODES = ("pull", "standins")


@dataclass
class Record:
    """A sandbox's record: where its machine is and how far ``sandbox up`` got."""

    name: str
    machine: str
    network: str  # the /16 prefix, e.g. "10.79"
    index: int  # the third octet of its /24
    memory_mb: int
    preset: str
    images: str  # one of IMAGE_MODES
    done: list[str] = field(default_factory=list)
    ip_forward_before: str | None = None  # what net.ipv4.ip_forward was before the first sandbox here

    @property
    def subnet(self) -> str:
        return f"{self.network}.{self.index}.0/24"

    @property
    def address(self) -> str:
        return f"{self.network}.{self.index}.2"

    @property
    def veth(self) -> str:
        return f"ve-{self.machine}"

    def finished(self, phase: str) -> bool:
        return phase in self.done

    def mark(self, phase: str) -> None:
        if phase not in self.done:
            self.done = [p for p in PHASES if p in self.done or p == phase]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Record":
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def sandbox_dir(project: Path, name: str) -> Path:
    """``<project>/.mlox/sandbox/<name>``: the record, key, passphrase and machine."""
    return Path(project) / SANDBOX_DIR / name


def record_path(project: Path, name: str) -> Path:
    return sandbox_dir(project, name) / RECORD


def key_path(project: Path, name: str) -> Path:
    return sandbox_dir(project, name) / "id_ed25519"


def passphrase_path(project: Path, name: str) -> Path:
    return sandbox_dir(project, name) / "passphrase"


def kept_passphrase_path(project: Path, name: str) -> Path:
    """Where ``sandbox down`` keeps the passphrase of a stack that was migrated off its sandbox:
    its secrets stay encrypted with it (``.mlox/<name>/.passphrase``; no sandbox is named
    with a leading dot, so it cannot be another sandbox's folder)."""
    return Path(project) / ".mlox" / name / ".passphrase"


def machine_dir(project: Path, name: str) -> Path:
    return sandbox_dir(project, name) / "machine"


def machine_name(project: Path, name: str) -> str:
    """The machine's name: the same sandbox name in two projects gives two machines."""
    digest = hashlib.sha256(f"{Path(project).resolve()}\0{name}".encode()).hexdigest()
    return f"{MACHINE_PREFIX}{digest[:7]}"


def state_path(project: Path, name: str, project_name: str = "mlox") -> Path:
    """Where the default file backend (``.mlox/state``) keeps the stack's state."""
    return Path(project) / ".mlox" / "state" / ".pulumi" / "stacks" / project_name / f"{name}.json"


def state_leftovers(project: Path, name: str, project_name: str = "mlox") -> list[Path]:
    """What the file backend keeps of a stack after ``pulumi stack rm``: the last state as
    ``.bak``, every earlier one under ``backups``, the update history and the lock folder."""
    pulumi = Path(project) / ".mlox" / "state" / ".pulumi"
    state = state_path(project, name, project_name)
    return [state, *(state.with_name(state.name + suffix) for suffix in (".attrs", ".bak", ".bak.attrs")),
            *(pulumi / kind / project_name / name for kind in ("backups", "history")),
            pulumi / "locks" / "organization" / project_name / name]


# ----- checks --------------------------------------------------------------------------

def name_problem(name: str) -> str | None:
    """One line when ``name`` cannot be a sandbox's (stack) name."""
    if not _NAME.match(name):
        return (f"--name: {name!r} is not allowed (allowed: 1-40 letters, digits, '_', '.' and '-', "
                "starting with a letter or digit)")
    return None


def collision_problem(project: Path, name: str, *, record_exists: bool, stack_exists: bool,
                      state_exists: bool) -> str | None:
    """The refusal when ``name`` belongs to a stack that is not a sandbox: a stack file, or a
    deployed state, without the sandbox's record."""
    if record_exists or not (stack_exists or state_exists):
        return None
    what = f"stacks/Pulumi.{name}.yaml" if stack_exists else f"the deployed state of stack {name}"
    return (f"--name: {name} is a stack that is not a sandbox ({what} exists, "
            f"{SANDBOX_DIR / name / RECORD} does not); choose another name")


def moved_problem(record: Record, provider: str | None, host: str | None) -> str | None:
    """One line when the stack no longer runs on its sandbox (``mlox-iac migrate`` moved it);
    ``provider`` None: there is no stack file (yet)."""
    if provider is None or (provider == "onprem" and host == record.address):
        return None
    where = f"{provider} server" if provider != "onprem" else f"server {host}"
    return (f"stack {record.name} now runs on a {where}, not on its sandbox machine {record.address} "
            "(it was migrated)")


def moving_problem(name: str, moving_to: str | None, command: str = "down") -> str | None:
    """One line when the sandbox's stack is in the middle of a migration: until ``--finish``
    its file still names the sandbox, and removing the sandbox would destroy the stack with
    its new server; deploying the sandbox again (``command="up"``) would redeploy the stack
    under the move, which owns it until --finish or --abort."""
    if moving_to is None:
        return None
    if command == "up":
        return (f"sandbox {name}: its stack is being migrated (to {moving_to}); sandbox up would deploy it under "
                f"the move: finish the move (mlox-iac migrate --stack {name} --finish) or go back to the sandbox "
                f"(mlox-iac migrate --stack {name} --abort)")
    return (f"sandbox {name}: its stack is being migrated (to {moving_to}); finish the move first "
            f"(mlox-iac migrate --stack {name} --finish, then sandbox down removes only the machine) "
            f"or go back to the sandbox (mlox-iac migrate --stack {name} --abort)")


def move_problem(record: Record, admin_cidrs: Sequence[str], target_host: str | None, stack_path: str) -> str | None:
    """One line when moving the sandbox's stack to a server would lock this machine out: a
    sandbox admits SSH only from its own network (``mlox:ssh.admin_cidrs``), which reaches no
    server elsewhere; the new server's firewall would then refuse the move's own connections.
    ``target_host``: the new server's address when known (an on-prem target)."""
    import ipaddress

    own = ipaddress.ip_network(record.subnet)

    def in_sandbox(cidr: str) -> bool:
        network = ipaddress.ip_network(cidr, strict=False)
        return network.version == own.version and network.subnet_of(own)  # type: ignore[arg-type]

    if not all(in_sandbox(c) for c in admin_cidrs):
        return None
    if target_host is not None:
        try:
            if ipaddress.ip_address(target_host) in own:
                return None  # another machine on this sandbox's network: reached as the sandbox is
        except ValueError:
            pass
    return (f"{stack_path}: mlox:ssh.admin_cidrs: sandbox {record.name} admits SSH only from its own network "
            f"({record.subnet}), so a server it moves to would refuse this machine; add the address you reach servers "
            "from (for example your public address as /32), then run migrate again")


def privilege_problem(platform: str, euid: int, have: Sequence[str]) -> str | None:
    """The one line saying what a sandbox needs and this machine lacks (None: nothing).

    ``have`` names the executables found on PATH. Without what it needs, the engine preview
    of a stack needs none of it.
    """
    instead = "without it, preview a stack with the engine instead (scripts/quickstart does)"
    if platform != "linux":
        return (f"sandbox: a local machine needs Linux with systemd-nspawn ({platform} has none; docs/sandbox.md "
                f"shows an untested Docker container instead); {instead}")
    if euid != 0:
        return ("sandbox: needs root to boot a systemd-nspawn machine and give it a network and firewall rules "
                f"(run: sudo mlox-iac sandbox up); {instead}")
    needed = {"systemd-nspawn": "systemd-container", "debootstrap": "debootstrap", "ip": "iproute2",
              "iptables": "iptables", "nsenter": "util-linux", "ssh": "openssh-client", "ssh-keygen": "openssh-client"}
    packages = sorted({pkg for exe, pkg in needed.items() if exe not in have})
    if packages:
        return (f"sandbox: needs {', '.join(sorted(e for e in needed if e not in have))} "
                f"(apt-get install {' '.join(packages)}); {instead}")
    return None


# ----- sizes and addresses -------------------------------------------------------------

def memory_limit_mb(needed_mb: int) -> int:
    """The machine's memory limit for services that need ``needed_mb``: with headroom, whole GiB."""
    return -(-(needed_mb + HEADROOM_MB) // 1024) * 1024


def parse_network(value: str) -> str:
    """The /16 prefix (``10.79``) from ``10.79`` or ``10.79.0.0/16``; ValueError otherwise."""
    text = value.strip()
    if "/" not in text:
        text = f"{text.rstrip('.')}.0.0/16" if text.count(".") == 1 else text
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ValueError(f"{value!r} is not a /16 network (allowed: e.g. 10.79 or 10.79.0.0/16)") from None
    if net.version != 4 or net.prefixlen != 16 or not net.is_private:
        raise ValueError(f"{value!r} is not a private IPv4 /16 network (allowed: e.g. 10.79 or 10.79.0.0/16)")
    return ".".join(str(net.network_address).split(".")[:2])


def pick_index(network: str, routes: Sequence[str], taken: Sequence[int]) -> int:
    """The first /24 of ``network`` that no route of this machine overlaps and no other
    sandbox of the project holds."""
    nets = []
    for route in routes:
        try:
            nets.append(ipaddress.ip_network(route, strict=False))
        except ValueError:
            continue
    for index in range(1, 250):
        if index in taken:
            continue
        candidate = ipaddress.ip_network(f"{network}.{index}.0/24")
        if not any(n.version == 4 and n.prefixlen > 0 and candidate.overlaps(n) for n in nets):
            return index
    raise ValueError(f"no free /24 left in {network}.0.0/16 (set MLOX_SANDBOX_NETWORK to another private /16)")


# ----- the stack -----------------------------------------------------------------------

def stack_settings(record: Record, public_keys: Sequence[str]) -> dict[str, Any]:
    """The stack's ``mlox:`` settings (the private key is set as a secret separately)."""
    return {
        "provider": "onprem",
        "onprem": {"host": record.address, "user": "root", "port": 22, "memory_mb": record.memory_mb},
        "ssh": {"public_keys": list(public_keys), "admin_cidrs": [record.subnet]},
        "docker": {"source": "debian"},  # Compose v2 is pre-placed on the machine (see hosts.py)
        "services": {"preset": record.preset},
    }


def render_stack_file(record: Record, settings: dict[str, Any]) -> str:
    """The stack file: a header saying it is a sandbox, then the plain settings."""
    import yaml

    header = (
        f"# Sandbox {record.name}: a local machine made by `mlox-iac sandbox up --name {record.name}` "
        f"({SANDBOX_DIR / record.name / RECORD}).\n"
        f"# An ordinary stack for every other command; `mlox-iac sandbox down --name {record.name}` removes it "
        "with its machine.\n"
    )
    config = {f"mlox:{key}": value for key, value in settings.items()}
    return header + yaml.safe_dump({"config": config}, sort_keys=False, default_flow_style=False)


def bootstrap_targets(stack: str, server: str = "main", project_name: str = "mlox") -> list[str]:
    """The URNs of a targeted update that bootstraps the server alone (Docker is then there
    to load images into before compose runs)."""
    prefix = f"urn:pulumi:{stack}::{project_name}::"
    return [f"{prefix}mlox:stack:Stack::mlox", f"{prefix}mlox:stack:Stack$mlox:server:Server::{server}",
            f"{prefix}mlox:stack:Stack$mlox:server:Server$command:remote:Command::{server}-bootstrap",
            f"{prefix}mlox:stack:Stack$mlox:server:Server$command:remote:Command::{server}-host-keys"]


# ----- what down removes ---------------------------------------------------------------

@dataclass
class Cleanup:
    """Everything of a sandbox on this machine, as ``sandbox down`` removes it (and checks)."""

    machine: str
    veth: str
    firewall_rules: list[tuple[str, str, list[str]]]
    cgroup: str
    rootfs: Path
    paths: list[Path]  # files and directories, removed if present
    stack: str | None  # the stack to destroy and remove, None when it moved off the sandbox
    keep: list[tuple[Path, Path]] = field(default_factory=list)  # (from, to) moved out before removal

    def describe(self) -> list[str]:
        lines = [f"machine {self.machine} (systemd-nspawn)", f"network interface {self.veth}",
                 *(f"iptables -t {t} {c} {' '.join(r)}" for t, c, r in self.firewall_rules),
                 f"cgroup {self.cgroup}"]
        if self.stack:
            lines.append(f"stack {self.stack} (engine destroy, then pulumi stack rm)")
        return lines + [str(p) for p in self.paths]


def cleanup_list(project: Path, record: Record, *, stack_moved: bool = False, build_root: Path | None = None,
                 own_state: bool = True, project_name: str = "mlox") -> Cleanup:
    """What ``sandbox down`` removes for ``record``: the machine and its network, firewall
    rules and cgroup; the stack, its file and what the commands keep for it under ``.mlox``
    (unless it moved to another server: then only the machine and the record go).
    ``build_root`` is where the program renders bundles (``MLOX_BUILD_DIR``, default
    ``.mlox/build``); ``own_state``: the state is in the project's ``.mlox/state`` (the default
    backend), whose leftovers of the stack go too."""
    from mlox_iac.sandbox.hosts import TargetHost, cgroup_name

    project = Path(project)
    host = TargetHost(record.machine, record.index, key_path(project, record.name), subnet_prefix=record.network,
                      machine_dir=machine_dir(project, record.name), routed=False)
    paths = [sandbox_dir(project, record.name)]
    keep: list[tuple[Path, Path]] = []
    if stack_moved:
        # The stack lives on: its secrets stay encrypted with the sandbox's passphrase. The
        # machine's recorded host key goes with the machine.
        keep.append((passphrase_path(project, record.name), kept_passphrase_path(project, record.name)))
        paths.append(project / ".mlox" / "known_hosts" / f"{record.address}_22")
    else:
        per_stack = project / ".mlox" / record.name  # (for the name "sandbox", the sandboxes' own directory)
        paths += [stack_file(project, record.name),
                  *(per_stack / f for f in ("caddy-root.crt", "caddy-root.crt.bundle.pem", "drift.json")),
                  (build_root or project / ".mlox" / "build") / record.name,
                  project / ".mlox" / "known_hosts" / f"{record.address}_22",
                  project / ".mlox" / "migrate" / f"{record.name}.json"]
        if own_state:
            paths += state_leftovers(project, record.name, project_name)
    return Cleanup(record.machine, host.veth, host.firewall_rules(), cgroup_name(record.machine), host.rootfs, paths,
                   None if stack_moved else record.name, keep)
