"""Configuration of ARIA's vision side: the SigLIP-shaped ViT (aria_train.model.vision) and the
cross-attention projector (aria_train.model.projector). Defaults are the paper's shapes:
SigLIP-SO400M (1152 wide, 27 layers, 16 heads, MLP 4304, patch 14, position grid 70x70 for
980 px) and a projector with 128 learned queries for a 490 px crop (35x35 = 1225 patches) and
256 for a 980 px crop (70x70 = 4900 patches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from aria_train.config import ConfigError, require_positive
from aria_train.config.presets import VISION_PRESETS


@dataclass
class VisionConfig:
    preset: str = "siglip-so400m"
    hidden_size: int = 1152
    num_layers: int = 27
    num_heads: int = 16
    intermediate_size: int = 4304
    patch_size: int = 14
    image_size: int = 980  # largest crop side; the position grid is (image_size // patch_size)^2
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    init_std: Optional[float] = None  # None = 1/sqrt(fan_in) per weight
    # A SigLIP / Idefics3 vision checkpoint (safetensors, HF layout) the ViT starts from when a
    # multimodal stage starts fresh; a resumed run's own checkpoint takes precedence.
    init_from: str = ""
    # none | layer: recompute each encoder layer in backward (keeps every layer's input) |
    # crops: recompute the ViT and projector for groups of `checkpoint_crops` crops (keeps only
    # the pixels; the only mode whose memory does not grow with ViT depth x crops: 64K context)
    activation_checkpointing: Literal["none", "layer", "crops"] = "none"
    checkpoint_crops: int = 8

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    def validate(self) -> "VisionConfig":
        require_positive(self, "vision", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                         "patch_size", "image_size", "num_channels", "checkpoint_crops")
        if self.hidden_size % self.num_heads != 0:
            raise ConfigError(f"vision.num_heads={self.num_heads} does not divide vision.hidden_size={self.hidden_size}")
        if self.image_size % self.patch_size != 0:
            raise ConfigError(f"vision.patch_size={self.patch_size} does not divide vision.image_size={self.image_size}")
        if self.layer_norm_eps <= 0:
            raise ConfigError(f"vision.layer_norm_eps={self.layer_norm_eps} must be positive")
        return self


@dataclass
class ProjectorConfig:
    # patches per crop (a square grid of side sqrt(key)) -> learned queries for that crop.
    patch_to_query: dict = field(default_factory=lambda: {1225: 128, 4900: 256})
    num_heads: Optional[int] = None  # None = vision.num_heads (as transformers' AriaProjector)
    layer_norm_eps: float = 1e-5  # nn.LayerNorm's default, which AriaProjector uses
    init_std: Optional[float] = None  # None = 1/sqrt(fan_in) per weight

    def __post_init__(self):
        # YAML / JSON give string keys.
        self.patch_to_query = {int(k): int(v) for k, v in self.patch_to_query.items()}

    @property
    def max_queries(self) -> int:
        return max(self.patch_to_query.values())

    def sides(self) -> dict[int, int]:
        """crop side in patches -> queries, e.g. {35: 128, 70: 256}."""
        return {math.isqrt(k): v for k, v in self.patch_to_query.items()}

    def validate(self, vision: Optional[VisionConfig] = None) -> "ProjectorConfig":
        if not self.patch_to_query:
            raise ConfigError("projector.patch_to_query is empty")
        for patches, queries in self.patch_to_query.items():
            side = math.isqrt(patches)
            if patches <= 0 or side * side != patches:
                raise ConfigError(f"projector.patch_to_query key {patches} is not a positive square number of patches")
            if queries <= 0:
                raise ConfigError(f"projector.patch_to_query[{patches}]={queries} must be positive")
            if vision is not None and side > vision.num_patches_per_side:
                raise ConfigError(
                    f"projector.patch_to_query key {patches} ({side}x{side} patches) exceeds the vision position "
                    f"grid {vision.num_patches_per_side}x{vision.num_patches_per_side}"
                )
        heads = self.num_heads if self.num_heads is not None else (vision.num_heads if vision is not None else None)
        if heads is not None:
            if heads <= 0:
                raise ConfigError(f"projector.num_heads={heads} must be positive")
            if vision is not None and vision.hidden_size % heads != 0:
                raise ConfigError(f"projector.num_heads={heads} does not divide vision.hidden_size={vision.hidden_size}")
        if self.layer_norm_eps <= 0:
            raise ConfigError(f"projector.layer_norm_eps={self.layer_norm_eps} must be positive")
        return self


def vision_preset(name: str) -> tuple[VisionConfig, ProjectorConfig]:
    if name not in VISION_PRESETS:
        raise ConfigError(f"vision preset {name!r} is not one of {', '.join(VISION_PRESETS)}")
    p = VISION_PRESETS[name]
    vision = VisionConfig(preset=name, **p["vision"]).validate()
    return vision, ProjectorConfig(**p["projector"]).validate(vision)
