"""Strict, typed reading of the settings a user hands in: spec files, ``--config`` files, the
entries of a run's ``config.json``.

ONE parser, :func:`parse`, turns a JSON/TOML table into a dataclass, driven by the field
annotations (``typing.get_type_hints``), so a field's type is written once, where the field is.
Supported annotations:

- ``str``; ``int`` (a bool or a float is not an int: ``12.0`` epochs is an error); ``float``
  (finite: no inf or nan; ints accepted, bools and strings not); ``bool``; ``X | None``;
- ``tuple[X, ...]`` (a list; a bare string is an error, not a list of characters),
  fixed tuples such as ``tuple[float, float]``, ``dict[str, X]``, nested dataclasses;
- ``Literal[...]``: the allowed choices (``Literal[SPLITS]`` spells them from a tuple);
- ``Annotated[X, marker, ...]``: bounds (``Ge(1)``, ``Gt(0)``, ``Le(1)``, ``Lt(1)``) and
  ``ONE_OR_MANY`` (a lone value is read as a one-item tuple).

Every error is one line that names the file, the dotted key, what was expected and what was
given: ``recipe.toml: key 'head.lr': expected a number > 0, got a string ('0.001')``. After the
fields, the class's own ``check()`` runs (checks across fields), and its errors name the file
too. :func:`validate` applies the same rules to a dataclass built in Python, :func:`dump` writes
one back as plain JSON-ready data, :func:`read_settings` reads a JSON or TOML file with syntax
errors reported at their line and column.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import operator
import types
from collections.abc import Mapping
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from .errors import SkinfeatError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class SchemaError(SkinfeatError, ValueError):
    """A settings value that does not fit its field; ``str()`` is the one-line message."""

    def __init__(self, detail: str, key: str | None = None, source: str | None = None):
        self.detail, self.key, self.source = detail, key, source
        where = f"key {key!r}: " if key else ""
        super().__init__(f"{source}: {where}{detail}" if source else where + detail)

    def within(self, source: str | None, prefix: str = "") -> SchemaError:
        """The same error (and class) as found in ``source``, under the key ``prefix``."""
        key = prefix + self.key if self.key else prefix.rstrip(".") or None
        return type(self)(self.detail, key, source or self.source)


@dataclasses.dataclass(frozen=True)
class Bound:
    """A limit on a number, used as an ``Annotated`` marker."""
    op: str
    limit: float

    def holds(self, x: float) -> bool:
        return _OPS[self.op](x, self.limit)

    def __str__(self) -> str:
        return f"{self.op} {self.limit:g}"


_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def Ge(limit: float) -> Bound:  # noqa: N802 (read as the math: Ge(1) is ">= 1")
    return Bound(">=", limit)


def Gt(limit: float) -> Bound:  # noqa: N802
    return Bound(">", limit)


def Le(limit: float) -> Bound:  # noqa: N802
    return Bound("<=", limit)


def Lt(limit: float) -> Bound:  # noqa: N802
    return Bound("<", limit)


ONE_OR_MANY = "ONE_OR_MANY"   # Annotated marker: a lone value stands for a one-item tuple


def parse(cls: type[T], data: Any, source: str, error: type[SchemaError] = SchemaError,
          at: str = "") -> T:
    """``data`` (a table from a file) as a ``cls``; ``at`` is the key the table sits under."""
    try:
        return _dataclass(cls, data, at + "." if at else "", source)
    except SchemaError as exc:
        raise error(exc.detail, exc.key, exc.source or source) from None


def validate(obj: Any, source: str | None = None, error: type[SchemaError] = SchemaError) -> dict:
    """The fields of a dataclass built in Python, checked as :func:`parse` checks a file and
    converted the same way (lists to tuples, ints to floats); raises ``error``."""
    try:
        return _fields(obj, "")
    except SchemaError as exc:
        raise error(exc.detail, exc.key, source) from None


def dump(obj: Any) -> Any:
    """A dataclass (or value) as plain JSON-ready data: tables, lists, numbers, strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: dump(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [dump(v) for v in obj]
    return obj


def read_settings(path: str | Path, error: type[SchemaError] = SchemaError) -> Any:
    """A settings file's contents: TOML for ``.toml``, else JSON. A syntax error names the file
    and its line and column; OSError (missing, unreadable) propagates."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})",
                    source=str(path)) from None
    if path.suffix.lower() == ".toml":
        import tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:   # its message ends "(at line L, column C)"
            raise error(f"not valid TOML: {exc}", source=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                    source=str(path)) from None


# ---------------------------------------------------------------- the parser
_HINTS: dict[type, dict[str, Any]] = {}   # a dataclass's field annotations, resolved once


def _hints(cls: type[DataclassInstance]) -> dict[str, Any]:
    if cls not in _HINTS:
        hints = get_type_hints(cls, include_extras=True)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def _dataclass(cls: type[T], data: Any, prefix: str, source: str | None) -> T:
    if not isinstance(data, Mapping):
        raise SchemaError(f"expected a table of keys, got {_given(data)}", prefix.rstrip(".")
                          or None)
    hints = _hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        table = f" in [{prefix.rstrip('.')}]" if prefix else ""
        raise SchemaError(f"unknown key(s) {', '.join(map(str, unknown))}{table}; known: "
                          f"{', '.join(hints)}")
    for f in dataclasses.fields(cls):
        if f.name not in data and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            raise SchemaError("required, but missing", prefix + f.name)
    values = {k: _value(hints[k], v, prefix + k, source) for k, v in data.items()}
    try:   # __post_init__ and check() test values across fields: name the file there too
        obj = cls(**values)
        check = getattr(obj, "check", None)
        if callable(check):
            check()
    except SchemaError as exc:
        raise exc.within(source, prefix) from None
    except (ValueError, TypeError) as exc:
        raise SchemaError(str(exc), prefix.rstrip(".") or None, source) from None
    return obj


def _fields(obj: Any, prefix: str) -> dict:
    hints = _hints(type(obj))
    return {k: _value(hint, getattr(obj, k), prefix + k, None) for k, hint in hints.items()}


def _value(hint: Any, v: Any, key: str, source: str | None) -> Any:
    """``v`` converted to ``hint``; a SchemaError naming ``key`` if it does not fit."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:   # a value checked by its own reader (a bundle's encoder, calibrator)
        return v
    if origin is Annotated:
        inner, marks = args[0], args[1:]
        one = ONE_OR_MANY in marks and v is not None and not isinstance(v, (list, tuple))
        try:
            out = _value(inner, [v] if one else v, key, source)
        except SchemaError as exc:
            raise _whole(exc, hint, v, key, force=one) from None
        bounds = [m for m in marks if isinstance(m, Bound)]
        if out is not None and not all(b.holds(out) for b in bounds):
            raise SchemaError(f"expected {_expected(hint)}, got {_given(v)}", key)
        return out
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"{key}: only X | None unions are supported, not {hint}")
        if v is None:
            raise SchemaError(f"expected {_expected(hint)}, got null", key)
        try:
            return _value(rest[0], v, key, source)
        except SchemaError as exc:
            raise _whole(exc, hint, v, key) from None
    if origin is Literal:
        if not any(v == a and type(v) is type(a) for a in args):
            raise SchemaError(f"expected {_expected(hint)}, got {_given(v)}", key)
        return v
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise SchemaError(f"expected {_expected(hint)}, got {_given(v)}", key)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], x, f"{key}[{i}]", source) for i, x in enumerate(v))
        if len(v) != len(args):
            raise SchemaError(f"expected {_expected(hint)}, got {_given(v)}", key)
        return tuple(_value(a, x, f"{key}[{i}]", source)
                     for i, (a, x) in enumerate(zip(args, v, strict=False)))
    if origin is dict:
        if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
            raise SchemaError(f"expected {_expected(hint)}, got {_given(v)}", key)
        return {k: _value(args[1], x, f"{key}.{k}", source) for k, x in v.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(v, hint):
            _fields(v, key + ".")
            return v
        return _dataclass(hint, v, key + ".", source)
    if hint is bool:
        ok = isinstance(v, bool)
    elif hint is int:   # numbers.Integral: numpy integers from Python callers are ints too
        ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    elif hint is float:
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool)
        if ok and not math.isfinite(v):   # inf and nan are valid TOML (and Python's JSON)
            raise SchemaError(f"expected a finite number, got {v}", key)
        v = float(v) if ok else v
    elif hint is str:
        ok = isinstance(v, str)
    else:
        raise TypeError(f"{key}: unsupported annotation {hint!r}")
    if not ok:
        raise SchemaError(f"expected {_expected(hint)}, got {_given(v)}", key)
    return v


