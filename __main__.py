"""Entry point for `pulumi up`: config errors print one line per problem, no traceback."""

import sys

from mlox_iac.errors import ConfigError
from mlox_iac.program import program

try:
    program()
except ConfigError as error:
    print(str(error), file=sys.stderr)
    sys.exit(2)
