"""Typed dataclass fields: declared ranges and choices, checked assignment from (nested) mappings, dotted overrides.

A numeric field declares the values it allows with :func:`ranged`, a name field its registry with :func:`choice`;
:func:`check_fields` checks a dataclass against them. :func:`apply_dict` sets fields from a (nested) mapping, each
value checked against its annotated type; :func:`parse_override` and :func:`override_dict` read command-line style
``KEY=VALUE`` overrides. Every problem raises :class:`ConfigError` naming the key and what it allows. The schemas and
loaders built on this are :mod:`vlm.config`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from vlm.errors import VLMError


class ConfigError(VLMError, ValueError):
    """A configuration key, value or preset is invalid; the message names it."""


@dataclass(frozen=True)
class Range:
    """The values a numeric field allows: bounds that are None are open-ended."""

    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    lt: float | None = None  # value < lt

    def __contains__(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        lo = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else "(-inf"
        hi = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else "inf)"
        return f"{lo}, {hi}"


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> Any:
    """A numeric dataclass field with the range it allows, checked when a config is loaded (e.g.
    ``lr: float = ranged(1e-4, gt=0)``). Tuples of numbers (AdamW betas) apply the range to each element."""
    return field(default=default, metadata={"range": Range(ge=ge, gt=gt, le=le, lt=lt)})


def choice(default: str, choices: typing.Iterable[str]) -> Any:
    """A string field whose value must be one of ``choices`` (a registry's names), checked when a config is loaded."""
    return field(default=default, metadata={"choices": tuple(choices)})


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of dataclass ``obj`` (recursively) against its declared range or choices.

    Raises:
        ConfigError: naming the key (``prefix`` + field name) and the allowed range or names.
    """
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_fields(value, prefix=f"{key}.")
            continue
        bounds = f.metadata.get("range")
        if bounds is not None and value is not None:
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, float) and not math.isfinite(v) or v not in bounds:
                    raise ConfigError(f"{key}: expected a number in {bounds}, got {value!r}")
        names = f.metadata.get("choices")
        if names is not None and value not in names:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, names))}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Typed assignment


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to the annotated type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, f"{key} key"): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple and typing.get_args(tp)[-1] is Ellipsis:  # tuple[X, ...]: any length
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def apply_dict(obj: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Set fields of dataclass ``obj`` from a (nested) dict, type-checked; returns ``obj``.

    Raises:
        ConfigError: for an unknown key (listing the allowed ones) or a value of the wrong type.
    """
    types_ = _field_types(obj)
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in types_:
            raise ConfigError(f"unknown config key {full!r}; allowed keys: {', '.join(sorted(types_))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of {type(current).__name__} fields, got {value!r}")
            apply_dict(current, value, prefix=f"{full}.")
        elif isinstance(current, dict) and isinstance(value, dict) and typing.get_origin(types_[key]) is dict:
            setattr(obj, key, {**current, **_coerce(value, types_[key], full)})  # a mapping field: merged by key
        else:
            setattr(obj, key, _coerce(value, types_[key], full))
    return obj


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a.b=value"`` into the dotted key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, for example model.x_layers=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key, value


def override_dict(text: str) -> dict[str, Any]:
    """``"a.b=3"`` as the nested mapping ``{"a": {"b": 3}}`` (the value parsed as YAML)."""
    key, value = parse_override(text)
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested
