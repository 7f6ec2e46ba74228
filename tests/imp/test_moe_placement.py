"""Decoder MoE placement (model.moe.layer_freq / first_k_dense, dense SwiGLU elsewhere):
which layers are MoE, the model it builds (parameters by hand count), what it returns, the
routing metric names and the FLOPs."""

import pytest
import torch

from aria_train.config import ConfigError
from aria_train.model.decoder import build_model
from aria_train.parallel.groups import ParallelGroups
from aria_train.train.flops import forward_flops_per_token
from aria_train.train.routing_metrics import RoutingAccumulator
from aria_train.train.run_config import build_config


@pytest.mark.parametrize("overrides,layers,expected", [
    ({}, 4, [0, 1, 2, 3]),
    ({"model.moe.layer_freq": 2}, 6, [0, 2, 4]),
    ({"model.moe.layer_freq": "3"}, 6, [0, 3]),
    ({"model.moe.first_k_dense": 1}, 4, [1, 2, 3]),
    ({"model.moe.layer_freq": 2, "model.moe.first_k_dense": 1}, 6, [2, 4]),
    ({"model.moe.layer_freq": "0 1 1 0"}, 4, [1, 2]),
    ({"model.moe.layer_freq": [1, 0, 0, 1]}, 4, [0, 3]),
    ({"model.moe.first_k_dense": 4}, 4, []),
])
def test_which_layers_are_moe(overrides, layers, expected):
    cfg = build_config(1, overrides={"model.num_layers": layers, **overrides})
    assert cfg.model.moe_layers == expected


@pytest.mark.parametrize("overrides,message", [
    ({"model.moe.layer_freq": 0}, "model.moe.layer_freq=0 must be >= 1"),
    ({"model.moe.layer_freq": "1 0 1"}, "model.moe.layer_freq=[1, 0, 1] must be one 0/1 per layer (2 layers)"),
    ({"model.moe.layer_freq": "1 2"}, "must be one 0/1 per layer"),
    ({"model.moe.layer_freq": "often"}, "config key model.moe.layer_freq='often' is none of: int, a list of int"),
    ({"model.moe.first_k_dense": 3}, "model.moe.first_k_dense=3 is outside [0, 2]"),
    ({"model.moe.dense_ffn_size": 0}, "model.moe.dense_ffn_size=0 must be positive or null"),
])
def test_bad_placement_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        build_config(1, overrides=overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_model_has_dense_mlps_where_no_moe_and_a_hand_count_of_parameters():
    cfg = build_config(1, overrides={"model.num_layers": 4, "model.moe.layer_freq": 2}).model
    model = build_model(cfg, device="meta")
    H, V, E, I, shared = 64, 1024, 16, 32, 2
    width = (4 + shared) * I  # default dense_ffn_size: top_k + shared expert widths = 192
    attention, norms = 4 * H * 64, 2 * H
    moe_layer = attention + norms + E * H + E * 3 * H * I + 3 * H * shared * I
    dense_layer = attention + norms + 3 * H * width
    assert sum(p.numel() for p in model.parameters()) == 2 * V * H + H + 2 * moe_layer + 2 * dense_layer
    assert [b.moe is not None for b in model.layers] == [True, False, True, False]
    assert model.layers[1].mlp.gate_proj.weight.shape == (width, H)
    assert len(model.expert_modules()) == 2
    custom = build_config(1, overrides={"model.moe.first_k_dense": 1, "model.moe.dense_ffn_size": 48}).model
    assert build_model(custom, device="meta").layers[0].mlp.up_proj.weight.shape == (48, 64)


def test_forward_returns_router_stats_of_moe_layers_and_losses_of_them_only():
    cfg = build_config(1, overrides={"model.num_layers": 3, "model.moe.first_k_dense": 1}).model
    model = build_model(cfg, seed=3)
    tokens = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(0))
    out = model(tokens)
    assert len(out.router_stats) == 2
    balance = sum(block.moe(block.moe_norm(x).flatten(0, 1)).balance_loss
                  for block, x in _block_inputs(model, tokens) if block.moe is not None)
    torch.testing.assert_close(out.balance_loss, balance)
    out.hidden.sum().backward()
    assert model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0


def _block_inputs(model, tokens):
    x = model.embed_tokens(tokens)
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    cos, sin = model.rope(positions, x.dtype)
    for block in model.layers:
        x = x + block.attention(block.attention_norm(x), cos, sin)
        yield block, x
        x = x + block._moe(x).hidden.view_as(x)


def test_routing_metrics_are_named_by_decoder_layer():
    acc = RoutingAccumulator(2, 4, layer_ids=[1, 3])
    stats = build_model(build_config(1, overrides={"model.moe.num_experts": 4, "model.moe.balance_group_size": 4,
                                                   "model.moe.top_k": 2}).model)(torch.ones(1, 4, dtype=torch.long))
    acc.add(stats.router_stats)
    metrics, _ = acc.reduce_and_reset(ParallelGroups())  # one process: the reduction is the identity
    assert {k.split("/")[1] for k in metrics if k.startswith("router/layer")} == {"layer01", "layer03"}
    assert metrics["router/worst_layer"] in (1, 3)


def test_flops_count_dense_layers_with_their_own_width():
    cfg = build_config(1, overrides={"model.num_layers": 4, "model.moe.layer_freq": 2,
                                     "model.moe.dense_ffn_size": 100}).model
    seq = 128
    attention = 2 * 4 * 64 * 64 + 2 * 2 * seq * 64 / 2
    moe = 2 * 64 * 16 + 2 * 3 * 64 * 32 * (4 + 2)
    dense = 2 * 3 * 64 * 100
    assert forward_flops_per_token(cfg, seq) == 4 * attention + 2 * moe + 2 * dense + 2 * 64 * 1024


def test_dry_run_report_counts_the_placement_by_hand():
    from aria_train.plan.report import dry_run_report

    cfg = build_config(1, overrides={"model.num_layers": 4, "model.moe.layer_freq": 2})
    report = dry_run_report(cfg, world=2)
    H, V, E, I, shared, top_k = 64, 1024, 16, 32, 2, 4
    width = (top_k + shared) * I
    routed = 2 * E * 3 * H * I  # the experts of layers 0 and 2 only
    dense = 2 * V * H + H + 4 * (4 * H * 64 + 2 * H) + 2 * (E * H + 3 * H * shared * I) + 2 * 3 * H * width
    decoder = next(line for line in report.splitlines() if line.startswith("  decoder "))
    assert decoder.split()[1] == f"{routed + dense:,}"
    assert f"(routed experts {routed:,}; dense {dense:,})" in decoder
    active = next(line for line in report.splitlines() if line.startswith("  per text token"))
    assert active.split()[3] == f"{dense + routed * top_k // E:,}"
    assert "note: 2 of 4 decoder layers are MoE (model.moe.layer_freq / first_k_dense)" in report
