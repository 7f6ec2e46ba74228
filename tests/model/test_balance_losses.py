"""Our balance losses against megatron-core's (the oracles named in DESIGN.md), values and grads."""

import warnings

import pytest
import torch

from aria_train.moe.balance import group_load_balancing_loss, z_loss

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Transformer Engine and Apex are not installed"
    moe_utils = pytest.importorskip("megatron.core.transformer.moe.moe_utils")

CASES = [(1, 4, 1), (7, 8, 2), (33, 16, 4), (64, 64, 6), (5, 3, 3)]  # (T, E, k)


def _routing(T, E, k, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = (2.0 * torch.randn(T, E, generator=gen, dtype=torch.float64)).requires_grad_(True)
    top = torch.topk(logits.detach(), k, dim=-1).indices
    tokens_per_expert = torch.bincount(top.reshape(-1), minlength=E)
    return logits, tokens_per_expert


@pytest.mark.parametrize("T,E,k", CASES)
def test_group_size_one_is_megatron_switch_loss(T, E, k):
    coeff = 1e-2
    logits, tpe = _routing(T, E, k, seed=T * 100 + E)
    ours = group_load_balancing_loss(torch.softmax(logits, -1), tpe, k, 1, coeff)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = moe_utils.switch_load_balancing_loss_func(torch.softmax(logits, -1), tpe, T, k, E, coeff)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-15)
    # and w.r.t. the probabilities directly
    probs = torch.softmax(logits.detach(), -1).requires_grad_(True)
    (gp_ours,) = torch.autograd.grad(group_load_balancing_loss(probs, tpe, k, 1, coeff), probs)
    (gp_ref,) = torch.autograd.grad(moe_utils.switch_load_balancing_loss_func(probs, tpe, T, k, E, coeff), probs)
    torch.testing.assert_close(gp_ours, gp_ref, rtol=1e-12, atol=0)


def test_group_size_one_fp32():
    logits, tpe = _routing(40, 8, 2, seed=3)
    probs = torch.softmax(logits.detach().float(), -1)
    ours = group_load_balancing_loss(probs, tpe, 2, 1, 1e-2)
    ref = moe_utils.switch_load_balancing_loss_func(probs, tpe, 40, 2, 8, 1e-2)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("E,group_size,k", [(8, 1, 2), (8, 2, 2), (16, 4, 4), (64, 8, 6), (8, 8, 3)])
def test_uniform_routing_gives_coeff(E, group_size, k):
    T, coeff = 3 * E, 0.037
    probs = torch.full((T, E), 1.0 / E, dtype=torch.float64)
    tpe = torch.full((E,), T * k // E, dtype=torch.long)
    assert int(tpe.sum()) == T * k
    loss = group_load_balancing_loss(probs, tpe, k, group_size, coeff)
    torch.testing.assert_close(loss, torch.tensor(coeff, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("T,E,k,group_size", [(20, 8, 2, 2), (31, 16, 4, 4), (50, 64, 6, 8), (9, 8, 2, 8)])
def test_group_loss_is_switch_loss_on_groups(T, E, k, group_size):
    coeff = 1e-2
    G = E // group_size
    logits, tpe = _routing(T, E, k, seed=T + E + group_size)
    ours = group_load_balancing_loss(torch.softmax(logits, -1), tpe, k, group_size, coeff)
    (g_ours,) = torch.autograd.grad(ours, logits)
    group_probs = torch.softmax(logits, -1).view(T, G, group_size).sum(-1)
    group_tokens = tpe.view(G, group_size).sum(-1)
    ref_ours = group_load_balancing_loss(group_probs, group_tokens, k, 1, coeff)
    ref = moe_utils.switch_load_balancing_loss_func(group_probs, group_tokens, T, k, G, coeff)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref_ours, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-15)


def test_group_loss_penalises_group_imbalance_only():
    # Moving load between experts of the same group leaves the loss unchanged.
    T, E, k, gs = 16, 8, 2, 4
    probs = torch.softmax(torch.randn(T, E, generator=torch.Generator().manual_seed(0)), -1)
    tpe = torch.tensor([4, 4, 4, 4, 2, 2, 6, 6])
    moved = torch.tensor([16, 0, 0, 0, 0, 0, 0, 16])
    a = group_load_balancing_loss(probs, tpe, k, gs, 1.0)
    b = group_load_balancing_loss(probs, moved, k, gs, 1.0)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("T,E", [(1, 4), (13, 8), (64, 64)])
def test_z_loss_is_megatron_z_loss(T, E):
    logits = (3.0 * torch.randn(T, E, generator=torch.Generator().manual_seed(T), dtype=torch.float64))
    logits.requires_grad_(True)
    ours = z_loss(logits, 1e-3)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = moe_utils.z_loss_func(logits, 1e-3)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-18)
