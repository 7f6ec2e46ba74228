"""The router computes in fp32 under bf16 autocast and with bf16 weights (issue 15, defect 4):
megatron-core's moe_router_dtype=fp32. Logits, top-k choice, weights and both balance losses
come from the fp32 product of the (upcast) input and weight."""

import pytest
import torch

from aria_train.moe.balance import z_loss
from aria_train.moe.config import MoEConfig
from aria_train.moe.layer import MoELayer
from aria_train.moe.router import TopKRouter

H, E, K, T = 64, 16, 4, 96


def _router(dtype):
    router = TopKRouter(H, E, K)
    with torch.no_grad():
        router.weight.copy_(torch.randn(E, H, generator=torch.Generator().manual_seed(0)))
    return router.to(dtype)


def _x(dtype):
    return torch.randn(T, H, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("case", ["fp32-weights-bf16-autocast", "bf16-weights-bf16-input"])
def test_router_logits_are_the_fp32_product(case):
    weight_dtype, x_dtype = (torch.float32, torch.float32) if case.startswith("fp32") else (torch.bfloat16,) * 2
    router, x = _router(weight_dtype), _x(x_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(x)
    expected = x.float() @ router.weight.float().t()
    assert routing.logits.dtype == torch.float32
    torch.testing.assert_close(routing.logits, expected, rtol=1e-6, atol=1e-5)
    top_logits, top_experts = torch.topk(expected, K, dim=-1)
    assert torch.equal(routing.top_experts, top_experts)
    assert routing.top_weights.dtype == torch.float32
    torch.testing.assert_close(routing.top_weights, torch.softmax(top_logits, -1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(routing.probs, torch.softmax(expected, -1), rtol=1e-6, atol=1e-7)


def test_bf16_logits_would_round_what_the_router_decides():
    """Why it matters: rounding the same logits to bf16 changes the top-k choice of some tokens
    and the z-loss; the router's own choice is the fp32 one."""
    router, x = _router(torch.float32), _x(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(x)
        rounded = torch.nn.functional.linear(x, router.weight).float()  # what autocast alone would give
    exact = x @ router.weight.t()
    assert (rounded - exact).abs().max() > 1e-3  # bf16 products really are rounded
    assert torch.equal(routing.top_experts, torch.topk(exact, K, dim=-1).indices)
    assert float(z_loss(routing.logits, 1.0).detach()) == pytest.approx(float(z_loss(exact, 1.0).detach()), rel=1e-6)


def test_moe_layer_balance_losses_are_fp32_under_autocast():
    cfg = MoEConfig(num_experts=E, top_k=K, expert_ffn_size=32, balance_group_size=4)
    layer = MoELayer(H, cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = _x(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.balance_loss.dtype == torch.float32 and out.z_loss.dtype == torch.float32
    logits = x @ layer.router.weight.t()
    torch.testing.assert_close(out.z_loss, z_loss(logits, cfg.z_loss_coeff), rtol=1e-5, atol=0)
