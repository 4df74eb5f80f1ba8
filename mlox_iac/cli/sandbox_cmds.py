"""``sandbox up``, ``sandbox status``, ``sandbox down``: the whole stack on a local machine.

The phases of ``up`` (host, stack, bootstrap, images, deploy) each do nothing when their
work is there already, and the sandbox's record says which finished; the steps themselves
are in :mod:`mlox_iac.sandbox.manage`.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from mlox_iac.cli.common import JsonOpt, Out, YesOpt, project_dir, require_terminal
from mlox_iac.errors import ConfigError, MloxError

app = typer.Typer(
    name="sandbox", no_args_is_help=True,
    help="The whole stack on this machine: a local Debian machine (systemd-nspawn) and a stack on it.",
)

NameOpt = typer.Option("sandbox", "--name", "-n", help="The sandbox's name, which is its stack's name")


@contextlib.contextmanager
def _step(out: Out, text: str) -> Iterator[None]:
    """A long step without engine events: a spinner on a terminal, a line before and after
    otherwise (the machine's own phases print their lines as they finish)."""
    from mlox_iac.cli.progress import format_elapsed

    started = time.monotonic()
    if out.err.is_terminal:
        with out.err.status(text):
            yield
    else:
        out.err.print(f"{text} ...", markup=False)
        yield
    out.err.print(f"  {text}: done in {format_elapsed(time.monotonic() - started)}", markup=False)


def _engine(out: Out, title: str, operation: str, call):
    from mlox_iac.cli.engine_cmds import _run

    return _run(out, title, operation, call)


def _relative(path: Path, project: Path) -> str:
    return str(path.relative_to(project)) if path.is_relative_to(project) else str(path)


def up(
    name: str = NameOpt,
    preset: Optional[str] = typer.Option(None, "--preset", help="core or full (default: core, or what the sandbox has)"),
    memory: Optional[int] = typer.Option(None, "--memory", help="Memory limit of the machine in MiB "
                                         "(default: what the preset needs, with headroom, in whole GiB)"),
    as_json: bool = JsonOpt,
) -> None:
    """Create (or bring back) a local machine and deploy a stack on it.

    Boots a Debian machine with systemd-nspawn in a network of its own
    (a /24 of 10.79.0.0/16, or MLOX_SANDBOX_NETWORK), writes
    stacks/Pulumi.<name>.yaml pointed at it, and deploys it with the
    Pulumi engine, as for a server. Its memory is limited (stated at the
    start). Where no container registry answers, the images are built
    here from tests/standins and loaded into it. Run it again to bring
    the machine back after a reboot: the engine then changes nothing.
    Needs Linux, root and systemd-nspawn.

    Examples:
      sudo mlox-iac sandbox up
      sudo mlox-iac sandbox up --preset full --name full
    """
    from mlox_iac import automation
    from mlox_iac.cli.engine_cmds import _changes_text
    from mlox_iac.paths import stack_file
    from mlox_iac.sandbox import hosts, images, manage, spec

    out = Out(as_json)
    started = time.monotonic()
    project = project_dir()
    manage.check_name(project, name)
    if preset is not None and preset not in spec.PRESETS:
        raise ConfigError([f"--preset: {preset!r} is not allowed (allowed: {', '.join(spec.PRESETS)})"])
    record = manage.load_record(project, name)
    if record is not None:
        moving = spec.moving_problem(name, manage.moving_to(project, name), command="up")
        if moving:
            raise MloxError(moving)
        moved = spec.moved_problem(record, *manage.stack_target(project, name))
        if moved:
            raise MloxError(f"{moved}: sandbox up would not deploy there; mlox-iac sandbox down --name {name} removes "
                            "the machine and keeps that stack")
        for flag, given, kept in (("--preset", preset, record.preset), ("--memory", memory, record.memory_mb)):
            if given is not None and given != kept:
                raise ConfigError([f"{flag}: sandbox {name} has {kept}; to change it, remove the sandbox first "
                                   f"(mlox-iac sandbox down --name {name}) or edit {_relative(stack_file(project, name), project)}"])
    manage.check_privileges()
    if record is None:
        preset = preset or "core"
        needed = manage.needed_memory_mb(preset)
        if memory is not None and memory < needed:
            raise ConfigError([f"--memory: {memory} MiB is too little for the {preset} preset (allowed: {needed} or more)"])
        reachable, why = manage.registry_reachable()
        record = manage.new_record(project, name, preset, memory or spec.memory_limit_mb(needed),
                                   "pull" if reachable else "standins")
    standins = record.images == "standins"
    names = manage.stack_images(project, name) if stack_file(project, name).is_file() else manage.preset_images(record.preset)
    if standins:
        problem = manage.standins_problem(names)
        if problem:
            raise MloxError(problem)
    manage.create_files(project, record)
    out.progress(f"sandbox {name}: machine {record.machine} at {record.address} (network {record.subnet}), "
                 f"memory limit {record.memory_mb} MiB (cgroup {hosts.cgroup_name(record.machine)}), "
                 f"{record.preset} preset")
    if standins:
        out.progress("no container registry answers from here: building the images from tests/standins and loading "
                     "them into the sandbox")

    if not (hosts.rootfs_path() / ".mlox-e2e-complete").exists():
        with _step(out, "Debian root filesystem (debootstrap, once: a few minutes)"):
            hosts.ensure_rootfs(install_tools=False)
    build = images.BackgroundBuild(names) if standins and not record.finished("deploy") else None
    with _step(out, f"machine {record.machine}"):
        host = manage.ensure_host(project, record)
    record.mark("host")
    manage.save_record(project, record)
    if manage.write_stack(project, record):
        out.progress(f"wrote {_relative(stack_file(project, name), project)} (secrets encrypted with the passphrase in "
                     f"{_relative(spec.passphrase_path(project, name), project)})")
    record.mark("stack")
    manage.save_record(project, record)

    if standins and not record.finished("deploy"):
        targets = spec.bootstrap_targets(name, automation.validate_stack(name, project_dir=project).server)
        _engine(out, f"Bootstrapping {name} (Docker, firewall, sshd)", "update", lambda on_event: automation.up(
            name, project_dir=project, on_event=on_event, target=targets))
        record.mark("bootstrap")
        manage.save_record(project, record)
    if standins:
        names = manage.stack_images(project, name)
        missing = manage.missing_on_host(host, names)
        if missing:
            with _step(out, f"stand-in images ({len(names)}; built once, then cached)"):
                (build.wait() if build is not None else images.build_standins(names=names))
            with _step(out, f"loading {len(missing)} image(s) into the machine"):
                images.load_images(host, names)
        record.mark("images")
        manage.save_record(project, record)

    result = _engine(out, f"Deploying {name}", "update", lambda on_event: automation.up(
        name, project_dir=project, on_event=on_event))
    record.mark("deploy")
    manage.save_record(project, record)
    outputs = automation.outputs(name, project_dir=project, show_secrets=True)
    manage.fetch_ca(project, record, outputs)
    with _step(out, "services answering through the proxy"):
        down = manage.wait_healthy(project, name, outputs)
    if down:
        raise MloxError(f"sandbox {name} is deployed, but {', '.join(down)} did not answer within 5 minutes: "
                        f"mlox-iac logs SERVICE --stack {name} --identity {_relative(spec.key_path(project, name), project)}")

    key = _relative(spec.key_path(project, name), project)
    data = {
        "name": name, "machine": record.machine, "address": record.address, "network": record.subnet,
        "memory_mb": record.memory_mb, "preset": record.preset, "images": record.images,
        "stack_file": _relative(stack_file(project, name), project), "changes": result.changes,
        "urls": outputs.get("urls") or {}, "ui_user": outputs.get("ui_user"), "ssh_key": key,
        "duration_s": round(time.monotonic() - started, 1),
    }

    def human(console, data: dict) -> None:
        from rich.table import Table
        from rich.text import Text

        from mlox_iac.cli.progress import format_elapsed

        console.print(f"[bold]Sandbox {name} is up[/bold] in {format_elapsed(data['duration_s'])}: stack {name} "
                      f"{_changes_text(data['changes'])}")
        console.print(f"Machine {record.machine} (Debian 12, systemd-nspawn) at {record.address}, "
                      f"memory limit {record.memory_mb} MiB", markup=False)
        table = Table(title="Services", title_justify="left")
        table.add_column("service")
        table.add_column("url", overflow="fold")
        for service, url in data["urls"].items():
            table.add_row(Text(service), Text(str(url)))
        console.print(table)
        console.print(f"UI user: {data['ui_user']}; passwords: mlox-iac outputs --stack {name} --show-secrets", markup=False)
        console.print(f'Connect your code: eval "$(mlox-iac env --stack {name} --show-secrets)"', markup=False)
        console.print(f"SSH: mlox-iac ssh --stack {name} --identity {key}", markup=False)
        console.print(f"Check it: mlox-iac sandbox status --name {name}; remove it: mlox-iac sandbox down --name {name}",
                      markup=False)

    out.data(data, human)


def status(name: str = NameOpt, as_json: bool = JsonOpt) -> None:
    """Show whether the sandbox's machine runs and its services answer.

    Exits 1 when the machine is down or a service does not answer.

    Examples:
      sudo mlox-iac sandbox status
      sudo mlox-iac sandbox status --name full --json
    """
    from mlox_iac.sandbox import manage

    out = Out(as_json)
    project = project_dir()
    report = manage.status(project, name)

    def human(console, report: dict) -> None:
        from rich.table import Table
        from rich.text import Text

        machine = report["machine"]
        state = "running" if machine["running"] else "stopped"
        used = f", {machine['memory_used_mb']} MiB in use" if machine.get("memory_used_mb") is not None else ""
        console.print(f"Sandbox {name}: machine {machine['name']} {state} at {machine['address']}, memory limit "
                      f"{machine['memory_mb']} MiB{used}; phases done: {', '.join(report['done']) or 'none'}", markup=False)
        if report["services"]:
            table = Table(show_header=True)
            for column in ("service", "url", "state", "detail"):
                table.add_column(column, overflow="fold")
            for row in report["services"]:
                table.add_row(Text(row["name"]), Text(row["url"]),
                              Text("up", style="green") if row["up"] else Text("DOWN", style="red bold"),
                              Text(row["detail"]))
            console.print(table)
        if report["problem"]:
            console.print(report["problem"], markup=False)

    out.data(report, human)
    if not report["healthy"]:
        raise typer.Exit(1)


def down(name: str = NameOpt, yes: bool = YesOpt, as_json: bool = JsonOpt) -> None:
    """Remove the sandbox: its stack, machine, network and firewall rules.

    Destroys the stack with the engine and removes it (pulumi stack rm),
    deletes its file and the machine with its disk, its network
    interface, iptables rules and cgroup, then checks that nothing is
    left. A stack migrated to a server since is kept: only the machine
    goes. Asks first unless --yes.

    Examples:
      sudo mlox-iac sandbox down
      sudo mlox-iac sandbox down --name full --yes
    """
    from mlox_iac import automation
    from mlox_iac.sandbox import manage, spec

    out = Out(as_json)
    project = project_dir()
    manage.check_name(project, name)
    record = manage.load_record(project, name)
    if record is None:
        out.info(f"no sandbox {name} in this project: nothing to remove")
        return
    moving = spec.moving_problem(name, manage.moving_to(project, name))
    if moving:
        raise MloxError(moving)
    manage.check_privileges()
    if not yes:
        require_terminal("mlox-iac sandbox down")
        if not typer.confirm(f"Remove sandbox {name}: its stack, its data and its machine?", default=False, err=True):
            raise automation.Aborted("aborted: nothing was removed")
    moved = spec.moved_problem(record, *manage.stack_target(project, name))
    if moved:
        out.progress(f"{moved}: that stack stays; only the machine is removed")
    cleanup = manage.cleanup_of(project, record, stack_moved=moved is not None)
    host = manage.host_of(project, record)
    if cleanup.stack and automation.stack_exists(name, project_dir=project, command="mlox-iac sandbox down"):
        force = False
        try:
            if not host.running:
                with _step(out, f"machine {record.machine} (booted for the engine's destroy)"):
                    host = manage.ensure_host(project, record)
            _engine(out, f"Destroying {name}", "destroy", lambda on_event: automation.destroy(
                name, project_dir=project, on_event=on_event))
        except MloxError as error:
            force = True
            out.progress(f"the engine could not destroy the stack on the machine ({error}); its state is dropped, "
                         "the machine goes anyway")
        automation.remove(name, project_dir=project, force=force, command="mlox-iac sandbox down")
    with _step(out, f"removing machine {record.machine}, its network, firewall rules and cgroup"):
        host.destroy()
    manage.remove_paths(project, cleanup)
    forwarding_off = manage.restore_ip_forward(record)
    left = manage.leftovers(project, cleanup)
    if left:
        raise MloxError(f"sandbox {name}: removed, but these are left: {'; '.join(left)}")
    kept = [_relative(dest, project) for _, dest in cleanup.keep if dest.is_file()]
    data: dict[str, Any] = {"name": name, "removed": cleanup.describe(), "ip_forward_off": forwarding_off,
                            "stack_kept": moved is not None, "passphrase_kept": kept[0] if kept else None}

    def human(console, data: dict) -> None:
        console.print(f"Removed sandbox {name}: {len(data['removed'])} things (machine, network, firewall rules, cgroup, "
                      f"{'files' if moved else 'stack and files'}); nothing is left", markup=False)
        if data["passphrase_kept"]:
            console.print(f"Stack {name} stays on its server; its secrets are encrypted with the passphrase now in "
                          f"{data['passphrase_kept']} (mode 0600), which mlox-iac uses for it: keep that file",
                          markup=False)

    out.data(data, human)


app.command()(up)
app.command()(status)
app.command()(down)
