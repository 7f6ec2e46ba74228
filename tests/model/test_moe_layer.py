"""The MoE pieces against naive per-expert / per-token loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from aria_train.moe.config import MoEConfig
from aria_train.moe.capacity import capacity_keep_mask
from aria_train.moe.dispatcher import LocalDispatcher
from aria_train.moe.grouped_gemm import grouped_matmul
from aria_train.moe.layer import MoELayer
from aria_train.moe.router import TopKRouter

H = 8


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# grouped_matmul


def _loop_matmul(x, weight, counts):
    outs, start = [], 0
    for e, n in enumerate(counts.tolist()):
        outs.append(x[start : start + n] @ weight[e])
        start += n
    return torch.cat(outs) if outs else x.new_zeros(0, weight.shape[-1])


@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0, 7, 0], [1, 1, 1, 1], [0, 0, 0, 0], [4]])
def test_grouped_matmul_equals_loop(counts):
    counts = torch.tensor(counts)
    E, N, out = len(counts), int(counts.sum()), 6
    x = torch.randn(N, H, generator=_gen(N), dtype=torch.float64)
    w = torch.randn(E, H, out, generator=_gen(E), dtype=torch.float64)
    grad_out = torch.randn(N, out, generator=_gen(7), dtype=torch.float64)
    results = []
    for fn in (grouped_matmul, _loop_matmul):
        xi, wi = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = fn(xi, wi, counts)
        gx, gw = torch.autograd.grad((y * grad_out).sum(), (xi, wi), allow_unused=True)
        results.append((y.detach(), gx, torch.zeros_like(w) if gw is None else gw))
    (y, gx, gw), (y_ref, gx_ref, gw_ref) = results
    assert y.shape == (N, out)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-12, atol=1e-12)
    idle = counts == 0
    assert torch.all(gw[idle] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_matmul_empty_input_keeps_weight_in_graph(dtype):
    w = torch.randn(3, H, 5, requires_grad=True)
    x = torch.zeros(0, H, dtype=dtype, requires_grad=True)
    y = grouped_matmul(x, w, torch.zeros(3, dtype=torch.long))
    assert y.shape == (0, 5) and y.dtype == dtype  # same dtype as the non-empty path
    y.sum().backward()
    assert w.grad is not None and torch.all(w.grad == 0)
    assert x.grad is not None and x.grad.shape == (0, H)  # x stays in the graph too


# ---------------------------------------------------------------------------------------------
# dispatcher


def _expert_fn(rows, counts, scales):
    """A different affine map per expert, applied to rows sorted by expert."""
    experts = torch.repeat_interleave(torch.arange(len(counts)), counts)
    return rows * scales[experts, None] + experts[:, None].to(rows.dtype)


@pytest.mark.parametrize("use_keep", [False, True])
def test_dispatch_combine_equals_per_token_loop(use_keep):
    T, E, k = 11, 5, 3
    x = torch.randn(T, H, generator=_gen(0), dtype=torch.float64)
    logits = torch.randn(T, E, generator=_gen(1))
    top_logits, top_experts = torch.topk(logits, k, dim=-1)
    weights = torch.softmax(top_logits, -1).double()
    keep = torch.rand(T, k, generator=_gen(2)) > 0.3 if use_keep else None
    scales = torch.arange(1, E + 1, dtype=torch.float64)

    dispatcher = LocalDispatcher(E)
    rows, counts, handle = dispatcher.dispatch(x, top_experts, keep)
    kept = keep if keep is not None else torch.ones(T, k, dtype=torch.bool)
    assert counts.tolist() == [int(((top_experts == e) & kept).sum()) for e in range(E)]
    row_expert = torch.repeat_interleave(torch.arange(E), counts)
    assert torch.equal(top_experts.reshape(-1)[handle.kept_slots], row_expert)  # sorted by expert
    out = dispatcher.combine(_expert_fn(rows, counts, scales), weights, handle)

    ref = torch.zeros(T, H, dtype=torch.float64)
    for t in range(T):
        for j in range(k):
            if kept[t, j]:
                e = int(top_experts[t, j])
                ref[t] += weights[t, j] * (x[t] * scales[e] + e)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# capacity


@pytest.mark.parametrize("T,E,k,factor", [(16, 4, 2, 1.0), (20, 8, 3, 0.5), (7, 4, 1, 1.25), (30, 6, 2, 0.1)])
def test_capacity_keep_mask_policy(T, E, k, factor):
    logits = torch.randn(T, E, generator=_gen(T * E))
    logits[:, 0] += 2.0  # make expert 0 over-subscribed
    top_experts = torch.topk(logits, k, dim=-1).indices
    keep = capacity_keep_mask(top_experts, E, factor)
    capacity = math.ceil(factor * T * k / E)
    served = [0] * E
    ref = torch.zeros(T, k, dtype=torch.bool)
    for t in range(T):  # earlier tokens first; within a token, higher-weighted choice first
        for j in range(k):
            e = int(top_experts[t, j])
            ref[t, j] = served[e] < capacity
            served[e] += 1
    assert torch.equal(keep, ref)
    for e in range(E):
        assert int(((top_experts == e) & keep).sum()) == min(capacity, int((top_experts == e).sum()))
    assert not keep.all()  # the cases do drop something


# ---------------------------------------------------------------------------------------------
# router


def test_router_topk_softmax_semantics():
    router = TopKRouter(H, 6, 3)
    torch.nn.init.normal_(router.weight, generator=_gen(0))
    x = torch.randn(10, H, generator=_gen(1))
    r = router(x)
    logits = x @ router.weight.T
    torch.testing.assert_close(r.logits, logits)
    torch.testing.assert_close(r.probs, torch.softmax(logits, -1))
    assert torch.equal(r.top_experts, torch.topk(logits, 3, -1).indices)
    assert r.top_experts.dtype == torch.int64
    chosen = r.probs.gather(1, r.top_experts)
    torch.testing.assert_close(r.top_weights, chosen / chosen.sum(-1, keepdim=True))  # renormalised full softmax
    assert torch.all(r.top_weights[:, :-1] >= r.top_weights[:, 1:])  # descending


# ---------------------------------------------------------------------------------------------
# the layer


def _layer(cfg: MoEConfig, seed=0) -> MoELayer:
    layer = MoELayer(H, cfg).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=_gen(seed), dtype=p.dtype))
            seed += 1
    return layer


def _naive_layer(layer: MoELayer, x, keep=None):
    r = layer.router(x)
    out = layer.shared(x).clone()
    I = layer.cfg.expert_ffn_size
    for t in range(x.shape[0]):
        for j in range(r.top_experts.shape[1]):
            if keep is not None and not keep[t, j]:
                continue
            e = int(r.top_experts[t, j])
            gu = x[t] @ layer.experts.w_gate_up[e]
            h = F.silu(gu[:I]) * gu[I:]
            out[t] = out[t] + r.top_weights[t, j] * (h @ layer.experts.w_down[e])
    return out


@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_moe_layer_equals_naive_loop(capacity_factor):
    cfg = MoEConfig(num_experts=4, top_k=2, num_shared_experts=1, expert_ffn_size=6, balance_group_size=2,
                    capacity_factor=capacity_factor)
    layer = _layer(cfg)
    x = torch.randn(9, H, generator=_gen(99), dtype=torch.float64)
    out = layer(x)
    keep = None
    if capacity_factor is not None:
        keep = capacity_keep_mask(layer.router(x).top_experts, 4, capacity_factor)
        assert int(out.stats.dropped) == int((~keep).sum()) > 0
    with torch.no_grad():
        torch.testing.assert_close(out.hidden, _naive_layer(layer, x, keep), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_all_tokens_on_one_expert(capacity_factor):
    E, T, hot = 4, 12, 2
    cfg = MoEConfig(num_experts=E, top_k=1, num_shared_experts=1, expert_ffn_size=6, balance_group_size=2,
                    capacity_factor=capacity_factor)
    layer = _layer(cfg)
    with torch.no_grad():  # inputs all positive, only the hot expert's router row is positive
        layer.router.weight.zero_()
        layer.router.weight[hot] = 1.0
    x = torch.rand(T, H, generator=_gen(5), dtype=torch.float64) + 0.1
    out = layer(x)
    assert out.stats.tokens_per_expert.tolist() == [T if e == hot else 0 for e in range(E)]
    (out.hidden.square().sum() + out.balance_loss + out.z_loss).backward()
    for w in (layer.experts.w_gate_up, layer.experts.w_down):
        assert w.grad is not None
        idle = [e for e in range(E) if e != hot]
        assert torch.all(w.grad[idle] == 0)
        assert w.grad[hot].abs().sum() > 0
    assert layer.router.weight.grad is not None
    assert torch.isfinite(out.balance_loss) and out.balance_loss > cfg.aux_loss_coeff  # imbalanced > even
    if capacity_factor is None:
        assert int(out.stats.dropped) == 0
    else:
        capacity = math.ceil(capacity_factor * T / E)
        assert int(out.stats.dropped) == T - capacity
        with torch.no_grad():
            keep = torch.arange(T)[:, None] < capacity
            torch.testing.assert_close(out.hidden, _naive_layer(layer, x, keep), rtol=1e-10, atol=1e-12)
