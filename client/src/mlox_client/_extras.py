"""Lazy imports of the integrations' libraries, each failing with the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from mlox_client.errors import MissingExtra


def need(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or a :class:`MissingExtra` saying ``pip install 'mlox-client[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and module.split(".")[0] != exc.name.split(".")[0]:
            raise  # the library is there but broken: its own error says more
        raise MissingExtra(f"{what} needs {module.split('.')[0]}: pip install 'mlox-client[{extra}]'") from None


def available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
