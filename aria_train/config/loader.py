"""Builds a validated `RunConfig` from a stage's YAML, a model preset and command-line overrides.

Order of precedence, lowest first: dataclass defaults < model preset < YAML < `--set key=value`
and Megatron-style flags. Unknown keys and values of the wrong type fail with one line naming
the key.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

from aria_train.config.errors import ConfigError
from aria_train.config.presets import DEFAULT_VISION_PRESET, MODEL_PRESETS
from aria_train.config.schema import RunConfig
from aria_train.config.vision import VISION_PRESETS

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE_DIRS = {1: "stage1_lang", 2: "stage2_mm", 3: "stage3_longctx", 4: "stage4_post"}


def stage_config_path(stage: int) -> Path:
    if stage not in STAGE_DIRS:
        raise ConfigError(f"--stage {stage} is not one of {sorted(STAGE_DIRS)}")
    return REPO_ROOT / "pipelines" / STAGE_DIRS[stage] / "config.yaml"


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


def build_config(
    stage: int,
    config_file: Optional[Path] = None,
    preset: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
    world_size: Optional[int] = None,
) -> RunConfig:
    """The resolved config of a run: defaults, then preset, then YAML, then overrides.

    `overrides` maps dotted keys (`model.moe.top_k`) to values, already parsed or as strings.
    """
    raw = load_yaml(config_file or stage_config_path(stage))
    raw.setdefault("stage", stage)
    overrides = dict(overrides or {})
    preset = preset or overrides.pop("model.preset", None) or raw.get("model", {}).get("preset", "tiny")
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"model.preset={preset!r} is not one of {', '.join(MODEL_PRESETS)}")
    vision_name = overrides.pop("vision.preset", None) or raw.get("vision", {}).get("preset")
    vision_name = vision_name or DEFAULT_VISION_PRESET[preset]
    if vision_name not in VISION_PRESETS:
        raise ConfigError(f"vision.preset={vision_name!r} is not one of {', '.join(VISION_PRESETS)}")
    merged: dict = {
        "model": _deep_copy(MODEL_PRESETS[preset]),
        "vision": _deep_copy(VISION_PRESETS[vision_name]["vision"]),
        "projector": _deep_copy(VISION_PRESETS[vision_name]["projector"]),
    }
    _deep_merge(merged, raw)
    merged["model"]["preset"] = preset
    merged["vision"]["preset"] = vision_name
    for key, value in overrides.items():
        _set_dotted(merged, key, value)
    config = from_dict(RunConfig, merged, prefix="")
    return config.validate(world_size)


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
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def _coerce(hint, value, key: str):
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, prefix=key + ".")
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(args[0], value, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key {key} expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key} expects an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key {key} expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key} expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key} expects a string, got {value!r}")
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"config key {key} expects a mapping, got {value!r}")
    if hint is list or origin is list:
        if isinstance(value, str):
            return value.split()
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        raise ConfigError(f"config key {key} expects a list, got {value!r}")
    raise ConfigError(f"config key {key} has an unsupported type {hint}")


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"unknown config key {key}")
        node = child
    node[parts[-1]] = value


def _deep_merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _deep_copy(tree):
    if isinstance(tree, dict):
        return {k: _deep_copy(v) for k, v in tree.items()}
    return tree
