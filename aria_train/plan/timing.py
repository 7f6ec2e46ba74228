"""Estimated time per step and per stage at a stated MFU.

Model FLOPs per token: the decoder's (aria_train.train.flops: what a token runs, attention at
the stage's sequence length, LM head), and for an image token also the ViT and projector work
behind it. Training is 3x forward. Recompute is not model FLOPs: it is overhead that lowers MFU,
so the MFU stated should be one measured with the recompute mode in use.

    time per step = global batch tokens x FLOPs per token / (world x peak x MFU)
"""

from __future__ import annotations

from dataclasses import dataclass

from aria_train.plan.layout import image_shape
from aria_train.train.flops import forward_flops_per_token, peak_flops

DEFAULT_MFU = 0.30  # an assumption, not a measurement: fine-grained MoE with all-to-all runs below dense models
DEFAULT_GPU = "H100"


def vision_forward_flops_per_image_token(vision, projector_hidden: int, side: int, queries: int) -> float:
    """ViT + projector forward FLOPs behind one image token, for square crops of side x side
    patches that give `queries` tokens. Per patch and layer: q/k/v/o 8 D^2, MLP 4 D I,
    attention (non-causal, within the crop) 4 n D; patch embedding 2 D (3 p^2). Projector per
    patch: k and v through two projections each, 8 D^2; per query: q through two projections,
    out_proj, linear (8 D^2), cross-attention 4 n D, FFN 2 (D Dt + Dt^2)."""
    D, I, L = vision.hidden_size, vision.intermediate_size, vision.num_layers
    n = side * side
    per_patch = L * (8 * D * D + 4 * D * I + 4 * n * D) + 2 * D * vision.num_channels * vision.patch_size**2
    per_patch += 8 * D * D
    per_query = 8 * D * D + 4 * n * D + 2 * (D * projector_hidden + projector_hidden**2)
    return n / queries * per_patch + per_query


@dataclass
class StepTime:
    flops_per_text_token: float  # training (3x forward)
    flops_per_image_token: float
    image_share: float  # of the tokens, assumed
    step_flops: float
    step_seconds: float
    stage_seconds: float
    mfu: float
    gpu: str


def estimate_step_time(cfg, world: int, image_share: float, mfu: float = DEFAULT_MFU, gpu: str = DEFAULT_GPU) -> StepTime:
    """Time per step and for train_iters steps of `cfg` (a RunConfig) on `world` GPUs."""
    seq = cfg.data.seq_length
    text = 3 * forward_flops_per_token(cfg.model, seq)
    image = text
    if cfg.multimodal:
        side, queries = image_shape(cfg)
        image = text + 3 * vision_forward_flops_per_image_token(cfg.vision, cfg.model.hidden_size, side, queries)
    tokens = cfg.train.global_batch_size * seq
    step_flops = tokens * ((1 - image_share) * text + image_share * image)
    seconds = step_flops / (world * peak_flops(gpu) * mfu)
    return StepTime(text, image, image_share, step_flops, seconds, seconds * cfg.train.train_iters, mfu, gpu)


def image_share_of(cfg) -> float:
    """At most the multimodal share of the mixture is image tokens: 1 - data.language_weight on
    multimodal stages (an upper bound: multimodal samples carry text too), 0 on stage 1."""
    return 1.0 - cfg.data.language_weight if cfg.multimodal else 0.0


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
