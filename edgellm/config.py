"""Validated dataclass configs: build from dicts (YAML) with typed errors that name the field and suggest fixes.

Every stage's config is a dataclass whose fields carry the defaults (written once, there). `from_dict` refuses
unknown keys (suggesting the closest valid one), wrong types and values outside `Literal[...]` choices; a
dataclass may add its own range checks in `validate()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from edgellm.errors import ConfigError

__all__ = ["from_dict", "to_dict", "suggest", "check_range"]

T = TypeVar("T")


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """'; did you mean 'x'?' for the closest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_range(where: str, value: float | int | None, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ConfigError when `value` is outside [low, high] (or the open ends asked for)."""
    if value is None:
        return
    bad = (low is not None and (value < low or (low_open and value == low))) or (
        high is not None and (value > high or (high_open and value == high))
    )
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{where} = {value!r} is outside {lo}{low if low is not None else '-inf'}, "
                          f"{high if high is not None else 'inf'}{hi}")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking keys and types; `where` names the position for errors."""
    where = where or cls.__name__
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of options, not {type(data).__name__} {data!r:.60}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key {key!r}{suggest(str(key), fields)} (valid keys: {', '.join(fields)})"
            )
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field missing
        missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
        raise ConfigError(f"{where}: missing required key(s) {missing}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    return obj


def jsonable(value: Any) -> Any:
    """`json.dumps(default=...)` for what JSON lacks: arrays / numpy scalars as lists / numbers, the rest as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain dicts / lists, for YAML, JSON and hashing."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error is the precise one
            return _convert(options[0], value, where)
        for arg in options:
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _convert(arg, value, where)
            try:
                return _convert(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {_type_name(tp)}, not {type(value).__name__} {value!r:.60}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where} = {value!r} is not one of {list(choices)}{suggest(str(value), map(str, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be {_type_name(tp)}, not {type(value).__name__} {value!r:.60}")
        (inner, *_) = get_args(tp) or (Any,)
        return [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, not {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r:.60}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, not {type(value).__name__} {value!r:.60}")
        if not -(2**63) <= value < 2**63:
            raise ConfigError(f"{where} does not fit in 64 bits (an integer of {value.bit_length()} bits)")
        return value
    if tp is float:
        number = None
        if isinstance(value, str):  # YAML reads 5e-5 as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            with contextlib.suppress(OverflowError):  # an int past 1.8e308
                number = float(value)
            if number is None:
                raise ConfigError(f"{where} is too large for a number (an integer of {value.bit_length()} bits)")
        if number is None:
            raise ConfigError(f"{where} must be a number, not {type(value).__name__} {value!r:.60}")
        if not math.isfinite(number):
            raise ConfigError(f"{where} = {value!r:.60} is not a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, not {type(value).__name__} {value!r:.60}")
        return value
    return value
