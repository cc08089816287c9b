"""Build typed, frozen dataclasses from YAML mappings, with errors that name file, line and field.

A dataclass field's annotation gives its type (`int`, `float`, `bool`, `str`, `Literal[...]`,
`X | None`, `tuple[str, ...]`, a nested dataclass); `bounded(lo, hi)` metadata adds a range.
Unknown keys are errors with a did-you-mean suggestion.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from auditor.errors import AuditError, SpecError, error_at
from auditor.spec.yaml_source import LocatedDict, LocatedList
from auditor.suggest import did_you_mean


@dataclass(frozen=True)
class Where:
    """A position in a YAML file: the file, the line and the dotted field path.

    `lines` are the key lines of the mapping found here (set by `build`), so `child(key)`
    points at the key's own line.
    """

    path: Path
    line: int | None          # None for values given in Python (`auditor.audit`)
    field: str
    lines: typing.Mapping[str, int] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def label(self) -> str:
        """`file:line`, or the file alone when there is no line."""
        return self.path.name if self.line is None else f"{self.path.name}:{self.line}"

    def child(self, name: str | int, line: int | None = None) -> Where:
        joined = f"{self.field}[{name}]" if isinstance(name, int) else (
            f"{self.field}.{name}" if self.field else name)
        if line is None:
            line = self.lines.get(name, self.line) if isinstance(name, str) else self.line
        return Where(self.path, line, joined)

    def within(self, mapping: typing.Any) -> Where:
        """This position, remembering the key lines of `mapping` (a `LocatedDict`)."""
        return dataclasses.replace(self, lines=dict(getattr(mapping, "key_lines", {})))

    def error(self, message: str, fix: str | None = None, kind: type[AuditError] = SpecError) -> AuditError:
        """A `kind` error (a spec error unless told) at this position."""
        return error_at(kind, self, message, fix)


def bounded(lo: float | None = None, hi: float | None = None, *, default: Any = dataclasses.MISSING,
            help: str = "") -> Any:
    """A dataclass field whose numeric value must lie in [lo, hi] (either side optional)."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "help": help})


def where_field() -> Any:
    """A dataclass field that `build` fills with the `Where` of the mapping it came from."""
    return field(default=None, compare=False, repr=False, metadata={"internal": True})


def choice(names: typing.Any, *, default: Any = dataclasses.MISSING) -> Any:
    """A string field whose value must be one of `names` (a tuple, or an object with `.names`,
    such as a `Registry`: the spec then accepts exactly what the registry declares)."""
    return field(default=default, metadata={"choices": names})


def choices_of(meta: typing.Mapping[str, Any]) -> tuple[str, ...] | None:
    names = meta.get("choices")
    return None if names is None else tuple(getattr(names, "names", names))


def unknown_key_error(key: str, allowed: typing.Iterable[str], where: Where) -> SpecError:
    return where.error(f"unknown key '{key}'", fix=did_you_mean(key, sorted(allowed), "valid keys"))


def invalid_choice(value: Any, choices: typing.Sequence[Any], where: Where) -> SpecError:
    """`invalid value 'x'; expected one of: ...` with a did-you-mean fix."""
    listed = ", ".join(map(str, choices))
    return where.error(f"invalid value {value!r}; expected one of: {listed}",
                       fix=did_you_mean(str(value), [str(c) for c in choices]))


def describe(value: Any) -> str:
    kind = "list" if isinstance(value, list) else "mapping" if isinstance(value, dict) else (
        type(value).__name__)
    return f"{value!r} ({kind})" if not isinstance(value, (list, dict)) else kind


def expect_mapping(value: Any, where: Where) -> LocatedDict:
    if not isinstance(value, dict):
        raise where.error(f"expected a mapping, got {describe(value)}",
                          fix="write it as `key: value` lines indented under the field")
    if not isinstance(value, LocatedDict):
        located = LocatedDict(value)
        located.line = where.line
        return located
    return value


def build(cls: type, raw: Any, where: Where, *, exclude: typing.Collection[str] = ()) -> Any:
    """Validate `raw` (a YAML mapping, or None for all defaults) into dataclass `cls`.

    Keys named in `exclude` are skipped (the caller handles them). A `validate(where)` method
    on the dataclass, if any, checks rules that span several fields.
    """
    mapping = expect_mapping({} if raw is None else raw, where)
    where = where.within(mapping)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")}
    for key in mapping:
        if key not in fields and key not in exclude:
            raise unknown_key_error(key, list(fields) + list(exclude), where.child(key, mapping.line_of(key)))
    values: dict[str, Any] = {}
    if any(f.name == "where" for f in dataclasses.fields(cls)):
        values["where"] = where
    for name, f in fields.items():
        here = where.child(name, mapping.line_of(name))
        if name in mapping:
            values[name] = coerce(mapping[name], hints[name], here, f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.error(f"missing required key '{name}'",
                              fix=f"add `{name}:` to {where.field or 'the top level'}")
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate(where)
    return instance


def coerce(value: Any, hint: Any, where: Where, meta: typing.Mapping[str, Any] = types.MappingProxyType({})) -> Any:
    """Check `value` against the type `hint` (and range metadata); return the typed value."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for option in inner:
            try:
                return coerce(value, option, where, meta)
            except SpecError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        if isinstance(value, bool) and str(value).lower() in args:
            return str(value).lower()  # YAML reads a bare `true` as a boolean; the choice is the word
        if value in args and not isinstance(value, bool):
            return value
        raise invalid_choice(value, args, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise where.error(f"expected a list, got {describe(value)}", fix="write it as `[a, b]`")
        item_hint = args[0]
        lines = value.item_lines if isinstance(value, LocatedList) else []
        return tuple(coerce(v, item_hint, where.child(i, lines[i] if i < len(lines) else None), meta)
                     for i, v in enumerate(value))
    if origin is dict or hint is dict:
        return dict(expect_mapping(value, where))
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    return _scalar(value, hint, where, meta)


def _scalar(value: Any, hint: Any, where: Where, meta: typing.Mapping[str, Any]) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise where.error(f"expected true or false, got {describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(f"expected an integer, got {describe(value)}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where.error(f"expected a number, got {describe(value)}")
        value = float(value)
        if value != value:
            raise where.error("expected a number, got NaN")
    elif hint is str:
        if not isinstance(value, str):
            raise where.error(f"expected a string, got {describe(value)}", fix="quote the value")
        choices = choices_of(meta)
        if choices is not None and value not in choices:
            raise invalid_choice(value, choices, where)
        return value
    else:
        raise TypeError(f"schema type {hint!r} is not supported")
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise where.error(f"{value} is out of range {span}",
                          fix=f"choose a value in {span}" + (f" ({meta['help']})" if meta.get("help") else ""))
    return value
