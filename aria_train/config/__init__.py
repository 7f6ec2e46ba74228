"""The lowest layer: the error type and the generic machinery that turns YAML, presets and
command-line overrides into typed dataclasses. Each component defines its own config dataclass
next to its code (aria_train.moe.config, aria_train.model.config, ...); the run's composed config
is aria_train.train.run_config.RunConfig."""

from aria_train.config.errors import ConfigError
from aria_train.config.loader import from_dict, load_yaml, require_positive, resolve, to_dict

__all__ = ["ConfigError", "from_dict", "load_yaml", "require_positive", "resolve", "to_dict"]
