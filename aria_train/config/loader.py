"""Typed dataclasses from nested dicts, and the layering of defaults, presets, YAML and overrides.

Nothing here knows which dataclasses a run has: callers pass the root class (a run's composed
config lives in aria_train.train.run_config). Every key is checked against the dataclass fields
and every value against the field's type, including `Literal[...]` choices, `Optional[...]` and
`list[...]`; the error is one line naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from aria_train.config.errors import ConfigError


def load_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def resolve(root_cls, layers: list[dict], overrides: dict[str, Any], prefix: str = ""):
    """Builds `root_cls` from `layers` (nested dicts, later ones win, merged key by key) and
    then `overrides` (dotted keys such as `model.moe.top_k`, values parsed or as strings)."""
    merged: dict = {}
    for layer in layers:
        deep_merge(merged, deep_copy(layer))
    for key, value in overrides.items():
        set_dotted(merged, key, value)
    return from_dict(root_cls, merged, prefix=prefix)


def from_dict(cls, data: dict, prefix: str):
    """Builds dataclass `cls` from a nested dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown config key {prefix}{key}")
        kwargs[key] = coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def coerce(hint, value, key: str):
    """`value` as type `hint`, or a ConfigError naming `key`."""
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, prefix=key + ".")
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, str) and value in choices:
            return value
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}")
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) < len(typing.get_args(hint)):  # Optional[X]
            if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
                return None
        return _coerce_union(args, value, key)
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"config key {key} expects a mapping, got {value!r}")
    if hint is list or origin is list:
        if isinstance(value, str):
            value = value.split()
        if isinstance(value, (list, tuple)):
            item = (typing.get_args(hint) or (str,))[0]
            return [coerce(item, v, key) for v in value]
        raise ConfigError(f"config key {key} expects a list, got {value!r}")
    if hint in _SCALARS:
        return _SCALARS[hint](value, key)
    raise ConfigError(f"config key {key} has an unsupported type {hint}")


def _coerce_union(alternatives: list, value, key: str):
    """Union[A, B, ...]: the first alternative that takes the value, tried in order (so
    `Union[Literal["all"], list[int]]` reads "all" as the choice and "1 3" or [1, 3] as the list);
    the error names every alternative."""
    if len(alternatives) == 1:
        return coerce(alternatives[0], value, key)
    for hint in alternatives:
        try:
            return coerce(hint, value, key)
        except ConfigError:
            continue
    raise ConfigError(f"config key {key}={value!r} is none of: {', '.join(_describe(h) for h in alternatives)}")


def _describe(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) is list:
        return f"a list of {(typing.get_args(hint) or (str,))[0].__name__}"
    return getattr(hint, "__name__", str(hint))


def _to_bool(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ConfigError(f"config key {key} expects true or false, got {value!r}")


def _to_int(value, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError:
            pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"config key {key} expects an integer, got {value!r}")


def _to_float(value, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"config key {key} expects a number, got {value!r}")


def _to_str(value, key: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"config key {key} expects a string, got {value!r}")


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def require_positive(section, prefix: str, *names: str) -> None:
    """ConfigError naming the first of `names` that is not > 0."""
    for name in names:
        value = getattr(section, name)
        if value <= 0:
            raise ConfigError(f"{prefix}.{name}={value} must be positive")


def set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"unknown config key {key}")
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value


def deep_copy(tree):
    if isinstance(tree, dict):
        return {k: deep_copy(v) for k, v in tree.items()}
    return tree
