"""Class names rendered into text for the contrastive objective on labelled data (and for
zero-shot classification): each sample's text is a template drawn from a list, CLIP-style
("a photo of a {}."), or the bare class name when the list is empty.

The draw for a sample is a pure function of (seed, pair, epoch, position in the epoch), so a
resumed run renders the same texts. Templates are ours, in the spirit of CLIP's ImageNet prompt
ensemble (Radford et al. 2021).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from aria_train.config import ConfigError

CLIP_STYLE_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a rendering of a {}.",
    "a small {}.",
    "a large {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of the {}.",
    "itap of a {}.",
    "a plain {}.",
    "there is a {} in the picture.",
)


def check_templates(templates: Sequence[str], key: str = "encoder.prompts") -> None:
    for template in templates:
        if template.count("{}") != 1:
            raise ConfigError(f"{key}: template {template!r} must hold exactly one {{}} (the class name)")


class PromptRenderer:
    def __init__(self, templates: Sequence[str], seed: int = 0):
        check_templates(templates)
        self.templates = list(templates)
        self.seed = int(seed)

    def render(self, class_name: str, *key: int) -> str:
        """`class_name` in the template drawn for `key` (e.g. pair, epoch, position)."""
        if not self.templates:
            return class_name
        choice = int(np.random.default_rng([self.seed, *[int(k) for k in key]]).integers(len(self.templates)))
        return self.templates[choice].format(class_name)

    def all(self, class_name: str) -> list[str]:
        """Every rendering of a class (zero-shot classification averages their embeddings)."""
        return [t.format(class_name) for t in self.templates] or [class_name]
