"""Reading a stack file as YAML, strictly: every way a file can be unusable is one error line.

PyYAML's safe loader accepts things Pulumi's own loader (Go yaml.v3) refuses or that would
make a silent guess: duplicate keys (last one wins), and aliases that expand exponentially
("billion laughs") or refer to themselves. The document is composed into nodes first and
checked before any Python value is built, so a hostile file costs no more than its size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlox_iac.errors import ConfigError
from mlox_iac.files import read_text

# A stack file holds a few dozen values; these bounds are far above that and far below harm.
MAX_BYTES = 1 << 20
MAX_VALUES = 10_000
MAX_DEPTH = 64
MAX_DIGITS = 30
_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def load(path: Path, source: str) -> Any:
    """The YAML document in ``path`` as Python values (None when the file holds nothing)."""
    text = read_text(path, source, "stack file", MAX_BYTES)
    if _bracket_depth(text) > 4 * MAX_DEPTH:
        # PyYAML's scanner is quadratic in flow nesting: refuse absurd depths before it starts
        # (moderate ones are refused below, naming the key).
        raise ConfigError([f"{source}: nested too deeply (allowed: at most {MAX_DEPTH} levels)"])
    try:
        loader = _Loader(text)  # the reader rejects non-printable characters right here
    except yaml.YAMLError as exc:
        raise _invalid(source, exc) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _invalid(source, exc) from None
        except RecursionError:
            raise ConfigError([f"{source}: nested too deeply (allowed: at most {MAX_DEPTH} levels)"]) from None
        if node is None:
            return None
        problems = _check(node, source)
        if problems:
            raise ConfigError(problems)
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise _invalid(source, exc) from None
    finally:
        loader.dispose()


def _bracket_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` in ``text`` (brackets inside strings count too:
    a bound, not a parse)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def kind(value: Any) -> str:
    """How a YAML value reads to a person: a list, a string, a number, ..."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"


def _invalid(source: str, exc: yaml.YAMLError) -> ConfigError:
    return ConfigError([f"{source}: not valid YAML{_where(exc)}: {_problem(exc)}"])


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" (line {mark.line + 1})" if mark else ""


def _problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or b"\0")
        return f"character #x{char:04x} at offset {exc.position} is not allowed (allowed: printable text)"
    text = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    return " ".join(str(text).split())


def _check(root: yaml.Node, source: str) -> list[str]:
    """Duplicate keys, self-referring aliases, alias bombs, absurd nesting and numbers."""
    problems: list[str] = []
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def walk(node: yaml.Node, key: str, depth: int) -> int:
        ident = id(node)
        if ident in sizes:  # an alias to a value already counted
            return sizes[ident]
        if ident in open_nodes:
            raise _Stop(f"{source}: {key or 'document'}: refers to itself through an alias (allowed: aliases to finished values)")
        if depth > MAX_DEPTH:
            raise _Stop(f"{source}: {key or 'document'}: nested too deeply (allowed: at most {MAX_DEPTH} levels)")
        open_nodes.add(ident)
        size = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    size += walk(value_node, key, depth + 1)
                    continue
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                child = _join(key, name, depth)
                line = key_node.start_mark.line + 1
                if name in seen:
                    problems.append(f"{source}: {child}: duplicate key on lines {seen[name]} and {line} "
                                    "(allowed: each key once, as Pulumi requires)")
                seen.setdefault(name, line)
                size += walk(value_node, child, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                size += walk(item, f"{key}[{index}]", depth + 1)
        elif node.tag == _INT_TAG and len(node.value) > MAX_DIGITS:
            problems.append(f"{source}: {key}: number with {len(node.value)} digits (allowed: at most {MAX_DIGITS})")
        open_nodes.discard(ident)
        sizes[ident] = size
        if size > MAX_VALUES:
            raise _Stop(f"{source}: {key or 'document'}: expands to more than {MAX_VALUES} values through aliases "
                        f"(allowed: at most {MAX_VALUES})")
        return size

    try:
        walk(root, "", 0)
    except _Stop as stop:
        return [stop.line]
    return problems


def _join(parent: str, name: str, depth: int) -> str:
    """Error-line key names: ``config`` at the top, ``mlox:ssh`` inside it, then ``.field``."""
    if depth <= 1:  # the document's own keys, and the config block's namespace:key entries
        return name
    return f"{parent}.{name}"


class _Loader(yaml.SafeLoader):
    """The safe loader without YAML 1.1 timestamps: Pulumi passes config values as strings,
    and ``2026-02-30`` must not crash the reader."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


class _Stop(Exception):
    def __init__(self, line: str):
        super().__init__(line)
        self.line = line
