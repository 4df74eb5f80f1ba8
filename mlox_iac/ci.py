"""Deploy a stack from CI: validate → plan → preview → up, built on :mod:`mlox_iac.automation`.

Usage::

    python -m mlox_iac.ci --stack prod                      # all four steps
    python -m mlox_iac.ci --stack prod --until preview      # stop after the preview (pull requests)

Prints one line per step and per changed resource; the secrets passphrase comes from
``PULUMI_CONFIG_PASSPHRASE`` (never asked). Exit status: 0 done, 1 a step failed, 2 the
stack file is invalid. With ``--summary FILE`` the result (changes and outputs, secrets
masked) is written as JSON for later steps of the workflow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mlox_iac.errors import ConfigError, MloxError

STEPS = ("validate", "plan", "preview", "up")


def _print_event(event) -> None:
    """One line per finished resource step that changes something, and every error."""
    done = event.res_outputs_event or event.res_op_failed_event
    if done is not None and str(getattr(done.metadata.op, "value", done.metadata.op)) != "same":
        failed = " FAILED" if event.res_op_failed_event is not None else ""
        op = getattr(done.metadata.op, "value", done.metadata.op)
        print(f"  {op} {done.metadata.urn.rsplit('::', 1)[-1]} ({done.metadata.type}){failed}", flush=True)
    diag = event.diagnostic_event
    if diag is not None and diag.severity == "error" and (diag.message or "").strip():
        print(f"  error: {diag.message.strip()}", file=sys.stderr, flush=True)


def deploy(
    stack: str, until: str = "up", project_dir: Path | None = None, summary: Path | None = None,
    local_state: bool = False, env: dict[str, str] | None = None,
) -> int:
    """Run the steps up to ``until``; return the process exit status.

    On CI (``CI`` set) the engine steps refuse the default file backend, which lives in
    the runner's checkout and is gone after the job (the next run would create every
    resource again), unless ``local_state``.
    """
    from mlox_iac import automation

    env = dict(os.environ) if env is None else env
    project = project_dir or automation.find_project_dir()
    if env.get("CI") and not local_state and until in ("preview", "up") and automation.backend_url(project, env):
        raise MloxError(
            "on CI the default state backend (.mlox/state in the checkout) is lost after the job: "
            "set PULUMI_BACKEND_URL (e.g. s3://bucket/mlox) or PULUMI_ACCESS_TOKEN, or pass --local-state"
        )
    steps = STEPS[: STEPS.index(until) + 1]
    result = None
    for step in steps:
        print(f"== {step} {stack}", flush=True)
        if step == "validate":
            config = automation.validate_stack(stack, project_dir=project)
            print(f"  ok: {config.provider}; {', '.join(config.enabled_services())}")
        elif step == "plan":
            from mlox_iac.plan import plan_stack_file

            resources, _ = plan_stack_file(automation.stack_file(project, stack))
            print(f"  {len(resources)} resources in the program")
        elif step == "preview":
            result = automation.preview(stack, project_dir=project, on_event=_print_event)
            print(f"  changes: {json.dumps(result.changes, sort_keys=True)}")
        elif step == "up":
            result = automation.up(stack, project_dir=project, on_event=_print_event)
            print(f"  changes: {json.dumps(result.changes, sort_keys=True)}")
            for name, url in (result.outputs.get("urls") or {}).items():
                print(f"  {name}: {url}")
    if summary is not None and result is not None:
        summary.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlox_iac.ci", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True, help="stack name (stacks/Pulumi.<stack>.yaml)")
    parser.add_argument("--until", choices=STEPS, default="up", help="last step to run (default: up)")
    parser.add_argument("--summary", type=Path, help="write the last step's result as JSON here")
    parser.add_argument("--local-state", action="store_true", help="allow the default file backend on CI")
    args = parser.parse_args(argv)
    try:
        return deploy(args.stack, args.until, summary=args.summary, local_state=args.local_state)
    except ConfigError as error:
        for line in error.problems:
            print(line, file=sys.stderr)
        return error.exit_code
    except MloxError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
