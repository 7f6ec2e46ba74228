"""grouped_matmul runs torch._grouped_mm on CPU as on the GPU (issue 15, defect 6) and never
hands it zero rows (defect 5)."""

import pytest
import torch

from aria_train.moe import grouped_gemm
from aria_train.moe.grouped_gemm import grouped_matmul

H, OUT = 16, 24


class GroupedMMSpy:
    """Counts torch._grouped_mm calls (and the rows each got), then runs the real op."""

    def __init__(self, monkeypatch):
        for dtype in (torch.float32, torch.bfloat16):  # the one-time kernel probe is not a call we count
            getattr(grouped_gemm, "_kernel_runs", lambda *a: None)("cpu", dtype)
        self.real, self.rows = torch._grouped_mm, []
        monkeypatch.setattr(torch, "_grouped_mm", self)

    def __call__(self, x, w, offs=None, **kw):
        self.rows.append(x.shape[0])
        return self.real(x, w, offs=offs, **kw)


def _loop(x, weight, counts):
    outs, start = [], 0
    for e, n in enumerate(counts.tolist()):
        outs.append(x[start : start + n] @ weight[e])
        start += n
    return torch.cat(outs)


def _inputs(counts, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor(counts)
    x = torch.randn(int(counts.sum()), H, generator=g).to(dtype).requires_grad_(True)
    w = torch.randn(len(counts), H, OUT, generator=g).to(dtype).requires_grad_(True)
    return x, w, counts


@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0, 7, 0], [1, 1, 1, 1], [9]])
def test_cpu_fp32_uses_grouped_mm_and_equals_per_expert_matmuls_exactly(monkeypatch, counts):
    spy = GroupedMMSpy(monkeypatch)
    x, w, counts_t = _inputs(counts)
    y = grouped_matmul(x, w, counts_t)
    assert spy.rows == [sum(counts)]  # the grouped kernel ran, once, on the real rows only
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    gx, gw = torch.autograd.grad((y * grad).sum(), (x, w))
    xr, wr = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    yr = _loop(xr, wr, counts_t)
    gxr, gwr = torch.autograd.grad((yr * grad).sum(), (xr, wr))
    assert torch.equal(y, yr) and torch.equal(gx, gxr) and torch.equal(gw, gwr)
    assert torch.all(gw[counts_t == 0] == 0)  # experts without rows get zero weight gradients


def test_expanded_upstream_gradient_is_accepted():
    """y.sum().backward() hands _grouped_mm's backward a stride-0 gradient, which it rejects."""
    x, w, counts = _inputs([2, 3, 0, 4])
    grouped_matmul(x, w, counts).sum().backward()
    ref_x, ref_w = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    _loop(ref_x, ref_w, counts).sum().backward()
    assert torch.equal(x.grad, ref_x.grad) and torch.equal(w.grad, ref_w.grad)


@pytest.mark.parametrize("how", ["bf16-tensors", "bf16-autocast"])
def test_bf16_on_cpu_goes_through_grouped_mm(monkeypatch, how):
    spy = GroupedMMSpy(monkeypatch)
    x, w, counts = _inputs([5, 0, 3, 8], dtype=torch.bfloat16 if how == "bf16-tensors" else torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "bf16-autocast"):
        y = grouped_matmul(x, w, counts)
    assert spy.rows == [16] and y.dtype == torch.bfloat16
    reference = _loop(x.detach().float(), w.detach().float(), counts)
    torch.testing.assert_close(y.float(), reference, rtol=2e-2, atol=5e-2)
    y.float().sum().backward()
    assert w.grad is not None and torch.all(w.grad[1] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_rows_never_reach_the_grouped_kernel(monkeypatch, dtype):
    """Defect 5: on the GPU path (here forced) an empty input takes the zero-row path before
    _grouped_mm; weight and input stay in the graph with zero gradients."""
    monkeypatch.setattr(grouped_gemm, "_can_use_grouped_mm", lambda x, w: True)
    spy = GroupedMMSpy(monkeypatch)
    w = torch.randn(3, H, OUT, dtype=dtype, requires_grad=True)
    x = torch.zeros(0, H, dtype=dtype, requires_grad=True)
    y = grouped_matmul(x, w, torch.zeros(3, dtype=torch.long))
    assert spy.rows == []
    assert y.shape == (0, OUT) and y.dtype == dtype
    y.sum().backward()
    assert torch.all(w.grad == 0) and x.grad.shape == (0, H)


def test_fp64_falls_back_to_the_padded_bmm(monkeypatch):
    spy = GroupedMMSpy(monkeypatch)
    x, w, counts = _inputs([2, 0, 3], dtype=torch.float64)
    y = grouped_matmul(x, w, counts)
    assert spy.rows == []
    torch.testing.assert_close(y, _loop(x, w, counts), rtol=1e-12, atol=1e-12)
