"""QK-norm (model.qk_norm, vision.qk_norm): attention scores and outputs against an explicit
reference written from the definitions, per head, in float64."""

import math

import pytest
import torch

from aria_train.config import ConfigError
from aria_train.model.attention import Attention
from aria_train.model.config import ModelConfig
from aria_train.model.decoder import build_model
from aria_train.model.rope import RotaryEmbedding
from aria_train.model.vision import Segments, VisionAttention
from aria_train.model.vision_config import VisionConfig
from aria_train.train.run_config import build_config

EPS = 1e-6
# RMSNorm (ARIA's) normalises in fp32 even for float64 input: a float32-level tolerance
TOL = dict(rtol=1e-6, atol=1e-6)


def _norm_reference(x, kind, weight, bias):
    """x [..., d] normalised over d as the definitions say (no torch norm modules)."""
    if kind == "layernorm":
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + EPS) * weight + bias
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + EPS) * weight


def _rotate_reference(x, positions, base):
    """RoPE on [S, d] by its definition: pairs (i, i + d/2) rotated by position * base^(-2i/d)."""
    d = x.shape[-1]
    half = d // 2
    out = x.clone()
    for s, pos in enumerate(positions.tolist()):
        for i in range(half):
            angle = pos * base ** (-2 * i / d)
            c, si = math.cos(angle), math.sin(angle)
            a, b = x[s, i], x[s, i + half]
            out[s, i], out[s, i + half] = a * c - b * si, b * c + a * si
    return out


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + (1.0 if p.ndim == 1 else 0.0))


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_decoder_scores_and_output_equal_the_explicit_reference(kind):
    heads, d, hidden, seq, base = 2, 8, 16, 5, 10_000.0
    attn = Attention(hidden, heads, d, qk_norm=kind, eps=EPS).double()
    _randomise(attn, 0)
    x = torch.randn(1, seq, hidden, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    positions = torch.tensor([[3, 4, 5, 9, 10]])
    rope = RotaryEmbedding(d, base)
    cos, sin = rope(positions, torch.float64)

    q, k = attn.queries_keys(x, cos, sin)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # [1, heads, S, S]
    out = attn(x, cos, sin)

    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    ref_out = torch.zeros(seq, heads * d, dtype=torch.float64)
    for h in range(heads):
        rows = slice(h * d, (h + 1) * d)
        qh = x[0] @ attn.q_proj.weight[rows].T
        kh = x[0] @ attn.k_proj.weight[rows].T
        vh = x[0] @ attn.v_proj.weight[rows].T
        qh = _norm_reference(qh, kind, attn.q_norm.weight, getattr(attn.q_norm, "bias", None))
        kh = _norm_reference(kh, kind, attn.k_norm.weight, getattr(attn.k_norm, "bias", None))
        qh, kh = _rotate_reference(qh, positions[0], base), _rotate_reference(kh, positions[0], base)
        ref_scores = qh @ kh.T / math.sqrt(d)
        torch.testing.assert_close(scores[0, h], ref_scores, **TOL)
        probs = torch.softmax(ref_scores.masked_fill(~causal, float("-inf")), dim=-1)
        ref_out[:, rows] = probs @ vh
    torch.testing.assert_close(out[0], ref_out @ attn.o_proj.weight.T, **TOL)
    # the norm changes the scores: without it they differ
    plain = Attention(hidden, heads, d).double()
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if "norm" not in k})
    q0, k0 = plain.queries_keys(x, cos, sin)
    assert not torch.allclose(q0 @ k0.transpose(-1, -2) / math.sqrt(d), scores)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_vit_scores_and_output_equal_the_explicit_reference(kind):
    cfg = VisionConfig(hidden_size=16, num_heads=2, num_layers=1, intermediate_size=8, patch_size=2, image_size=8,
                       layer_norm_eps=EPS, qk_norm=kind)
    attn = VisionAttention(cfg).double()
    _randomise(attn, 2)
    lengths = [3, 4]
    x = torch.randn(sum(lengths), 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    q, k = attn.queries_keys(x)
    out = attn(x, Segments(lengths), backend="loop")
    d, start = 8, 0
    ref = torch.zeros(sum(lengths), 16, dtype=torch.float64)
    for n in lengths:
        seg = slice(start, start + n)
        for h in range(2):
            rows = slice(h * d, (h + 1) * d)
            proj = lambda lin: x[seg] @ lin.weight[rows].T + lin.bias[rows]  # noqa: E731
            qh = _norm_reference(proj(attn.q_proj), kind, attn.q_norm.weight, getattr(attn.q_norm, "bias", None))
            kh = _norm_reference(proj(attn.k_proj), kind, attn.k_norm.weight, getattr(attn.k_norm, "bias", None))
            ref_scores = qh @ kh.T / math.sqrt(d)
            torch.testing.assert_close(q[seg, h] @ k[seg, h].T / math.sqrt(d), ref_scores, **TOL)
            ref[seg, rows] = torch.softmax(ref_scores, -1) @ proj(attn.v_proj)
        start += n
    torch.testing.assert_close(out, ref @ attn.out_proj.weight.T + attn.out_proj.bias, **TOL)


def test_off_by_default_adds_no_parameters_and_on_initialises_to_identity_scale():
    base = build_config(1).model
    names_off = {n for n, _ in build_model(base, device="meta").named_parameters()}
    assert not any("q_norm" in n or "k_norm" in n for n in names_off)
    on = build_config(1, overrides={"model.qk_norm": "layernorm"}).model
    model = build_model(on)
    added = {n for n, _ in model.named_parameters()} - names_off
    assert added == {f"layers.{i}.attention.{q}_norm.{w}" for i in range(2) for q in "qk" for w in ("weight", "bias")}
    for name in added:
        expected = 1.0 if name.endswith("weight") else 0.0
        assert torch.all(model.get_parameter(name) == expected), name


def test_qk_norm_choice_is_checked():
    with pytest.raises(ConfigError, match="model.qk_norm='l2' is not one of none, layernorm, rmsnorm"):
        build_config(1, overrides={"model.qk_norm": "l2"})
    with pytest.raises(ConfigError, match="vision.qk_norm='yes' is not one of"):
        build_config(2, overrides={"vision.qk_norm": "yes"})
    assert ModelConfig(qk_norm="rmsnorm").validate().qk_norm == "rmsnorm"
