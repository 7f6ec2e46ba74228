"""Expert-choice routing (router: expert_choice): every expert takes exactly C tokens, the layer
equals a per-expert loop written from Zhou et al.'s definition (outputs and gradients, the
router's included), tokens chosen by no expert pass through the residual only, and the causal
decoder refuses it."""

import math

import pytest
import torch
import torch.nn.functional as F

from aria_train.config import ConfigError
from aria_train.moe.config import MoEConfig
from aria_train.moe.expert_choice import choice_to_slots, expert_capacity
from aria_train.moe.layer import MoELayer
from aria_train.train.run_config import build_config

H = 8


def _layer(E=4, c=1.0, shared=0, seed=0):
    cfg = MoEConfig(num_experts=E, top_k=1, num_shared_experts=shared, expert_ffn_size=6, balance_group_size=1,
                    capacity_factor=c, router="expert_choice")
    layer = MoELayer(H, cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return layer


def _reference(layer, x):
    """y_t = sum over experts e that picked t of softmax(x W^T)[t, e] * SwiGLU_e(x_t), each expert
    picking the C tokens with the highest affinity, written as a loop over experts. (The router
    computes its logits and softmax in fp32 by design, so the reference does too.)"""
    probs = torch.softmax((x @ layer.router.weight.T).float(), dim=-1).to(x.dtype)
    T, E = probs.shape
    C = min(T, math.ceil(layer.cfg.capacity_factor * T / E))
    y = torch.zeros_like(x)
    picked = torch.zeros(T, dtype=torch.long)
    for e in range(E):
        tokens = torch.topk(probs[:, e], C).indices
        gate_up = x[tokens] @ layer.experts.w_gate_up[e]
        gate, up = gate_up.chunk(2, dim=-1)
        out = (F.silu(gate) * up) @ layer.experts.w_down[e]
        y = y.index_add(0, tokens, probs[tokens, e, None] * out)
        picked[tokens] += 1
    return y, picked, C


def test_capacity_rounds_up_and_is_capped_at_the_tokens():
    assert expert_capacity(10, 4, 1.0) == 3  # ceil(2.5)
    assert expert_capacity(16, 4, 1.0) == 4
    assert expert_capacity(10, 4, 2.0) == 5
    assert expert_capacity(3, 2, 4.0) == 3  # min(T, ceil(6))
    assert expert_capacity(0, 4, 2.0) == 0


@pytest.mark.parametrize("T,E,c", [(12, 4, 1.0), (10, 4, 2.0), (7, 3, 1.5)])
def test_every_expert_processes_exactly_C_tokens_and_output_and_grads_match_the_loop(T, E, c):
    layer = _layer(E, c, seed=T)
    seen = {}
    forward = layer.experts.forward

    def spy(x_NH, counts_e):
        seen["counts"] = counts_e.clone()
        return forward(x_NH, counts_e)

    layer.experts.forward = spy
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    out = layer(x)
    ref, picked, C = _reference(layer, x)
    assert seen["counts"].tolist() == [C] * E  # the experts' own input: exactly C rows each
    assert out.stats.tokens_per_expert.tolist() == [C] * E
    torch.testing.assert_close(out.hidden, ref, rtol=1e-10, atol=1e-12)
    assert float(out.balance_loss) == 0.0  # even by construction: no balance loss
    z = torch.logsumexp(x @ layer.router.weight.T, -1).square().mean() * layer.cfg.z_loss_coeff
    torch.testing.assert_close(out.z_loss.double(), z.detach(), rtol=1e-6, atol=1e-9)

    grad_out = torch.randn(T, H, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = [x, layer.router.weight, layer.experts.w_gate_up, layer.experts.w_down]
    grads = torch.autograd.grad((out.hidden * grad_out).sum(), params)
    ref_grads = torch.autograd.grad((_reference(layer, x)[0] * grad_out).sum(), params)
    for name, g, rg in zip(("x", "router", "w_gate_up", "w_down"), grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
    assert grads[1].abs().sum() > 0  # gradients reach the router through the gates


def test_a_token_no_expert_chose_passes_through_the_residual_only():
    layer = _layer(E=2, c=0.5, shared=1)  # C = ceil(0.5 * 8 / 2) = 2: at most 4 of 8 tokens are chosen
    x = torch.randn(8, H, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = layer(x).hidden
    _, picked, _ = _reference(layer, x)
    unchosen = picked == 0
    assert int(unchosen.sum()) >= 4
    torch.testing.assert_close(out[unchosen], layer.shared(x[unchosen]))  # shared experts only, no routed part
    no_shared = _layer(E=2, c=0.5, shared=0)
    assert torch.all(no_shared(x).hidden[_reference(no_shared, x)[1] == 0] == 0)


def test_slots_list_each_tokens_experts_in_order_with_padding():
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]])
    chosen = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    experts, gates, keep = choice_to_slots(probs, chosen)
    assert experts.shape == (3, 3)
    assert keep.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert experts[0, :2].tolist() == [0, 2] and experts[2].tolist() == [0, 1, 2]
    torch.testing.assert_close(gates, probs.gather(1, experts) * keep)


def test_no_tokens_gives_zero_losses_and_an_empty_output():
    layer = _layer()
    out = layer(torch.zeros(0, H, dtype=torch.float64, requires_grad=True))
    assert out.hidden.shape == (0, H)
    assert float(out.balance_loss) == 0.0 and float(out.z_loss) == 0.0


def test_the_causal_decoder_refuses_expert_choice_with_one_line():
    with pytest.raises(ConfigError) as info:
        build_config(1, overrides={"model.moe.router": "expert_choice"})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model.moe.router=expert_choice is refused in the causal decoder")
    assert "later tokens" in message
    with pytest.raises(ConfigError, match="model.moe.router='top2' is not one of topk, expert_choice"):
        build_config(1, overrides={"model.moe.router": "top2"})


def test_expert_choice_scores_are_fp32_under_bf16_autocast():
    """Like the top-k router (megatron-core's moe_router_dtype=fp32): the affinities each expert
    ranks its tokens by come from the fp32 product, not a bf16 one."""
    from aria_train.moe.expert_choice import ExpertChoiceRouter

    router = ExpertChoiceRouter(H, 4, 1.0)
    torch.nn.init.normal_(router.weight, generator=torch.Generator().manual_seed(0))
    x = torch.randn(16, H, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routing = router(x)
    assert routing.logits.dtype == torch.float32
    torch.testing.assert_close(routing.logits, x @ router.weight.T, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(routing.logits, (x.bfloat16() @ router.weight.T.bfloat16()).float(), atol=1e-4)
