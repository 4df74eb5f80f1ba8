"""The README's promises, checked on every run.

- Every ``mlox-iac`` command in the README's shell code blocks parses: the command exists,
  its options exist and take what the README gives them.
- Those that need no server (``validate``, ``plan``, ``schema``, ``cost``, and ``--help``)
  run in a throwaway copy of the project, through a shell as a reader would type them, and
  exit 0 (``validate`` saying ``ok:``). ``cost --live`` asks a provider's API: parsed only.
- Every ``mlox-iac ...`` in inline code names a real command and real options.
- Every command of the CLI appears in the README.
- Every repository path the README names (``scripts/``, ``stacks/``, ``docs/``, ``examples/``,
  ``mlox_iac/``, ``tests/``, ``benchmarks/``) exists; ``<name>`` in a path matches anything,
  and the reader's own stack file (``prod``) is exempt.

``readme_problems`` does the static part; its own test shows that a renamed command, option
or path is caught.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
NO_SERVER = {"validate", "plan", "schema", "cost"}
NEEDS_NETWORK = {"--live"}  # cost --live asks the provider's API
SHELL_BLOCK = {"bash", "sh", "shell", "console"}
OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "2>", "&"}
USER_FILES = {"stacks/Pulumi.prod.yaml", "stacks/Pulumi.sandbox.yaml"}  # the reader's own stacks (`init`, `sandbox up` write them)
PATH_PREFIXES = ("scripts", "stacks", "docs", "examples", "mlox_iac", "tests", "benchmarks")
_PATH = re.compile(r"(?<![\w./~$-])((?:%s)/[\w.<>*-]*(?:/[\w.<>*-]+)*/?)" % "|".join(PATH_PREFIXES))


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def shell_commands(text: str) -> list[str]:
    """The ``mlox-iac`` command lines of the shell blocks, as typed (comments removed, shell
    operators such as ``>`` kept), and the ``mlox-iac`` commands inside ``$(...)``."""
    found = []
    for language, body in code_blocks(text):
        if language not in SHELL_BLOCK:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            if words and words[0] == "mlox-iac":
                found.append(" ".join(w if w in OPERATORS else shlex.quote(w) for w in words))
            for word in words:
                inner = re.fullmatch(r"\$\((mlox-iac [^)]*)\)", word)
                if inner:
                    found.append(inner.group(1))
    return found


def argv_of(command: str) -> list[str]:
    """The arguments ``mlox-iac`` gets from a command line (up to the first shell operator)."""
    words = shlex.split(command)
    cut = next((i for i, w in enumerate(words) if w in OPERATORS), len(words))
    return words[1:cut]


def runnable(command: str) -> bool:
    """Whether a README command needs no server (and no network): run it, not only parse it."""
    argv = argv_of(command)
    if "--help" in argv:
        return True
    return bool(argv) and argv[0] in NO_SERVER and not NEEDS_NETWORK & set(argv)


def _cli():
    import typer.main

    from mlox_iac.cli.main import app

    return typer.main.get_command(app)


def parse_problem(command: str) -> str | None:
    """None if ``command`` parses as the CLI would parse it, else what is wrong."""
    group = _cli()
    argv = argv_of(command)
    try:
        with group.make_context("mlox-iac", list(argv)) as ctx:
            # Click keeps the command name apart from the rest (protected_args, renamed _protected_args).
            leading = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
            name, sub, rest = group.resolve_command(ctx, [*leading, *ctx.args])
            with sub.make_context(name, rest, parent=ctx):
                pass
    except Exception as error:  # Click's UsageError, or Exit from an eager option such as --help
        if getattr(error, "exit_code", None) == 0:
            return None
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        return f"{command}: {message}"
    return None


def mention_problem(command: str) -> str | None:
    """For ``mlox-iac NAME --opt ...`` in prose: NAME is a command and every --opt one of its options."""
    words = command.split()
    group = _cli()
    if len(words) < 2 or words[1] not in group.commands:
        return f"{command}: no command {words[1] if len(words) > 1 else ''!r}"
    command_ = group.commands[words[1]]
    rest = words[2:]
    if hasattr(command_, "commands") and rest and rest[0] in command_.commands:  # a group: `sandbox up ...`
        command_, rest = command_.commands[rest[0]], rest[1:]
    options = {opt for param in command_.params for opt in (*param.opts, *param.secondary_opts)}
    unknown = [w for w in rest if w.startswith("--") and w.split("=")[0] not in options and w != "--"]
    return f"{command}: no option {', '.join(unknown)}" if unknown else None


def path_exists(path: str, root: Path) -> bool:
    pattern = re.sub(r"<[^>]*>", "*", path.rstrip("/"))
    return any(root.glob(pattern)) if "*" in pattern else (root / pattern).exists()


def readme_problems(text: str, root: Path = ROOT) -> list[str]:
    """Everything the README names that does not exist or does not parse."""
    problems = [p for c in shell_commands(text) if (p := parse_problem(c))]
    inline = re.findall(r"`(mlox-iac [^`]+)`", text)
    problems += [p for c in inline if (p := mention_problem(c))]
    named = set(re.findall(r"mlox-iac (\w+)", text))
    problems += [f"command {name!r} is not in the README" for name in _cli().commands if name not in named]
    return problems + path_problems(text, root)


def path_problems(text: str, root: Path = ROOT) -> list[str]:
    paths = {m.rstrip(".,:;") for m in _PATH.findall(text)}
    return [f"{path}: no such file or directory" for path in sorted(paths - USER_FILES) if not path_exists(path, root)]


def test_everything_the_readme_names_exists_and_parses():
    assert readme_problems(README.read_text()) == []


@pytest.mark.parametrize("doc", ["docs/testing.md", "docs/benchmarks.md"])
def test_every_path_the_docs_name_exists(doc):
    assert path_problems((ROOT / doc).read_text()) == []


@pytest.mark.parametrize("before, after, problem", [
    ("mlox-iac validate --stack example-full", "mlox-iac validat --stack example-full", "No such command"),
    ("mlox-iac logs mlflow --stack prod --tail 50", "mlox-iac logs mlflow --stack prod --lines 50", "--lines"),
    ("`mlox-iac outputs`", "`mlox-iac output`", "no command 'output'"),
    ("scripts/quickstart", "scripts/quickstrt", "scripts/quickstrt: no such file"),
    ("docs/benchmarks.md", "docs/benchmark.md", "docs/benchmark.md: no such file"),
])
def test_a_renamed_command_option_or_path_is_caught(before, after, problem):
    text = README.read_text()
    assert before in text, f"the README no longer says {before!r}: pick another example"
    problems = readme_problems(text.replace(before, after))
    assert any(problem in p for p in problems), problems


RUNNABLE = sorted({c for c in shell_commands(README.read_text()) if runnable(c)})


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A throwaway copy of the project's stacks, with ``prod`` (the README's own stack) as a copy
    of the Hetzner example, and ``mlox-iac`` on PATH running this checkout's code."""
    project = tmp_path_factory.mktemp("readme") / "project"
    (project / "bin").mkdir(parents=True)
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    shutil.copytree(ROOT / "stacks", project / "stacks")
    shutil.copy(ROOT / "stacks" / "Pulumi.example-hetzner.yaml", project / "stacks" / "Pulumi.prod.yaml")
    shim = project / "bin" / "mlox-iac"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mlox_iac.cli.main "$@"\n')
    shim.chmod(0o755)
    return project


def test_the_readme_runs_what_needs_no_server():
    assert {argv_of(c)[0] for c in RUNNABLE} >= NO_SERVER, RUNNABLE


@pytest.mark.parametrize("command", [None, *_cli().commands])
def test_help_of_every_command(command):
    from typer.testing import CliRunner

    from mlox_iac.cli.main import app

    result = CliRunner().invoke(app, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: mlox-iac" in result.output


@pytest.mark.parametrize("command", RUNNABLE)
def test_readme_command_runs(project, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOX_", "PULUMI_"))}
    env.update(PATH=f"{project / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT),
               MLOX_PROJECT_DIR=str(project), HOME=str(project), COLUMNS="120")
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
    if argv_of(command)[0] == "validate":
        assert result.stdout.startswith("ok: "), result.stdout
