"""Build typed dataclasses from plain JSON/YAML data, with errors that name the key path.

One converter serves the campaign YAML and every record of the state tree, so a bad value
anywhere is reported the same way: where it is (file and key path) and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Literal, Union


class SchemaError(ValueError):
    """A document does not match its schema: `key_path` says where, `expected` what should be there."""

    def __init__(self, key_path: str, expected: str, got: Any = dataclasses.MISSING, source: str = ""):
        self.key_path = key_path or "<root>"
        self.expected = expected
        self.got = got
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.source}: " if self.source else ""
        got = "" if self.got is dataclasses.MISSING else f" (got {_describe(self.got)})"
        return f"{where}{self.key_path}: expected {self.expected}{got}"

    def with_source(self, source: str) -> "SchemaError":
        return SchemaError(self.key_path, self.expected, self.got, source)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(item)}"
    if origin is dict:
        _, value = typing.get_args(tp) or (str, Any)
        return f"a mapping of {_type_name(value)}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false", Any: "any value"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def from_data(tp: Any, data: Any, path: str = "") -> Any:
    """Convert `data` to type `tp`, checking every field; raise SchemaError at the first mismatch."""
    origin = typing.get_origin(tp)
    if tp is Any:
        _check_finite(data, path)
        return data
    if tp is type(None):
        if data is not None:
            raise SchemaError(path, "null", data)
        return None
    if origin is Literal:
        if data not in typing.get_args(tp):
            raise SchemaError(path, _type_name(tp), data)
        return data
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return from_data(arg, data, path)
            except SchemaError as exc:
                errors.append(exc)
        deepest = max(errors, key=lambda e: len(e.key_path))
        if deepest.key_path != (path or "<root>"):
            raise deepest
        raise SchemaError(path, _type_name(tp), data)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(data, list):
            raise SchemaError(path, _type_name(tp), data)
        return [from_data(item, v, _join(path, i)) for i, v in enumerate(data)]
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp) or (str, Any)
        if not isinstance(data, dict):
            raise SchemaError(path, _type_name(tp), data)
        out = {}
        for k, v in data.items():
            if key_tp is str and not isinstance(k, str):
                raise SchemaError(_join(path, k), "a string key", k)
            out[k] = from_data(value_tp, v, _join(path, k))
        return out
    if dataclasses.is_dataclass(tp):
        return _dataclass_from_data(tp, data, path)
    if tp is bool:
        if not isinstance(data, bool):
            raise SchemaError(path, "true or false", data)
        return data
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise SchemaError(path, "an integer", data)
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise SchemaError(path, "a finite number", data)
        try:
            value = float(data)
        except OverflowError:  # an integer beyond any float
            value = math.inf
        if not math.isfinite(value):
            raise SchemaError(path, "a finite number", data)
        return value
    if tp is str:
        if not isinstance(data, str):
            raise SchemaError(path, "a string", data)
        return data
    raise TypeError(f"typed.from_data: unsupported type {tp!r} at {path}")


def _check_finite(data: Any, path: str) -> None:
    """Free-form data (a recipe, a trace detail) holds finite numbers only: JSON has no NaN or infinity."""
    if isinstance(data, float) and not math.isfinite(data):
        raise SchemaError(path, "a finite number", data)
    if isinstance(data, dict):
        for key, value in data.items():
            _check_finite(value, _join(path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _check_finite(value, _join(path, i))


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """A record class's resolved field types, once: resolving string annotations costs a compile per
    field, and the daemon reads every candidate's records on every poll."""
    return typing.get_type_hints(cls)


def _dataclass_from_data(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise SchemaError(path, _type_name(cls), data)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise SchemaError(_join(path, key), f"no such key (known keys: {known})")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = from_data(hints[name], data[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SchemaError(_join(path, name), f"{_type_name(hints[name])} (required key is missing)")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except SchemaError as exc:
            if exc.key_path == "<root>" or not path:
                raise
            raise SchemaError(_join(path, exc.key_path), exc.expected, exc.got) from None
    return obj


def to_data(obj: Any) -> Any:
    """The plain-JSON form of a dataclass tree (the inverse of from_data)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(v) for v in obj]
    return obj
