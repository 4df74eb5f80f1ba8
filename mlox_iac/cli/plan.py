"""``plan``: what ``pulumi up`` would create, computed offline under Pulumi mocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from mlox_iac.cli.common import FileOpt, JsonOpt, Out, StackOpt, stack_path

_MAX = 60


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    lines = text.splitlines() or [""]
    first = lines[0][:_MAX] + ("…" if len(lines[0]) > _MAX else "")
    return first + (f" (+{len(lines) - 1} lines)" if len(lines) > 1 else "")


def plan(stack: Optional[str] = StackOpt, file: Optional[Path] = FileOpt, as_json: bool = JsonOpt) -> None:
    """Show the resources `pulumi up` would create, without the Pulumi CLI or a cloud account.

    Runs the real program for the stack under Pulumi mocks. Secrets show as \\[secret];
    provider-computed values (addresses, ids) are stand-ins.

    Examples:
      mlox-iac plan --stack example-hetzner
      mlox-iac plan --stack example-aws --json | jq '.[].type'
    """
    from mlox_iac.plan import mask, plan_stack_file

    out = Out(as_json)
    resources, _ = plan_stack_file(stack_path(stack, file))
    names = {r.urn: r.name for r in resources}
    rows = [
        {"type": r.type, "name": r.name, "parent": names.get(r.parent or "", None), "inputs": mask(r.inputs)}
        for r in sorted(resources, key=lambda r: r.urn)
    ]

    def table(console, rows):
        from rich.table import Table

        t = Table(title=f"{len(rows)} resources", show_lines=False)
        for column in ("type", "name", "parent", "key inputs"):
            t.add_column(column, overflow="fold")
        for row in rows:
            inputs = "\n".join(f"{k}: {_short(v)}" for k, v in sorted(row["inputs"].items()) if k != "connection")
            t.add_row(row["type"], row["name"], row["parent"] or "", inputs)
        console.print(t)

    out.data(rows, table)
