"""Read a stack's ``mlox:`` settings (from a stack file or from Pulumi's runtime config)
and validate them once, turning every problem into one line ``PATH: KEY: problem``.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
import unicodedata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mlox_iac.config import stack_yaml
from mlox_iac.config.model import StackConfig, _FieldError
from mlox_iac.errors import ConfigError

NAMESPACE = "mlox"
SECRET_PLACEHOLDER = "[secret]"
# Config values that must be Pulumi secrets: dotted paths under mlox:.
MUST_BE_SECRET = {"onprem.private_key", "services.monitoring.alerts.email.password", "backup.access_key_id",
                  "backup.secret_access_key", "target.onprem.private_key",
                  "services.seaweedfs.external.access_key_id", "services.seaweedfs.external.secret_access_key",
                  "services.postgres.external.admin_password"}
# The top-level keys of a Pulumi stack file (pulumi/pulumi sdk/go/common/workspace ProjectStack).
STACK_FILE_KEYS = ("config", "secretsprovider", "encryptedkey", "encryptionsalt", "environment")


def stack_name_of(path: Path) -> str:
    name = path.name
    if name.startswith("Pulumi.") and name.endswith(".yaml"):
        return name[len("Pulumi."):-len(".yaml")]
    return path.stem


def read_stack_file(path: Path) -> tuple[dict[str, Any], set[str]]:
    """The ``mlox:`` settings of a stack file and the set of keys that were ``secure:`` values.

    Secure values cannot be decrypted without the Pulumi CLI; they become a placeholder.
    Anything that is not a readable UTF-8 YAML mapping with a ``config:`` block of
    ``namespace:key`` entries is a :class:`ConfigError` naming the file (and the key).
    """
    source = str(path)
    document = stack_yaml.load(path, source)
    if document is None:
        raise ConfigError([f"{source}: is empty (allowed: a mapping with a config: key holding mlox: settings)"])
    if not isinstance(document, dict):
        raise ConfigError([f"{source}: must be a mapping with a config: key (found {stack_yaml.kind(document)})"])
    problems = [
        f"{source}: {_visible(str(key))}: unknown key ({_hint(str(key), STACK_FILE_KEYS)})"
        for key in document if key not in STACK_FILE_KEYS
    ]
    config = document.get("config") or {}
    if not isinstance(config, dict):
        problems.append(f"{source}: config: must be a mapping of keys to values")
        raise ConfigError(problems)
    raw: dict[str, Any] = {}
    secret: set[str] = set()
    for key, value in config.items():
        namespace, _, name = str(key).partition(":")
        if namespace != NAMESPACE:
            if _looks_like_ours(namespace):
                problems.append(f"{source}: {_visible(str(key))}: unknown namespace (did you mean '{NAMESPACE}:{name}'?)")
            continue
        raw[name] = _replace_secure(value, name, secret)
    if problems:
        raise ConfigError(problems)
    return raw, secret


def _hint(key: str, allowed: typing.Iterable[str]) -> str:
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(allowed)


def _looks_like_ours(namespace: str) -> bool:
    """Whether a config namespace is a misspelling of ``mlox`` (case, look-alike letters)."""
    folded = unicodedata.normalize("NFKC", namespace).casefold()
    return folded == NAMESPACE or bool(difflib.get_close_matches(folded, [NAMESPACE], n=1, cutoff=0.75))


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
        problems = [f"{source}: {key}: {_shorten(message)}" for key, message in _explain(exc)]
        raise ConfigError(problems) from None
    for path in sorted(MUST_BE_SECRET):
        parts = path.split(".")
        value: Any = raw
        for part in parts:
            value = value.get(part) if isinstance(value, dict) else None
        # Pulumi marks a whole top-level key secret when a value inside it is (set with --path).
        if value is not None and not ({".".join(parts[:i]) for i in range(1, len(parts) + 1)} & secret):
            problems.append(
                f"{source}: {NAMESPACE}:{path}: must be a secret "
                f"(set it with: pulumi config set --secret --path '{NAMESPACE}:{path}' < FILE)"
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
            out += ("" if i == 0 else ".") + _visible(str(part))
    return out


def _visible(name: str) -> str:
    """A key as it must be read: invisible characters (zero-width space, bidi marks) escaped."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in name)


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
            message = f"unknown key ({_hint(str(loc[-1]), _allowed_keys(StackConfig, loc[:-1]))})"
        elif kind == "missing":
            message = "required"
        elif kind == "literal_error":
            message = f"{_show(value)} is not allowed (allowed: {ctx.get('expected', '').replace(chr(39), '')})"
        elif kind == "value_error":
            message = str(err["msg"]).removeprefix("Value error, ")
        elif kind in ("int_parsing", "int_type", "int_from_float"):
            message = f"{_show(value)} is not a whole number"
        elif kind in ("bool_parsing", "bool_type"):
            message = f"{_show(value)} is not true or false"
        elif kind == "string_type":
            message = f"{_show(value)} is not a string"
        elif kind == "list_type":
            message = "must be a list"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            message = "must be a mapping of keys to values"
        elif kind == "greater_than_equal":
            message = f"{_show(value)} is too small (allowed: {ctx['ge']} or more)"
        elif kind == "less_than_equal":
            message = f"{_show(value)} is too large (allowed: {ctx['le']} or less)"
        elif kind == "too_short":
            message = f"must have at least {ctx.get('min_length', 1)} item(s)"
        elif kind == "string_pattern_mismatch":
            message = f"{_show(value)} is not allowed (allowed: matching {ctx['pattern']})"
        else:
            message = str(err["msg"])
        lines.append((_key(loc), message))
    return lines


# A quoted value of more than 60 characters inside a message (validators quote what they got).
_LONG_QUOTED = re.compile(r"""(['"])([^'"\n]{60})[^'"\n]+\1""")


def _shorten(message: str) -> str:
    """Cut long quoted values short, so a 500 kB value still gives one readable line."""
    return _LONG_QUOTED.sub(lambda m: f"{m[1]}{m[2]}...{m[1]}", message)


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut short: an error line stays one readable line whatever the input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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
