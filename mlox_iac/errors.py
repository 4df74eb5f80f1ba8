"""One error hierarchy for the whole tool.

Config errors exit with status 2, runtime errors with status 1. The CLI's single
top-level handler prints ``str(error)`` as one line (or one line per problem).
"""

from __future__ import annotations


class MloxError(Exception):
    """Base class of every error mlox-iac reports to a user."""

    exit_code = 1


class ConfigError(MloxError):
    """The stack configuration is invalid. Carries one line per problem."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class PulumiCliMissing(MloxError):
    """The Pulumi CLI is needed for this command but is not installed."""

    def __init__(self, command: str = "this command"):
        super().__init__(
            f"{command} needs the Pulumi CLI, which is not on PATH: install it with "
            "`curl -fsSL https://get.pulumi.com | sh` (see https://www.pulumi.com/docs/install/); "
            "`mlox-iac validate`, `plan` and `schema` work without it"
        )
