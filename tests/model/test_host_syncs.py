"""Host synchronisations of the MoE path (issue 15, defect 3), counted on CPU by what would make
a CUDA device wait (tests/host_reads.py). Without communication a dropless MoE layer reads
nothing back; tests/parallel/test_moe_ep_comm.py counts the all-to-all's one read of its split
sizes, tests/gpu/test_sync_count.py the same on a GPU with torch.cuda.set_sync_debug_mode."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from host_reads import HostReads  # noqa: E402

from aria_train.model.config import ModelConfig  # noqa: E402
from aria_train.model.decoder import build_model  # noqa: E402
from aria_train.moe.config import MoEConfig  # noqa: E402
from aria_train.moe.layer import MoELayer  # noqa: E402
from aria_train.train.loss import chunked_cross_entropy_sum  # noqa: E402

H = 32


def _layer(dtype=torch.float32, **moe):
    cfg = MoEConfig(**{"num_experts": 8, "top_k": 2, "expert_ffn_size": 16, "balance_group_size": 4, **moe})
    layer = MoELayer(H, cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return layer.to(dtype)


def _layer_step(layer, dtype) -> None:
    x = torch.randn(40, H, generator=torch.Generator().manual_seed(0)).to(dtype).requires_grad_(True)
    out = layer(x)
    (out.hidden.float().sum() + out.balance_loss + out.z_loss).backward()


def _reads_of_layer_step(layer, dtype=torch.float32) -> list[str]:
    _layer_step(layer, dtype)  # warm-up: one-time probes (the grouped kernel's) are not per step
    with HostReads() as reads:
        _layer_step(layer, dtype)
    return reads.events


def test_dropless_layer_reads_nothing_back():
    assert _reads_of_layer_step(_layer()) == []


def test_the_padded_fallback_reads_the_counts():
    """fp64 has no grouped kernel: the padded bmm needs the largest count on the host, once per
    expert GEMM (gate/up, down)."""
    assert _reads_of_layer_step(_layer(torch.float64), torch.float64) == ["tolist", "tolist"]


def test_a_capacity_limit_adds_one_read():
    """How many assignments stay is data-dependent (documented in aria_train.moe.dispatcher)."""
    assert _reads_of_layer_step(_layer(capacity_factor=1.0)) == ["boolean-mask index"]


def test_decoder_training_step_reads_nothing_back():
    """Embedding, attention, RoPE, every MoE layer, the chunked loss and backward: no host read."""
    moe = MoEConfig(num_experts=8, top_k=2, expert_ffn_size=16, balance_group_size=4)
    model = build_model(ModelConfig(vocab_size=128, hidden_size=H, num_layers=3, num_heads=2, head_dim=16, moe=moe))
    tokens = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))

    def step():
        out = model(tokens)
        lm = chunked_cross_entropy_sum(out.hidden.flatten(0, 1), model.lm_head.weight, tokens.flatten(),
                                       torch.ones(tokens.numel()))
        (lm + out.balance_loss + out.z_loss).backward()

    step()
    with HostReads() as reads:
        step()
    assert reads.events == []
