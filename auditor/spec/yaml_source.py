"""Safe YAML loading that remembers the line of every mapping key and list item.

PyYAML's safe constructors build plain values; ours build `LocatedDict` / `LocatedList`
that also carry 1-based line numbers, so validation errors can point at `file:line`.
Keys are taken verbatim as strings: `on:` stays `"on"` instead of YAML 1.1's `True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from auditor.errors import SpecError


class LocatedDict(dict):
    """A mapping from YAML with `line` (of the mapping) and `key_lines[key]`."""

    line: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[str, int] = {}

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


def as_located(mapping: dict, line: int) -> LocatedDict:
    """`mapping` (and the mappings in it) as `LocatedDict`s: a Python API mapping has no lines of
    its own, so every key is placed at `line` (its argument's)."""
    if isinstance(mapping, LocatedDict):
        return mapping
    located = LocatedDict({k: as_located(v, line) if isinstance(v, dict) else v for k, v in mapping.items()})
    located.line = line
    return located


class LocatedList(list):
    """A sequence from YAML with `line` (of the sequence) and `item_lines[i]`."""

    line: int = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines: list[int] = []

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences remember their lines."""

    def __init__(self, stream: Any, path: Path) -> None:
        super().__init__(stream)
        self.path = path


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    result = LocatedDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise SpecError("mapping keys must be plain names", path=loader.path, line=line)
        key = str(key_node.value)
        if key in result:
            raise SpecError(
                f"duplicate key '{key}' (first on line {result.key_lines[key]})",
                path=loader.path, line=line, fix="keep one of the two entries")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    result = LocatedList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def decoded(data: bytes) -> str:
    """UTF-8 with or without a BOM (Windows editors write one); a file that is not UTF-8 is read
    as Latin-1, the usual encoding of a Windows editor's accented comment."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def load_yaml(path: Path) -> Any:
    """Parse `path` with the safe loader; syntax errors become `SpecError` with file:line."""
    try:
        text = decoded(path.read_bytes())
    except FileNotFoundError:
        raise SpecError("file not found", path=path, fix="check the path") from None
    except OSError as exc:
        raise SpecError(f"cannot read file: {exc}", path=path) from None
    loader = _Loader(text, path)
    try:
        return loader.get_single_data()
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SpecError(f"unsupported YAML tag: {exc.problem}", path=path, line=mark.line + 1 if mark else None,
                        fix="audits are read with the safe loader; write plain values, lists and mappings") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise SpecError(f"YAML syntax error: {problem}", path=path, line=line,
                        fix="fix the indentation or quoting at that line") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", path=path) from None
    finally:
        loader.dispose()
