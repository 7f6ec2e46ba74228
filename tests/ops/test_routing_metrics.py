"""Routing metrics on synthetic router outputs, checked against hand counts."""

import math

import pytest
import torch

from aria_train.moe.layer import RouterStats
from aria_train.parallel.groups import ParallelGroups
from aria_train.train.routing_metrics import (RoutingAccumulator, console_summary, expert_activation_rates,
                                              load_balance, visual_specialisation)


def test_expert_activation_rates_by_hand():
    # 4 experts, top-2; tokens 0,1 visual, tokens 2,3,4 text
    top = torch.tensor([[0, 1], [0, 2], [1, 3], [1, 2], [1, 0]])
    is_visual = torch.tensor([True, True, False, False, False])
    r_v, r_t = expert_activation_rates(top, is_visual, 4)
    assert r_v.tolist() == [1.0, 0.5, 0.5, 0.0]  # expert 0 chosen by both visual tokens
    assert r_t.tolist() == pytest.approx([1 / 3, 1.0, 1 / 3, 1 / 3])
    assert float(r_v.sum()) == 2 and float(r_t.sum()) == pytest.approx(2)  # = top-k
    spec = visual_specialisation(r_v, r_t)
    assert spec.tolist() == pytest.approx([3.0, 0.5, 1.5, 0.0])


def test_activation_rates_without_visual_tokens_are_zero():
    top = torch.tensor([[0, 1], [2, 3]])
    r_v, r_t = expert_activation_rates(top, torch.zeros(2, dtype=torch.bool), 4)
    assert r_v.tolist() == [0, 0, 0, 0] and r_t.tolist() == [0.5, 0.5, 0.5, 0.5]
    assert math.isnan(float(visual_specialisation(r_v, r_t)[0])) is False  # 0 / 0.5 = 0
    assert math.isnan(float(visual_specialisation(torch.zeros(1), torch.zeros(1))[0]))


def test_expert_activation_rates_specialised_synthetic():
    # visual tokens only ever pick experts 0-1, text tokens 2-7: specialisation is inf / 0
    g = torch.Generator().manual_seed(0)
    visual = torch.stack([torch.randperm(2, generator=g) for _ in range(100)])
    text = torch.stack([torch.randperm(6, generator=g)[:2] + 2 for _ in range(300)])
    top = torch.cat([visual, text])
    is_visual = torch.cat([torch.ones(100, dtype=torch.bool), torch.zeros(300, dtype=torch.bool)])
    r_v, r_t = expert_activation_rates(top, is_visual, 8)
    assert r_v.tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert r_t[:2].tolist() == [0, 0] and float(r_t[2:].sum()) == pytest.approx(2)
    assert visual_specialisation(r_v, r_t)[:2].tolist() == [math.inf, math.inf]


def test_load_balance():
    ratio, cv = load_balance(torch.tensor([[1.0, 1, 1, 1], [4, 0, 0, 0], [3, 1, 3, 1]]))
    assert ratio.tolist() == pytest.approx([1.0, 4.0, 1.5])
    assert cv.tolist() == pytest.approx([0.0, math.sqrt(3), 0.5])


def _stats(top, num_experts, dropped=0, lse=1.0, entropy=2.0):
    top = torch.tensor(top)
    return RouterStats(torch.bincount(top.reshape(-1), minlength=num_experts), torch.tensor(dropped),
                       torch.tensor(lse), torch.tensor(entropy), top)


def test_accumulator_sums_micro_batches_and_summarises_per_layer():
    acc = RoutingAccumulator(num_layers=2, num_experts=4)
    # micro-batch 1: 2 tokens; micro-batch 2: 2 tokens, of which token 0 is visual
    acc.add([_stats([[0, 1], [0, 1]], 4, lse=1.0), _stats([[0, 1], [2, 3]], 4, dropped=1, entropy=1.0)])
    acc.add([_stats([[0, 2], [0, 3]], 4, lse=3.0), _stats([[0, 1], [2, 3]], 4, entropy=3.0)],
            is_visual=torch.tensor([True, False]))
    metrics, counts = acc.reduce_and_reset(ParallelGroups())
    assert counts["tokens_per_expert"] == [[4, 2, 1, 1], [2, 2, 2, 2]]
    assert metrics["router/layer00/load_max_over_mean"] == pytest.approx(2.0)
    assert metrics["router/layer01/load_max_over_mean"] == pytest.approx(1.0)
    assert metrics["router/layer01/load_cv"] == pytest.approx(0.0)
    assert metrics["router/worst_layer"] == 0
    assert metrics["router/layer00/z"] == pytest.approx(2.0)  # token-weighted: (1*2 + 3*2) / 4
    assert metrics["router/layer01/entropy"] == pytest.approx(2.0)
    assert metrics["router/layer01/dropped_frac"] == pytest.approx(1 / 8)
    assert metrics["router/layer00/dropped_frac"] == 0
    assert metrics["router/dropped_frac"] == pytest.approx(1 / 16)
    # layer 0: the visual token chose 0 and 2; the 3 text tokens chose 0,1 / 0,1 / 0,3
    assert counts["activation_rate_visual"][0] == [1.0, 0.0, 1.0, 0.0]
    assert counts["activation_rate_text"][0] == pytest.approx([1.0, 2 / 3, 0.0, 1 / 3])
    assert counts["visual_tokens"] == [1.0, 1.0] and counts["text_tokens"] == [3.0, 3.0]
    assert "route worst L0 max/mean 2.00" in console_summary(metrics)
    assert "drop 6.2%" in console_summary(metrics)
    # reset: the next window starts empty
    acc.add([_stats([[0, 1]], 4), _stats([[2, 3]], 4)])
    _, counts = acc.reduce_and_reset(ParallelGroups())
    assert counts["tokens_per_expert"] == [[1, 1, 0, 0], [0, 0, 1, 1]]
    assert "activation_rate_visual" not in counts  # text only


def test_the_moe_layer_stats_feed_the_accumulator():
    from aria_train.moe.config import MoEConfig
    from aria_train.moe.layer import MoELayer

    torch.manual_seed(0)
    layer = MoELayer(16, MoEConfig(num_experts=8, top_k=2, expert_ffn_size=8, balance_group_size=8,
                                   capacity_factor=0.5))
    with torch.no_grad():
        for param in layer.parameters():
            param.normal_(0, 0.5)
    out = layer(torch.randn(32, 16))
    acc = RoutingAccumulator(1, 8)
    acc.add([out.stats])
    metrics, counts = acc.reduce_and_reset(ParallelGroups())
    assert sum(counts["tokens_per_expert"][0]) == 64
    assert 0 < metrics["router/dropped_frac"] < 1  # capacity 0.5: about half are dropped
    assert 0 < metrics["router/layer00/entropy"] <= math.log(8) + 1e-6
