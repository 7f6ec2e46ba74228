"""Attention over packed variable-length sequences (images, videos, audio clips of one
micro-batch in one tensor): block-diagonal, no causal mask. Used by the ViT and the projector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Segments:
    """Lengths of packed sequences and what attention kernels need to know about them."""

    lengths: list[int]

    def __post_init__(self):
        self.lengths = [int(n) for n in self.lengths]
        if any(n <= 0 for n in self.lengths):
            raise ValueError(f"segment lengths must be positive, got {self.lengths}")
        self.max_len = max(self.lengths) if self.lengths else 0
        self.total = sum(self.lengths)

    def cu_seqlens(self, device) -> torch.Tensor:
        cu = [0]
        for n in self.lengths:
            cu.append(cu[-1] + n)
        return torch.tensor(cu, dtype=torch.int32, device=device)

    def offsets(self) -> list[int]:
        out, acc = [], 0
        for n in self.lengths:
            out.append(acc)
            acc += n
        return out


ATTENTION_BACKENDS = ("auto", "loop", "mask", "varlen")


def varlen_available(x: torch.Tensor) -> bool:
    """torch's varlen flash kernel (torch.nn.attention.varlen) can run on x: CUDA, fp16/bf16."""
    if not (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def packed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg_q: Segments, seg_k: Segments, backend: str = "auto"
) -> torch.Tensor:
    """Block-diagonal attention over packed sequences, no causal mask.

    q [Tq, H, d], k/v [Tk, H, d]; segment i of q attends only to segment i of k/v (seg_q and
    seg_k have the same number of segments) -> [Tq, H, d]. Scale 1/sqrt(d).

    backend: "varlen" = torch's flash varlen kernel (CUDA, fp16/bf16); "loop" = SDPA per group of
    equally long segments (exact, O(sum n^2) memory; the CPU path); "mask" = one SDPA call with a
    [Tq, Tk] block-diagonal boolean mask (O(Tq*Tk) memory: small inputs only); "auto" = varlen
    where it can run, else loop.
    """
    if len(seg_q.lengths) != len(seg_k.lengths):
        raise ValueError(f"{len(seg_q.lengths)} query segments but {len(seg_k.lengths)} key segments")
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not one of {ATTENTION_BACKENDS}")
    if seg_q.total == 0:  # no images in this micro-batch (an encoder with experts still runs)
        return q.new_zeros(0, *q.shape[1:-1], v.shape[-1])
    if backend == "auto":
        backend = "varlen" if varlen_available(q) else "loop"
    if backend == "varlen":
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(
            q, k, v, seg_q.cu_seqlens(q.device), seg_k.cu_seqlens(q.device), seg_q.max_len, seg_k.max_len
        )
    if backend == "mask":
        sq = torch.repeat_interleave(torch.arange(len(seg_q.lengths)), torch.tensor(seg_q.lengths))
        sk = torch.repeat_interleave(torch.arange(len(seg_k.lengths)), torch.tensor(seg_k.lengths))
        mask = (sq[:, None] == sk[None, :]).to(q.device)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
            attn_mask=mask,
        )
        return out.squeeze(0).transpose(0, 1)
    return _loop_attention(q, k, v, seg_q, seg_k)


def _loop_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg_q: Segments, seg_k: Segments) -> torch.Tensor:
    """packed_attention's "loop" backend: one batched SDPA per distinct (query length, key length)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(seg_q.lengths, seg_k.lengths)):
        groups.setdefault(key, []).append(i)
    if len(groups) == 1 and len(seg_q.lengths) > 0:
        (lq, lk), _ = next(iter(groups.items()))
        n = len(seg_q.lengths)
        out = F.scaled_dot_product_attention(
            q.view(n, lq, *q.shape[1:]).transpose(1, 2),
            k.view(n, lk, *k.shape[1:]).transpose(1, 2),
            v.view(n, lk, *v.shape[1:]).transpose(1, 2),
        )
        return out.transpose(1, 2).reshape(q.shape[0], *q.shape[1:-1], v.shape[-1])
    off_q, off_k = seg_q.offsets(), seg_k.offsets()
    rows, outs = [], []
    for (lq, lk), members in groups.items():
        rq = torch.cat([torch.arange(off_q[i], off_q[i] + lq) for i in members]).to(q.device)
        rk = torch.cat([torch.arange(off_k[i], off_k[i] + lk) for i in members]).to(q.device)
        n = len(members)
        out = F.scaled_dot_product_attention(
            q[rq].view(n, lq, *q.shape[1:]).transpose(1, 2),
            k[rk].view(n, lk, *k.shape[1:]).transpose(1, 2),
            v[rk].view(n, lk, *v.shape[1:]).transpose(1, 2),
        )
        rows.append(rq)
        outs.append(out.transpose(1, 2).reshape(n * lq, *q.shape[1:-1], v.shape[-1]))
    order = torch.cat(rows)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return torch.cat(outs)[inverse]
