"""Parameter counts: the aria-25b preset is the paper's 24.87B model, exactly."""

import pytest

from aria_train.config.loader import from_dict
from aria_train.config.presets import MODEL_PRESETS
from aria_train.model.config import ModelConfig
from aria_train.model.decoder import build_model


def _preset(name: str) -> ModelConfig:
    return from_dict(ModelConfig, {**MODEL_PRESETS[name], "preset": name}, prefix="model.")


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _formula(cfg: ModelConfig) -> int:
    H, V, m = cfg.hidden_size, cfg.vocab_size, cfg.moe
    attention = 4 * H * cfg.num_heads * cfg.head_dim  # q, k, v, o
    router = m.num_experts * H
    routed = m.num_experts * (H * 2 * m.expert_ffn_size + m.expert_ffn_size * H)  # w_gate_up + w_down
    shared = 3 * H * m.num_shared_experts * m.expert_ffn_size  # gate, up, down
    norms = 2 * H
    per_layer = attention + router + routed + shared + norms
    return 2 * V * H + H + cfg.num_layers * per_layer  # embed + untied head + final norm + layers


def test_aria_25b_has_24_869_091_840_parameters():
    cfg = _preset("aria-25b")
    model = build_model(cfg, device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert _count(model) == 24_869_091_840
    assert _formula(cfg) == 24_869_091_840


def test_tiny_count_matches_formula():
    cfg = _preset("tiny")
    # 2*1024*64 + 64 + 2 * (4*64*64 + 16*64 + 16*3*64*32 + 3*64*64 + 2*64)
    expected = 131_072 + 64 + 2 * (16_384 + 1_024 + 98_304 + 12_288 + 128)
    assert _formula(cfg) == expected == 387_392
    assert _count(build_model(cfg, device="meta")) == expected
    assert _count(build_model(cfg)) == expected


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
def test_every_preset_matches_formula(name):
    cfg = _preset(name)
    assert _count(build_model(cfg, device="meta")) == _formula(cfg)
