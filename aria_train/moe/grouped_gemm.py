"""One matmul per expert, issued as a single grouped operation.

Rows of `x` are sorted by expert; `counts[e]` rows belong to expert e. The work is
torch._grouped_mm (one kernel for all experts, offsets on the device: no host synchronisation)
wherever torch has it for the device and dtype: CUDA in bf16 (widths multiples of 8, the
kernel's 16-byte alignment), CPU in fp32 / bf16 / fp16 (torch 2.13 has a CPU kernel), so CI runs
the op the GPU runs. The compute dtype is autocast's when autocast is on (autocast does not know
_grouped_mm, so the cast is done here, as autocast would for a plain matmul), else x's.

Elsewhere (older torch, fp64, unaligned widths) the rows are scattered into a zero-padded
[E, max_count, in] block and multiplied with one bmm: batched and exact, but E x max_count rows
of work and a host read of the counts per call.

No rows at all (N == 0, e.g. a rank that received no tokens under expert parallelism) never
reaches a kernel: a zero-row result that keeps x and the weight in the autograd graph (zero
gradients), because empty groups give wrong weight gradients in some grouped-GEMM kernels and
autograd must still run the backward of whatever produced x on this rank.
"""

from __future__ import annotations

import functools
import warnings

import torch


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """x: [N, in] sorted by expert; weight: [E, in, out]; counts: [E] int -> [N, out] in the
    compute dtype."""
    dtype = compute_dtype(x)
    if x.shape[0] == 0:
        return _zero_rows(x, weight, dtype)
    if _can_use_grouped_mm(x, weight):
        offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
        out = torch._grouped_mm(x.to(dtype), weight.to(dtype), offs=offsets)
        return ContiguousGrad.apply(out)
    return _padded_bmm(x.to(dtype), weight.to(dtype), counts)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on x computes in: autocast's when it is on for x's device, else x's."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: _grouped_mm's backward
    rejects an expanded one (`y.sum().backward()` sends a stride-0 tensor)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _can_use_grouped_mm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    dtype, device = compute_dtype(x), x.device.type
    if device == "cuda":
        aligned = x.shape[-1] % 8 == 0 and weight.shape[-1] % 8 == 0
        return dtype == torch.bfloat16 and aligned and _kernel_runs("cuda", dtype)
    if device == "cpu":
        return dtype in (torch.float32, torch.bfloat16, torch.float16) and _kernel_runs("cpu", dtype)
    return False


@functools.lru_cache(maxsize=None)
def _kernel_runs(device: str, dtype: torch.dtype) -> bool:
    """Whether this torch build has a _grouped_mm kernel for (device, dtype): tried once on a tiny
    input. A build without one takes the padded bmm, and says so once."""
    try:
        x = torch.ones(4, 8, device=device, dtype=dtype)
        w = torch.ones(2, 8, 8, device=device, dtype=dtype)
        torch._grouped_mm(x, w, offs=torch.tensor([1, 4], dtype=torch.int32, device=device))
        return True
    except (RuntimeError, NotImplementedError) as error:
        warnings.warn(f"torch {torch.__version__} has no _grouped_mm for {device}/{dtype} ({str(error)[:80]}); "
                      f"routed experts use the padded bmm there", stacklevel=3)
        return False


def _zero_rows(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # keeps weight and x in the graph: both get (zero) grads, so autograd still runs the
    # backward of whatever produced x (e.g. an expert-parallel all-to-all) on this rank
    return x.new_zeros(0, weight.shape[-1], dtype=dtype) + (0 * weight.sum()).to(dtype) + (0 * x.sum()).to(dtype)


def _padded_bmm(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    num_experts = weight.shape[0]
    counts_list = counts.tolist()  # the padded block's size: a host read
    max_count = max(counts_list)
    starts = torch.cumsum(counts, 0) - counts  # [E]
    expert_of_row = torch.repeat_interleave(torch.arange(num_experts, device=x.device), counts, output_size=x.shape[0])
    slot_of_row = torch.arange(x.shape[0], device=x.device) - starts[expert_of_row]
    flat_index = expert_of_row * max_count + slot_of_row  # row's place in the padded block
    padded = x.new_zeros(num_experts * max_count, x.shape[-1])
    padded = padded.index_copy(0, flat_index, x).view(num_experts, max_count, -1)
    out = torch.bmm(padded, weight).view(num_experts * max_count, -1)
    return out.index_select(0, flat_index)
