"""Parameter groups a run can freeze (`train.freeze`): a frozen parameter takes no gradient and
has no optimizer state, so it costs only its weights (the optimizers skip parameters that do not
require a gradient, aria_train.optim.flat_state.collect_params). Fine-tuning the 25B model on
one node needs this (see the aria-25b-finetune recipes and `--dry-run`).

Groups, by parameter name (the text decoder's names; in the multimodal model they sit under
`language_model.`):
    embeddings      embed_tokens.weight
    lm_head         lm_head.weight
    attention       layers.N.attention.{q,k,v,o}_proj.weight
    norms           the decoder's RMSNorm weights
    router          layers.N.moe.router.weight
    shared_experts  layers.N.moe.shared.*
    routed_experts  layers.N.moe.experts.* (the bulk: 22.9B of aria-25b's 24.9B)
    decoder         every parameter of the text decoder (all of the above)
    vision          vision_tower.* (the ViT)
    projector       multi_modal_projector.*
"""

from __future__ import annotations

import re
import typing
from typing import Iterable, Literal

from torch import nn

FreezeGroup = Literal["embeddings", "lm_head", "attention", "norms", "router", "shared_experts",
                      "routed_experts", "decoder", "vision", "projector"]
FREEZE_GROUPS: tuple[str, ...] = typing.get_args(FreezeGroup)

_DECODER_PATTERNS = {
    "embeddings": r"embed_tokens\.weight",
    "lm_head": r"lm_head\.weight",
    "attention": r"layers\.\d+\.attention\.\w+\.weight",
    "norms": r"(layers\.\d+\.\w*norm|norm)\.weight",
    "router": r"layers\.\d+\.moe\.router\.weight",
    "shared_experts": r"layers\.\d+\.moe\.shared\..+",
    "routed_experts": r"layers\.\d+\.moe\.experts\..+",
    "decoder": r".+",
}
_TOWERS = {"vision": "vision_tower.", "projector": "multi_modal_projector."}
_TEXT_PREFIX = "language_model."


def parameter_groups(name: str) -> set[str]:
    """The freeze groups parameter `name` belongs to (a text-decoder or multimodal model name)."""
    for group, prefix in _TOWERS.items():
        if name.startswith(prefix):
            return {group}
    text_name = name[len(_TEXT_PREFIX):] if name.startswith(_TEXT_PREFIX) else name
    return {group for group, pattern in _DECODER_PATTERNS.items() if re.fullmatch(pattern, text_name)}


def is_frozen(name: str, groups: Iterable[str]) -> bool:
    return bool(parameter_groups(name) & set(groups))


def freeze_parameters(model: nn.Module, groups: Iterable[str]) -> int:
    """Sets requires_grad=False on every parameter of the named groups; returns how many
    elements were frozen. Call before building the optimizer."""
    groups = set(groups)
    unknown = groups - set(FREEZE_GROUPS)
    if unknown:
        raise ValueError(f"unknown freeze group(s) {sorted(unknown)}; expected {', '.join(FREEZE_GROUPS)}")
    frozen = 0
    for name, param in model.named_parameters():
        if is_frozen(name, groups):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen
