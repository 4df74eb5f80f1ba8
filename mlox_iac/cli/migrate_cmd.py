"""``migrate``: move a live stack to another server or provider, losing nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlox_iac.cli.common import IdentityOpt, JsonOpt, identity_for, Out, StackOpt, YesOpt, require_terminal, ssh_options
from mlox_iac.providers import PROVIDERS

ToOpt = typer.Option(None, "--to", help=f"Provider of the new server ({', '.join(PROVIDERS)}); with --part: "
                     "external or local")
PartOpt = typer.Option(None, "--part", help="Move one part instead of the whole stack: objects (every bucket) or "
                       "postgres (every database), to the external store in the stack file or back to the server")
PARTS = ("objects", "postgres")
FinishOpt = typer.Option(False, "--finish", help="After the cutover: remove the old server")
AbortOpt = typer.Option(False, "--abort", help="Go back to the old server (any time before --finish)")
WaitDnsOpt = typer.Option(0, "--wait-dns", min=0, metavar="SECONDS",
                          help="With mlox:domain: after the cutover, wait up to SECONDS until the stack's "
                               "names resolve to the new server only (A and AAAA records)")


def migrate(
    stack: Optional[str] = StackOpt,
    to: Optional[str] = ToOpt,
    finish: bool = FinishOpt,
    abort: bool = AbortOpt,
    yes: bool = YesOpt,
    identity: Optional[Path] = IdentityOpt,
    as_json: bool = JsonOpt,
    wait_dns: int = WaitDnsOpt,
    part: Optional[str] = PartOpt,
) -> None:
    """Move a deployed stack, with its data, to a new server (another provider, host or size).

    Phases: preflight, provision (the new server, same credentials), copy
    (server to server, while the old one serves), freeze (503 with
    Retry-After), verify (final delta; every table, object and volume file
    compared), cutover (outputs point at the new server). Interrupted, a
    rerun resumes at the first unfinished phase. The old server stays,
    stopped and protected, until --finish; --abort goes back to it.

    The new server's settings: the provider's block (mlox:hetzner, ...),
    or mlox:target.<provider> for a move within the same provider.

    With --part objects|postgres, one part moves instead, the server
    staying: every bucket to the external S3 store of
    mlox:services.seaweedfs.external, or every database to the server of
    mlox:services.postgres.external, and --to local back home. Phases:
    preflight, prepare, copy (while serving), freeze, verify (final delta;
    every object's SHA-256, every table's checksum), cutover (the services
    reconfigured). The old side runs until --finish; --abort goes back.

    Examples:
      mlox-iac migrate --stack prod --to digitalocean
      mlox-iac migrate --stack prod --to hetzner --wait-dns 3600
      mlox-iac migrate --stack prod --finish
      mlox-iac migrate --stack prod --abort
      mlox-iac migrate --stack prod --part objects --to external
      mlox-iac migrate --stack prod --part postgres --to local
      mlox-iac migrate --stack prod --part objects --finish
    """
    from mlox_iac import automation
    from mlox_iac.migrations import stack as engine_steps
    from mlox_iac.cli.common import passphrase_prompt, project_dir, require_stack
    from mlox_iac.errors import ConfigError

    out = Out(as_json)
    name = require_stack(stack)
    if sum([finish, abort, to is not None]) != 1:
        raise ConfigError(["--to/--finish/--abort: give exactly one (allowed: --to PROVIDER, --finish, --abort)"])
    if part is not None:
        return _move_part(out, name, part, to, finish, abort, yes, identity)
    if to is not None and to not in PROVIDERS:
        raise ConfigError([f"--to: {to!r} is not a provider (allowed: {', '.join(PROVIDERS)})"])
    project = project_dir()
    config = automation.validate_stack(name, project_dir=project)
    if to is not None:
        _refuse_a_sandbox_locked_out(project, name, to, config)
    cli = automation.default_pulumi_command("mlox-iac migrate")
    if not yes:
        require_terminal("mlox-iac migrate")
        question = (f"Move stack {name} and its data to a new {to} server?" if to else
                    f"Remove the old server of stack {name}?" if finish else
                    f"Abort the move of stack {name} and go back to its old server?")
        if not typer.confirm(question, default=False, err=True):
            raise automation.Aborted("aborted: nothing was changed")
    engine = engine_steps.AutomationEngine(name, project, cli, passphrase_prompt())
    identity = identity_for(identity, name)  # a sandbox's key: the new server authorizes it too
    servers = engine_steps.default_servers(str(identity) if identity else None, tuple(ssh_options()),
                                           lambda event: out.progress(f"  {event.get('message', '')}"))
    if finish:
        engine_steps.finish(name, project_dir=project, engine=engine, say=out.progress)
        out.data({"stack": name, "finished": True}, lambda console, d: console.print(f"Stack {name}: move finished"))
    elif abort:
        engine_steps.abort(name, project_dir=project, engine=engine, servers_for=servers, say=out.progress)
        out.data({"stack": name, "aborted": True}, lambda console, d: console.print(f"Stack {name}: move aborted"))
    else:
        record = engine_steps.run(name, to, project_dir=project, engine=engine, servers_for=servers, say=out.progress)
        outputs = engine.outputs() if wait_dns and record.cut_over else {}
        names = engine_steps.dns_names(outputs)
        if names:
            engine_steps.wait_for_dns(names, str(outputs.get("server_address")), timeout_s=wait_dns, say=out.progress)
        out.data(engine_steps.project_record_summary(project, name),
                 lambda console, d: console.print(f"Stack {name} runs on its new server ({record.to}); "
                                                  f"downtime {record.downtime_s or 0:.0f}s"))


def _move_part(out: Out, name: str, part: str, to: Optional[str], finish: bool, abort: bool, yes: bool,
               identity: Optional[Path]) -> None:
    """``migrate --part``: one part of the stack to the external store or back (``mlox_iac/migrations``)."""
    from mlox_iac import automation
    from mlox_iac.cli.common import passphrase_prompt, project_dir
    from mlox_iac.errors import ConfigError
    from mlox_iac.migrations import objects, parts, postgres
    from mlox_iac.migrations.stack import AutomationEngine

    if part not in PARTS:
        raise ConfigError([f"--part: {part!r} is not a part (allowed: {', '.join(PARTS)})"])
    if to is not None and to not in parts.SIDES:
        raise ConfigError([f"--to: {to!r} is not a side of a part (allowed: {', '.join(parts.SIDES)})"])
    kind = {"objects": objects.KIND, "postgres": postgres.KIND}[part]
    project = project_dir()
    automation.validate_stack(name, project_dir=project)
    cli = automation.default_pulumi_command("mlox-iac migrate")
    if not yes:
        require_terminal("mlox-iac migrate")
        question = (f"Move the {kind.what} of stack {name} to the {to} side?" if to else
                    f"Stop the old side of the {kind.what} of stack {name}?" if finish else
                    f"Abort the move of the {kind.what} of stack {name} and go back?")
        if not typer.confirm(question, default=False, err=True):
            raise automation.Aborted("aborted: nothing was changed")
    engine = AutomationEngine(name, project, cli, passphrase_prompt())
    identity = identity_for(identity, name)  # a sandbox's stack: its machine admits its own key
    server = parts.default_server(str(identity) if identity else None, tuple(ssh_options()),
                                  lambda event: out.progress(f"  {event.get('message', '')}"))
    if finish:
        parts.finish(kind, name, project_dir=project, engine=engine, say=out.progress)
        out.data({"stack": name, "part": part, "finished": True},
                 lambda console, d: console.print(f"Stack {name}: move of its {kind.what} finished"))
    elif abort:
        parts.abort(kind, name, project_dir=project, engine=engine, server_for=server, say=out.progress)
        out.data({"stack": name, "part": part, "aborted": True},
                 lambda console, d: console.print(f"Stack {name}: move of its {kind.what} aborted"))
    else:
        record = parts.run(kind, name, to, project_dir=project, engine=engine, server_for=server, say=out.progress)
        out.data({**parts.asdict(record), "next_phase": record.next_phase, "next_step": record.next_step()},
                 lambda console, d: console.print(f"Stack {name} keeps its {kind.what} on the {record.to} side; "
                                                  f"downtime {record.downtime_s or 0:.1f}s"))


def _refuse_a_sandbox_locked_out(project: Path, name: str, to: str, config) -> None:
    """A sandbox admits SSH only from its own network: moving it to a server needs the user's
    own address in mlox:ssh.admin_cidrs first (one line, nothing changed)."""
    from mlox_iac.errors import ConfigError
    from mlox_iac.paths import stack_file
    from mlox_iac.sandbox import manage, spec

    record = manage.load_record(project, name)
    if record is None:
        return
    target = config.target.onprem if to == "onprem" and config.target is not None else None
    host = target.host if target is not None else None
    problem = spec.move_problem(record, config.ssh.admin_cidrs, host,
                                str(stack_file(project, name).relative_to(project)))
    if problem:
        raise ConfigError([problem])
