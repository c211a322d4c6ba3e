"""Values read from YAML or the command line as their annotated types (`coerce`), with errors that name the key and
the type as a user reads it."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import yaml

from arlm.errors import ArlmError


def spelled(tp: Any) -> str:
    """A type annotation as a user reads it: "true or false or 'never'", not typing.Union[bool, Literal['never']]."""
    parts, origin = typing.get_args(tp), typing.get_origin(tp)
    if origin is typing.Literal or origin in (typing.Union, types.UnionType):
        return " or ".join(repr(a) if origin is typing.Literal else spelled(a) for a in parts)
    return {bool: "true or false", type(None): "none"}.get(tp) or getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise ArlmError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(value, option, name)
            except ArlmError:
                continue
        raise ArlmError(f"{name}: cannot read {value!r} as {spelled(tp)}")
    if origin is list:
        if isinstance(value, str):  # one item, or several as on the command line: '[attn, mlp]'
            several = value.startswith("[") and value.endswith("]") and "," in value
            value = yaml.safe_load(value) if several else [value] if value else []
        if not isinstance(value, list):
            raise ArlmError(f"{name}: expected a list, got {value!r}")
        return [coerce(v, typing.get_args(tp)[0], name) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ArlmError(f"{name}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ArlmError(f"{name}: expected a number, got {value!r}")
        try:
            number = float(value) if tp is float else _to_int(value)
        except (TypeError, ValueError):
            raise ArlmError(f"{name}: expected {tp.__name__}, got {value!r}") from None
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ArlmError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if origin is Literal:
        return _literal(value, typing.get_args(tp), name)
    if tp is typing.Any:
        return value
    raise ArlmError(f"{name}: unsupported type {tp}")


def _literal(value: Any, allowed: tuple, name: str) -> Any:
    """The allowed value that value reads as (each read with its own type), or ArlmError naming the choices."""
    for option in allowed:
        try:
            if coerce(value, type(option), name) == option:
                return option
        except ArlmError:
            continue
    raise ArlmError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    as_float = float(value)
    if not as_float.is_integer():
        raise ValueError(value)
    return int(as_float)
