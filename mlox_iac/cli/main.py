"""The ``mlox-iac`` entry point: assembles the commands and handles every error once."""

from __future__ import annotations

import sys

import typer

from mlox_iac.cli import (
    backup_cmds, config_cmds, connect_cmds, cost_cmd, engine_cmds, init_cmd, migrate_cmd, pipeline_cmds, plan,
    sandbox_cmds, ui_cmd,
)

app = typer.Typer(
    name="mlox-iac",
    help="MLOps-in-a-Box as infrastructure-as-code: a complete self-hosted MLOps stack on one server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(config_cmds.validate)
app.command()(config_cmds.schema)
app.command()(plan.plan)
app.command()(cost_cmd.cost)
app.command()(init_cmd.init)
for command in (engine_cmds.preview, engine_cmds.up, engine_cmds.refresh, engine_cmds.destroy):
    app.command()(command)
for command in (connect_cmds.outputs, connect_cmds.env, connect_cmds.status, connect_cmds.logs, connect_cmds.ssh):
    app.command()(command)
for command in (backup_cmds.backup, backup_cmds.backups, backup_cmds.restore):
    app.command()(command)

app.command()(migrate_cmd.migrate)
app.command()(ui_cmd.ui)
app.add_typer(sandbox_cmds.app, name="sandbox")
app.add_typer(pipeline_cmds.new_app, name="new")
app.add_typer(pipeline_cmds.code_app, name="code")

_state = {"verbose": False}


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks of unexpected errors")) -> None:
    _state["verbose"] = verbose


try:  # Typer vendors Click since 0.20 (typer._click); its errors derive from TyperException.
    from typer import TyperException as _UsageProblem
except ImportError:  # older Typer on Click itself
    from click import ClickException as _UsageProblem


def run(argv: list[str] | None = None) -> None:
    """Run the CLI: one line per error on stderr, exit 2 for bad input, 1 for failures."""
    from mlox_iac.errors import ConfigError, MloxError

    try:
        # Outside standalone mode click returns the code of a typer.Exit instead of exiting.
        code = app(args=argv, prog_name="mlox-iac", standalone_mode=False)
    except ConfigError as error:
        for line in error.problems:  # each already names the file and the key
            typer.echo(line, err=True)
        sys.exit(error.exit_code)
    except MloxError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except _UsageProblem as error:
        # Click's usage line, the hint to --help and "Error: ...". Typer's Click lists close
        # options as "(Possible options: --stack)"; say it the way Click itself does.
        possible = getattr(error, "possibilities", None)
        if possible:
            error.message = f"{error.message}. Did you mean {' or '.join(sorted(possible))}?"
            error.possibilities = None
        show = getattr(error, "show", None)
        show() if show else typer.echo(f"Error: {error.format_message()}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as error:  # the one place an unexpected error is turned into a line
        if _state["verbose"] or "--verbose" in (argv or sys.argv):
            raise
        typer.echo(f"error: {type(error).__name__}: {error} (run with --verbose for the traceback)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
