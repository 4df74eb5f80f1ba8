"""Stack configuration: the pydantic model and the loader that validates it."""

from mlox_iac.config.loader import load_file, read_runtime_config, read_stack_file, validate
from mlox_iac.config.model import StackConfig

__all__ = ["StackConfig", "load_file", "read_runtime_config", "read_stack_file", "validate"]
