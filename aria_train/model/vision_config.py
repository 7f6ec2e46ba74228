"""Configuration of ARIA's vision side: the SigLIP-shaped ViT (aria_train.model.vision) and the
cross-attention projector (aria_train.model.projector). Defaults are the paper's shapes:
SigLIP-SO400M (1152 wide, 27 layers, 16 heads, MLP 4304, patch 14, position grid 70x70 for
980 px) and a projector with 128 learned queries for a 490 px crop (35x35 = 1225 patches) and
256 for a 980 px crop (70x70 = 4900 patches).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from aria_train.config import ConfigError, require_positive
from aria_train.config.presets import VISION_PRESETS
from aria_train.model.qk_norm import QKNorm
from aria_train.moe.config import MoEConfig, RouterKind

# Which encoder layers get the MoE MLP: the last half (IMP's and V-MoE's choice: layers
# L - L//2 .. L-1, i.e. the last floor(L/2)), every other layer (1, 3, 5, ...), all, or a list.
VisionMoELayers = Union[Literal["last_half", "every_other", "all"], list[int]]


@dataclass
class VisionMoEConfig(MoEConfig):
    """`vision.moe.*`: routed experts in the ViT's MLP blocks (IMP). The MoE layer of
    aria_train.moe with the encoder's defaults: off (num_experts 0), expert choice (top_k is then
    the default capacity factor c), no shared experts, experts as wide as the dense MLP."""

    num_experts: int = 0  # 0 = a dense ViT
    top_k: int = 1
    num_shared_experts: int = 0
    expert_ffn_size: int = 0  # 0 = vision.intermediate_size
    balance_group_size: int = 1
    router: RouterKind = "expert_choice"
    layers: VisionMoELayers = "last_half"

    @property
    def enabled(self) -> bool:
        return self.num_experts > 0

    def moe_layers(self, num_layers: int, prefix: str = "vision.moe") -> list[int]:
        """The encoder layers with a MoE MLP (ascending); [] when off."""
        if not self.enabled:
            return []
        if self.layers == "last_half":
            return list(range(num_layers - num_layers // 2, num_layers))
        if self.layers == "every_other":
            return list(range(1, num_layers, 2))
        if self.layers == "all":
            return list(range(num_layers))
        chosen = sorted(set(self.layers))
        if len(chosen) != len(self.layers) or any(not 0 <= i < num_layers for i in chosen):
            raise ConfigError(f"{prefix}.layers={self.layers} must be distinct layer numbers in [0, {num_layers})")
        return chosen

    def check(self, num_layers: int, prefix: str = "vision.moe") -> None:
        if not self.enabled:
            if self.num_experts < 0:
                raise ConfigError(f"{prefix}.num_experts={self.num_experts} must be >= 0 (0 = no MoE)")
            return
        defaults = MoEConfig()
        for name in ("layer_freq", "first_k_dense", "dense_ffn_size"):
            if getattr(self, name) != getattr(defaults, name):
                raise ConfigError(f"{prefix}.{name} is the decoder's placement; the encoder's is {prefix}.layers")
        if self.expert_ffn_size < 0:
            raise ConfigError(f"{prefix}.expert_ffn_size={self.expert_ffn_size} must be >= 0 (0 = the dense MLP width)")
        dataclasses.replace(self, expert_ffn_size=max(self.expert_ffn_size, 1)).validate(prefix)
        self.moe_layers(num_layers, prefix)

    def layer_config(self, intermediate_size: int) -> "VisionMoEConfig":
        """The config one MoE layer is built from (expert width resolved)."""
        return dataclasses.replace(self, expert_ffn_size=self.expert_ffn_size or intermediate_size)


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
    qk_norm: QKNorm = "none"  # none | layernorm | rmsnorm on each head's q and k (aria_train.model.qk_norm)
    moe: VisionMoEConfig = field(default_factory=VisionMoEConfig)
    # 2d: Conv2d patches (ARIA). tubelet: a Conv3d over tubelet_frames x patch_size x patch_size
    # (IMP: 4 x 16 x 16) for videos of up to max_frames frames; an image is a one-frame video
    # repeated tubelet_frames times (aria_train.model.vision_embeddings).
    patch: Literal["2d", "tubelet"] = "2d"
    tubelet_frames: int = 4
    max_frames: int = 16
    # bucketed: one learned (image_size/patch)^2 table, Idefics3's bucketing (ARIA, HF parity).
    # factorized: the sum of a time, a height and a width table, with IMP's dilated spatial
    # positions (aria_train.model.vision_positions); tubelets need it.
    position_embedding: Literal["bucketed", "factorized"] = "bucketed"

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
        self.moe.check(self.num_layers)
        if self.activation_checkpointing == "crops" and self.moe_layers:
            raise ConfigError("vision.activation_checkpointing=crops with vision.moe experts: a recompute per group of "
                              "crops would run the expert all-to-alls a different number of times on each rank; use layer")
        if self.patch == "tubelet":
            require_positive(self, "vision", "tubelet_frames", "max_frames")
            if self.position_embedding != "factorized":
                raise ConfigError("vision.patch=tubelet needs vision.position_embedding=factorized (the bucketed "
                                  "table has no time axis)")
            if self.max_frames % self.tubelet_frames:
                raise ConfigError(f"vision.tubelet_frames={self.tubelet_frames} does not divide "
                                  f"vision.max_frames={self.max_frames}")
        return self

    @property
    def moe_layers(self) -> list[int]:
        """The encoder layers with a MoE MLP (vision.moe.layers); [] for a dense ViT."""
        return self.moe.moe_layers(self.num_layers)

    @property
    def max_time_positions(self) -> int:
        """Rows of the time table: tubelets of the longest video (1 for images only)."""
        return self.max_frames // self.tubelet_frames if self.patch == "tubelet" else 1


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
