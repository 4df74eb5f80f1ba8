"""``validate`` and ``schema``: the stack file, checked and described."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mlox_iac.cli.common import FileOpt, JsonOpt, Out, StackOpt, stack_path
from mlox_iac.errors import ConfigError


def validate(stack: Optional[str] = StackOpt, file: Optional[Path] = FileOpt, as_json: bool = JsonOpt) -> None:
    """Check a stack file without creating anything.

    Exit 0 and say ok, or exit 2 with one line per problem: PATH: KEY: problem (allowed).

    Examples:
      mlox-iac validate --stack example-hetzner
      mlox-iac validate --file stacks/Pulumi.prod.yaml --json
    """
    from mlox_iac.config.loader import load_file

    out = Out(as_json)
    path = stack_path(stack, file)
    try:
        config = load_file(path)
    except ConfigError as error:
        if as_json:
            out.data({"ok": False, "file": str(path), "problems": error.problems})
            raise typer.Exit(2) from None
        raise
    from mlox_iac.pricing import smaller_size_warning

    warning = smaller_size_warning(config)
    summary = {
        "ok": True, "file": str(path), "provider": config.provider, "services": config.enabled_services(),
        "memory_needed_mb": config.memory_needed_mb(), "memory_mb": config.memory_mb(),
        "warnings": ([f"{path}: {warning}"] if warning else [])
        + [f"{path}: mlox:{key}: {message}" for key, message in config.warnings()],
    }
    for line in summary["warnings"]:
        typer.echo(f"warning: {line}", err=True)
    out.data(summary, lambda c, s: c.print(
        f"ok: {s['file']} is valid ({s['provider']}; {', '.join(s['services'])}; "
        f"{s['memory_needed_mb']} of {s['memory_mb']} MiB)"
    ))


def schema() -> None:
    """Print the JSON Schema of a stack file's mlox: settings (for editor completion).

    Example:
      mlox-iac schema > mlox.schema.json
    """
    from mlox_iac.config.model import StackConfig

    document = StackConfig.model_json_schema()
    document["properties"] = {f"mlox:{k}": v for k, v in document["properties"].items()}
    document["required"] = [f"mlox:{k}" for k in document.get("required", [])]
    document["title"] = "mlox-iac stack settings (the mlox: keys of a stack file's config block)"
    typer.echo(json.dumps(document, indent=2, sort_keys=True))
