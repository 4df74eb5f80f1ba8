"""Read a stack's ``mlox:`` settings (from a stack file or from Pulumi's runtime config)
and validate them once, turning every problem into one line ``PATH: KEY: problem``.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mlox_iac.config.model import StackConfig, _FieldError
from mlox_iac.errors import ConfigError

NAMESPACE = "mlox"
SECRET_PLACEHOLDER = "[secret]"
# Config values that must be Pulumi secrets: (top-level key, nested key path).
MUST_BE_SECRET = {("onprem", "private_key"), ("backup", "access_key_id"), ("backup", "secret_access_key"),
                  ("target", "onprem.private_key")}


def stack_name_of(path: Path) -> str:
    name = path.name
    if name.startswith("Pulumi.") and name.endswith(".yaml"):
        return name[len("Pulumi."):-len(".yaml")]
    return path.stem


def read_stack_file(path: Path) -> tuple[dict[str, Any], set[str]]:
    """The ``mlox:`` settings of a stack file and the set of keys that were ``secure:`` values.

    Secure values cannot be decrypted without the Pulumi CLI; they become a placeholder.
    """
    source = str(path)
    if not path.is_file():
        raise ConfigError([f"{source}: file not found"])
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError([f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(document, dict):
        raise ConfigError([f"{source}: must be a mapping with a config: key"])
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError([f"{source}: config: must be a mapping of keys to values"])
    raw: dict[str, Any] = {}
    secret: set[str] = set()
    for key, value in config.items():
        namespace, _, name = str(key).partition(":")
        if namespace != NAMESPACE:
            continue
        raw[name] = _replace_secure(value, name, secret)
    return raw, secret


def _replace_secure(value: Any, path: str, secret: set[str]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            secret.add(path)
            return SECRET_PLACEHOLDER
        return {k: _replace_secure(v, f"{path}.{k}", secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_secure(v, f"{path}[{i}]", secret) for i, v in enumerate(value)]
    return value


def read_runtime_config() -> tuple[dict[str, Any], set[str]]:
    """The ``mlox:`` settings the Pulumi engine passed to this program."""
    from pulumi.runtime import config as rc

    keys = set(rc.CONFIG.get()) | set(rc.get_config_env())
    raw: dict[str, Any] = {}
    secret: set[str] = set()
    for key in sorted(keys):
        namespace, _, name = key.partition(":")
        if namespace != NAMESPACE:
            continue
        value = rc.get_config(key)
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        raw[name] = value
        if rc.is_config_secret(key):
            secret.add(name)
    return raw, secret


def validate(raw: dict[str, Any], secret: set[str], source: str, stack_name: str) -> StackConfig:
    """Validate the settings; raise :class:`ConfigError` with one line per problem."""
    problems: list[str] = []
    try:
        config = StackConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{source}: {key}: {message}" for key, message in _explain(exc)]
        raise ConfigError(problems) from None
    for top, nested in sorted(MUST_BE_SECRET):
        block: Any = raw.get(top)
        for part in nested.split(".")[:-1]:
            block = block.get(part) if isinstance(block, dict) else None
        last = nested.split(".")[-1]
        covering = {top, *(f"{top}.{'.'.join(nested.split('.')[:i])}" for i in range(1, nested.count('.') + 2))}
        if isinstance(block, dict) and last in block and not (covering & secret):
            problems.append(
                f"{source}: {NAMESPACE}:{top}.{nested}: must be a secret "
                f"(set it with: pulumi config set --secret --path '{NAMESPACE}:{top}.{nested}' < FILE)"
            )
    if problems:
        raise ConfigError(problems)
    config._stack_name = stack_name
    return config


def load_file(path: Path) -> StackConfig:
    raw, secret = read_stack_file(path)
    return validate(raw, secret, str(path), stack_name_of(path))


def _key(loc: tuple) -> str:
    out = NAMESPACE + ":"
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("" if i == 0 else ".") + str(part)
    return out


def _explain(exc: ValidationError) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        kind = err["type"]
        ctx = err.get("ctx") or {}
        error = ctx.get("error")
        if isinstance(error, _FieldError):
            lines.append((_key(tuple(error.key.split("."))), error.message))
            continue
        value = err.get("input")
        if kind == "extra_forbidden":
            allowed = _allowed_keys(StackConfig, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(allowed)
            message = f"unknown key ({hint})"
        elif kind == "missing":
            message = "required"
        elif kind == "literal_error":
            message = f"{value!r} is not allowed (allowed: {ctx.get('expected', '').replace(chr(39), '')})"
        elif kind == "value_error":
            message = str(err["msg"]).removeprefix("Value error, ")
        elif kind in ("int_parsing", "int_type", "int_from_float"):
            message = f"{value!r} is not a whole number"
        elif kind in ("bool_parsing", "bool_type"):
            message = f"{value!r} is not true or false"
        elif kind == "string_type":
            message = f"{value!r} is not a string"
        elif kind == "list_type":
            message = "must be a list"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            message = "must be a mapping of keys to values"
        elif kind == "greater_than_equal":
            message = f"{value!r} is too small (allowed: {ctx['ge']} or more)"
        elif kind == "less_than_equal":
            message = f"{value!r} is too large (allowed: {ctx['le']} or less)"
        elif kind == "too_short":
            message = f"must have at least {ctx.get('min_length', 1)} item(s)"
        elif kind == "string_pattern_mismatch":
            message = f"{value!r} is not allowed (allowed: matching {ctx['pattern']})"
        else:
            message = str(err["msg"])
        lines.append((_key(loc), message))
    return lines


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at ``loc`` inside ``model`` (for unknown-key hints)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = _model_in(current.model_fields[part].annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, (types.UnionType,)) or typing.get_origin(annotation) in (typing.Union, list):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
