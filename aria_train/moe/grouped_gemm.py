"""One matmul per expert, issued as a single grouped operation.

Rows of `x` are sorted by expert; `counts[e]` rows belong to expert e. On CUDA in bf16 (or under
bf16 autocast) with 16-byte aligned widths this is torch._grouped_mm (one kernel for all
experts); elsewhere the
rows are scattered into a zero-padded [E, max_count, in] block and multiplied with one bmm,
which is batched (not a Python loop) and exact in fp32.
"""

import torch


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """x: [N, in] sorted by expert; weight: [E, in, out]; counts: [E] int64 -> [N, out]"""
    if _can_use_grouped_mm(x, weight):
        # Under bf16 autocast the fp32 weights and activations go in as bf16, as autocast
        # would cast them for a plain matmul (autocast does not know _grouped_mm).
        offsets = torch.cumsum(counts, dim=0).to(torch.int32)
        return torch._grouped_mm(x.to(torch.bfloat16), weight.to(torch.bfloat16), offs=offsets)
    return _padded_bmm(x, weight, counts)


def _can_use_grouped_mm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not (x.is_cuda and hasattr(torch, "_grouped_mm")):
        return False
    autocast_bf16 = torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16
    if not (autocast_bf16 or (x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16)):
        return False
    return x.shape[-1] % 8 == 0 and weight.shape[-1] % 8 == 0


def _padded_bmm(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    num_experts = weight.shape[0]
    if x.shape[0] == 0:
        # keeps weight and x in the graph: both get (zero) grads, so autograd still runs the
        # backward of whatever produced x (e.g. an expert-parallel all-to-all) on this rank;
        # the result has x's dtype like the non-empty path
        return x.new_zeros(0, weight.shape[-1]) + (0 * weight.sum()).to(x.dtype) + 0 * x.sum()
    counts_list = counts.tolist()
    max_count = max(counts_list)
    starts = torch.cumsum(counts, 0) - counts  # [E]
    expert_of_row = torch.repeat_interleave(torch.arange(num_experts, device=x.device), counts)
    slot_of_row = torch.arange(x.shape[0], device=x.device) - starts[expert_of_row]
    flat_index = expert_of_row * max_count + slot_of_row  # row's place in the padded block
    padded = x.new_zeros(num_experts * max_count, x.shape[-1])
    padded = padded.index_copy(0, flat_index, x).view(num_experts, max_count, -1)
    out = torch.bmm(padded, weight.to(x.dtype)).view(num_experts * max_count, -1)
    return out.index_select(0, flat_index)