def _whole(exc: SchemaError, hint: Any, v: Any, key: str, force: bool = False) -> SchemaError:
    """A type error about ``key`` itself, restated with the whole expectation ("an integer
    >= 1 or null", not "an integer"); errors deeper down, and inf or nan, keep their own."""
    if not force and (exc.key != key or exc.detail.startswith("expected a finite")):
        return exc
    return SchemaError(f"expected {_expected(hint)}, got {_given(v)}", key)


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _expected(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        bounds = " and ".join(str(m) for m in args[1:] if isinstance(m, Bound))
        one = " (or one value)" if ONE_OR_MANY in args[1:] else ""
        return _expected(args[0]) + (f" {bounds}" if bounds else "") + one
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _expected(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_plural(args[0])}"
    if origin is tuple:
        return f"a list of {len(args)} ({', '.join(_expected(a) for a in args)})"
    if origin is dict:
        return f"a table of {_plural(args[1])}"
    if dataclasses.is_dataclass(hint):
        return "a table of keys"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _plural(hint: Any) -> str:
    words = {str: "strings", int: "integers", float: "numbers", bool: "booleans", Any: "values"}
    return words.get(hint) or _expected(hint)


def _given(v: Any) -> str:
    """What a value is, as a reader of the file sees it: ``a string ('0.001')``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    kind = ("an integer" if isinstance(v, numbers.Integral) else
            "a number" if isinstance(v, numbers.Real) else
            "a string" if isinstance(v, str) else
            "a list" if isinstance(v, (list, tuple)) else
            "a table" if isinstance(v, Mapping) else type(v).__name__)
    text = repr(list(v) if isinstance(v, tuple) else v)
    return f"{kind} ({text if len(text) <= 40 else text[:37] + '...'})"
