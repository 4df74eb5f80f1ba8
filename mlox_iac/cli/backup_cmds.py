"""``backup``, ``backups``, ``restore``: the stack's encrypted off-site backups.

Each runs the backup tooling the bundle installed on the server (``mlox_iac/data``, run
as ``python3 -m mlox_data`` over the system ssh), shows its progress on stderr and prints
its result (``--json`` for data). The server also backs up by itself on the schedule
(``mlox:backup.schedule``, a systemd timer); ``mlox-iac status`` reports the last result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlox_iac.cli.common import (
    IdentityOpt, JsonOpt, identity_for, Out, OutputsFileOpt, StackOpt, YesOpt, interactive, require_terminal, ssh_options,
)
from mlox_iac.cli.connect_cmds import read_outputs


def _run(verb: str, args: list[str], stack, outputs_file, identity, out: Out):
    from mlox_iac import connect

    values = read_outputs(stack, outputs_file, show_secrets=False)
    argv = connect.backup_argv(values, verb, args, identity=identity_for(identity, stack), options=ssh_options())

    def show(event: dict) -> None:
        from rich.markup import escape

        out.progress(escape(f"[{event.get('phase', '')}] {event.get('message', '')}"))

    return connect.run_backup_verb(argv, show, goes_on=verb if verb in ("backup", "restore") else None)


def backup(
    stack: Optional[str] = StackOpt, as_json: bool = JsonOpt, outputs_file: Optional[Path] = OutputsFileOpt,
    identity: Optional[Path] = IdentityOpt,
) -> None:
    """Back up the stack's data now: every declared database, bucket and volume.

    Dumps each database (consistent), copies every object, reads each kept
    volume, uploads one encrypted restic snapshot to mlox:backup.repository,
    checks the repository and applies the keep policy. Exits 1 with the
    reason when anything fails.

    Examples:
      mlox-iac backup --stack prod
      mlox-iac backup --stack prod --json
    """
    from mlox_iac.connect import format_bytes

    out = Out(as_json)
    result = _run("backup", [], stack, outputs_file, identity, out)
    out.data(result, lambda c, r: c.print(
        f"snapshot {str(r.get('snapshot'))[:8]}: {', '.join(r.get('services', []))}; "
        f"{format_bytes(r.get('total_bytes'))} backed up, {format_bytes(r.get('data_added'))} new in the repository; "
        f"check {r.get('check')}"))


def backups(
    stack: Optional[str] = StackOpt, as_json: bool = JsonOpt, outputs_file: Optional[Path] = OutputsFileOpt,
    identity: Optional[Path] = IdentityOpt,
) -> None:
    """List the stack's snapshots: time, size, services inside, last check result.

    Examples:
      mlox-iac backups --stack prod
      mlox-iac backups --stack prod --json | jq -r '.[-1].id'
    """
    from mlox_iac.connect import format_bytes

    out = Out(as_json)
    rows = _run("snapshots", [], stack, outputs_file, identity, out)

    def table(console, rows):
        from rich.table import Table

        t = Table(show_header=True)
        for column in ("snapshot", "time", "services", "size", "added", "check"):
            t.add_column(column, overflow="fold")
        for r in rows:
            t.add_row(r["id"], r["time"][:19].replace("T", " "), ", ".join(r["services"]), format_bytes(r["size"]),
                      format_bytes(r["added"]), r["check"])
        console.print(t)
        if not rows:
            console.print("no snapshots yet: run mlox-iac backup")

    out.data(rows, table)


def restore(
    stack: Optional[str] = StackOpt, as_json: bool = JsonOpt, outputs_file: Optional[Path] = OutputsFileOpt,
    identity: Optional[Path] = IdentityOpt, yes: bool = YesOpt,
    snapshot: str = typer.Option("latest", "--snapshot", help="Snapshot ID (from mlox-iac backups); default: the latest"),
    service: Optional[str] = typer.Option(None, "--service", help="Restore only this service's data"),
) -> None:
    """Restore a snapshot into the deployed stack, then verify it.

    Stops the containers that write the data, restores each database,
    bucket and volume next to the live one, verifies it against the
    snapshot's checksums, swaps it in (the replaced data is kept aside:
    <db>__mlox_before_restore, bucket mlox-before-restore,
    .<volume>.before-restore), and starts everything again. A bad
    download fails before anything stops. Ctrl-C or a dropped connection
    leaves the restore running on the server to its end; mlox-iac status
    shows how it ended.

    Examples:
      mlox-iac restore --stack prod
      mlox-iac restore --stack prod --snapshot 4f2a91c0 --service mlflow --yes
    """
    out = Out(as_json)
    if not yes:
        require_terminal("restore")
        if interactive() and not typer.confirm(
                f"Replace the stack's data with snapshot {snapshot}{' of ' + service if service else ''}?", err=True):
            raise typer.Exit(1)
    args = ["--snapshot", snapshot] + (["--service", service] if service else [])
    result = _run("restore", args, stack, outputs_file, identity, out)

    def human(console, r):
        console.print(f"restored snapshot {r['snapshot']} ({r['time'][:19].replace('T', ' ')}), verified:")
        for item in r["restored"]:
            detail = ", ".join(f"{k} {v}" for k, v in item.items() if k not in ("service", "kind", "name"))
            console.print(f"  {item['service']}: {item['kind']} {item['name']} ({detail})")

    out.data(result, human)
