"""The CUDA path's kernels (issue 15): grouped GEMM = per-expert matmuls in bf16, fused AdamW =
unfused with its step on the device, one host synchronisation per MoE layer, document masking
by the varlen kernel = documents run one by one, pinned background batches."""

import datetime

import pytest
import torch
import torch.distributed as dist

from gpu_helpers import CountSyncs, small_model_config

from aria_train.model.attention import DocumentMask
from aria_train.model.decoder import build_model
from aria_train.moe.config import MoEConfig
from aria_train.moe.grouped_gemm import grouped_matmul
from aria_train.moe.layer import MoELayer

CUDA = torch.device("cuda")


def _loop(x, weight, counts):
    outs, start = [], 0
    for e, n in enumerate(counts.tolist()):
        outs.append(x[start : start + n] @ weight[e])
        start += n
    return torch.cat(outs)


def test_grouped_gemm_bf16_equals_per_expert_matmuls(monkeypatch):
    calls = []
    real = torch._grouped_mm
    monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **k: calls.append(1) or real(*a, **k))
    counts = torch.tensor([37, 0, 64, 5, 0, 130, 1, 19], device=CUDA)
    g = torch.Generator(device=CUDA).manual_seed(0)
    x = torch.randn(int(counts.sum()), 256, device=CUDA, generator=g, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(8, 256, 512, device=CUDA, generator=g, dtype=torch.bfloat16, requires_grad=True)
    y = grouped_matmul(x, w, counts)
    assert calls, "the grouped kernel did not run"
    grad = torch.randn(y.shape, device=CUDA, generator=g, dtype=torch.bfloat16)
    gx, gw = torch.autograd.grad(y, (x, w), grad)
    xr, wr = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    yr = _loop(xr, wr, counts)
    gxr, gwr = torch.autograd.grad(yr, (xr, wr), grad)
    for got, ref in ((y, yr), (gx, gxr), (gw, gwr)):
        torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=2e-1)
    assert torch.all(gw[counts == 0] == 0)
    empty = grouped_matmul(x[:0], w, torch.zeros(8, dtype=torch.long, device=CUDA))
    assert empty.shape == (0, 512)


def test_fused_adamw_on_cuda_equals_unfused():
    from aria_train.optim.config import OptimizerConfig
    from aria_train.optim.replicated import ReplicatedAdamW

    fused_model = build_model(small_model_config(), device=CUDA)
    ref_model = build_model(small_model_config(), device=CUDA)
    cfg = OptimizerConfig(lr=1e-2, clip_grad=0.0)
    opt = ReplicatedAdamW(fused_model, cfg)
    ref = torch.optim.AdamW([{"params": [p for p in ref_model.parameters() if p.ndim >= 2], "weight_decay": 0.1},
                             {"params": [p for p in ref_model.parameters() if p.ndim < 2], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False, fused=False)
    assert all(group["fused"] for group in opt.optimizer.param_groups)
    tokens = torch.randint(0, 512, (2, 64), device=CUDA)
    for step in range(3):
        out = fused_model(tokens)
        (fused_model.logits(out.hidden).float().logsumexp(-1).mean() + out.balance_loss).backward()
        for p, q in zip(fused_model.parameters(), ref_model.parameters()):
            q.grad = p.grad.clone()
        opt.step(1e-2)  # the first step is where a CPU step counter failed
        ref.step()
        opt.zero_grad()
        ref.zero_grad()
        for p, q in zip(fused_model.parameters(), ref_model.parameters()):
            assert opt.optimizer.state[p]["step"].device == p.device
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _moe_layer_step(layer, x):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
        loss = out.hidden.float().square().mean() + out.balance_loss + out.z_loss
    loss.backward()


def test_a_local_moe_layer_never_synchronises():
    layer = MoELayer(128, MoEConfig(num_experts=16, top_k=4, expert_ffn_size=64, balance_group_size=4)).to(CUDA)
    x = torch.randn(1024, 128, device=CUDA, requires_grad=True)
    _moe_layer_step(layer, x)  # warm-up (the one-time kernel probe)
    with CountSyncs() as syncs:
        _moe_layer_step(layer, x)
    assert syncs.count == 0


def test_an_expert_parallel_moe_layer_synchronises_once_per_forward(tmp_path):
    """The all-to-all path over an NCCL group of one: its split sizes are the one read."""
    from aria_train.moe.alltoall import AllToAllDispatcher

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        layer = MoELayer(128, MoEConfig(num_experts=16, top_k=4, expert_ffn_size=64, balance_group_size=4)).to(CUDA)
        layer.dispatcher = AllToAllDispatcher(layer.experts.layout, dist.group.WORLD)
        x = torch.randn(1024, 128, device=CUDA, requires_grad=True)
        _moe_layer_step(layer, x)
        with CountSyncs() as syncs:
            _moe_layer_step(layer, x)
        assert syncs.count == 1
    finally:
        dist.destroy_process_group()


def test_step_timer_phases_do_not_synchronise():
    from aria_train.train.step_timer import StepTimer

    timer = StepTimer(CUDA)
    a = torch.randn(2048, 2048, device=CUDA)
    with CountSyncs() as syncs:
        timer.reset()
        for name in ("forward", "backward", "optimizer"):
            with timer.phase(name):
                a = a @ a.T / 2048
        timer.summary()
    assert syncs.count == 0
    window = timer.window_summary()  # the one read, once per log window
    assert window["time_forward_s"] > 0 and window["step_time_s"] > 0


@pytest.mark.parametrize("batch", [1, 2])
def test_document_mask_by_the_varlen_kernel_equals_documents_one_by_one(monkeypatch, batch):
    import torch.nn.attention.varlen as varlen

    calls = []
    real = varlen.varlen_attn
    monkeypatch.setattr(varlen, "varlen_attn", lambda *a, **k: calls.append(1) or real(*a, **k))
    from aria_train.data.documents import positions_within_documents

    model = build_model(small_model_config(), device=CUDA).to(torch.bfloat16).eval()
    model.rope.reset_parameters()  # the inverse frequencies stay fp32
    lengths = [[100, 37, 250, 125], [12, 500]][:batch]  # each row 512 tokens
    tokens = torch.randint(0, 512, (batch, 512), device=CUDA)
    ids = torch.stack([torch.repeat_interleave(torch.arange(len(r)), torch.tensor(r)) for r in lengths])
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        packed = model.logits(model(tokens, positions_within_documents(ids).to(CUDA),
                                    document_mask=DocumentMask.from_document_ids(ids, CUDA)).hidden).float()
        assert calls, "the varlen kernel did not run"
        for row, row_lengths in enumerate(lengths):
            start = 0
            for n in row_lengths:
                alone = model.logits(model(tokens[row : row + 1, start : start + n]).hidden).float()[0]
                torch.testing.assert_close(packed[row, start : start + n], alone, rtol=3e-2, atol=3e-2)
                start += n


def test_background_batches_are_pinned():
    from aria_train.data.prefetch import BackgroundBatches

    class Batches:
        num_micro_batches = 1

        def __init__(self):
            self.n = 0

        def next_global_batch(self):
            self.n += 1
            return [{"tokens": torch.full((2, 8), self.n)}]

        def state_dict(self):
            return {"consumed_samples": self.n}

        def load_state_dict(self, state):
            self.n = state["consumed_samples"]

    batches = BackgroundBatches(Batches(), prefetch=2)
    try:
        batch = batches.next_global_batch()[0]["tokens"]
        assert batch.is_pinned() and int(batch[0, 0]) == 1
    finally:
        batches.close()
