"""Configuration of stage 0, encoder pretraining by alternating gradient descent (`encoder.*`):
the text tower, the contrastive temperature, and what to train on (datasets, pairs, schedule,
prompts). The ViT is `vision.*` as in stage 2, with whatever options that config has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from aria_train.config import ConfigError
from aria_train.data.encoder.config import EncoderDatasetConfig, PairConfig, validate_pairs
from aria_train.data.encoder.prompts import CLIP_STYLE_TEMPLATES, check_templates
from aria_train.model.text_encoder import TextEncoderConfig


def _demo_datasets() -> list:
    return [EncoderDatasetConfig(name="shapes", kind="labelled", eval_samples=240),
            EncoderDatasetConfig(name="captions", kind="image_text", eval_samples=240)]


def _demo_pairs() -> list:
    return [PairConfig("shapes", "softmax", 1.0, 32), PairConfig("shapes", "nce", 1.0, 32),
            PairConfig("captions", "nce", 2.0, 32)]


@dataclass
class EncoderConfig:
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    init_temperature: float = 0.07  # CLIP's: logit scale starts at log(1 / 0.07)
    max_logit_scale: float = 100.0  # CLIP's clamp of exp(logit_scale)
    # weighted_round_robin (deterministic) | sampled (seeded draws by weight); see
    # aria_train/data/encoder/schedule.py
    schedule: Literal["weighted_round_robin", "sampled"] = "weighted_round_robin"
    # Templates for class names ("{}" = the name), one drawn per sample; [] = the bare name.
    prompts: list[str] = field(default_factory=lambda: list(CLIP_STYLE_TEMPLATES))
    datasets: list[EncoderDatasetConfig] = field(default_factory=_demo_datasets)
    pairs: list[PairConfig] = field(default_factory=_demo_pairs)
    eval_batch_size: int = 64  # images / texts per forward in the held-out evaluation

    def validate(self, world_size: Optional[int] = None) -> "EncoderConfig":
        self.text.validate()
        if not (self.init_temperature > 0 and self.max_logit_scale >= 1.0):
            raise ConfigError("encoder.init_temperature must be positive and encoder.max_logit_scale >= 1")
        if 1.0 / self.init_temperature > self.max_logit_scale:
            raise ConfigError(f"encoder.init_temperature={self.init_temperature} starts above "
                              f"encoder.max_logit_scale={self.max_logit_scale}")
        if self.eval_batch_size <= 0:
            raise ConfigError(f"encoder.eval_batch_size={self.eval_batch_size} must be positive")
        check_templates(self.prompts)
        validate_pairs(self.datasets, self.pairs, world_size)
        return self
