"""Helpers for the multi-rank tests: spawn a gloo world on loopback, a tiny model, the loss.

Test modules run under pytest's importlib mode, so spawned children cannot import them; every
function a child runs lives here (tests add this directory to sys.path, which spawn passes on).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from aria_train.model.config import ModelConfig
from aria_train.moe.config import MoEConfig
from aria_train.config.presets import MODEL_PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spawn_world import free_port, run_world  # noqa: E402,F401  (re-exported for the tests)


def tiny_config(**moe_overrides) -> ModelConfig:
    preset = dict(MODEL_PRESETS["tiny"])
    moe = MoEConfig(**{**preset.pop("moe"), **moe_overrides})
    return ModelConfig(preset="tiny", **preset, moe=moe)


def micro_loss(model, tokens, labels, global_tokens: int, world: int, n_micro: int) -> torch.Tensor:
    """The trainer's convention: sum of local CE / global token count + (balance + z) / (world x
    micro-batches), so the SUM over ranks and micro-batches is the global loss."""
    out = model(tokens)
    logits = model.logits(out.hidden).float()
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    return ce / global_tokens + (out.balance_loss + out.z_loss) / (world * n_micro)


def make_batches(steps: int, world: int, n_micro: int, batch: int, seq: int, vocab: int, seed: int = 7):
    """batches[step][rank][micro] = (tokens, labels), the same on every process."""
    g = torch.Generator().manual_seed(seed)
    return [
        [
            [
                (torch.randint(0, vocab, (batch, seq), generator=g), torch.randint(0, vocab, (batch, seq), generator=g))
                for _ in range(n_micro)
            ]
            for _ in range(world)
        ]
        for _ in range(steps)
    ]
