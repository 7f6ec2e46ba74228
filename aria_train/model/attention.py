"""Causal multi-head self-attention: plain causal, or document-causal over packed sequences.

Optional QK-norm (aria_train.model.qk_norm): each head's queries and keys are normalised over
the head dimension before RoPE.

Without a DocumentMask every token attends to every earlier token of its row
(scaled_dot_product_attention with is_causal: flash on GPU, transformers' numbers). With one
(`data.reset_attention_mask`), a token attends only to earlier tokens of its own document:
  - CUDA, bf16/fp16, torch with `torch.nn.attention.varlen`: the flash varlen kernel over the
    flattened [B x S] tokens cut at every document start (cu_seqlens), causal inside each
    document; no [S, S] mask exists;
  - elsewhere (CPU, fp32): SDPA with a boolean [B, 1, S, S] mask (causal AND same document),
    built once per forward and shared by the layers. The same numbers, O(S^2) memory; on CUDA
    this fallback is announced once (a 64K sequence would need a 4 GiB mask).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from aria_train.model.packed_attention import varlen_available
from aria_train.model.qk_norm import apply_norm, make_qk_norm
from aria_train.model.rope import apply_rotary


@dataclass
class DocumentMask:
    """Where documents start in a packed micro-batch.

    document_ids: [B, S] document index of each token (any labels, equal within a document;
    documents are contiguous); cu_seqlens: [D + 1] int32 token offsets of the D documents of the
    flattened batch (row boundaries are document boundaries); max_seqlen: the longest one."""

    document_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    _dense: Optional[torch.Tensor] = field(default=None, repr=False)

    @classmethod
    def from_document_ids(cls, document_ids: torch.Tensor, device=None, non_blocking: bool = False) -> "DocumentMask":
        """document_ids [B, S] on the host (so the offsets and the longest document are known
        without reading the device) -> the mask, its tensors moved to `device`."""
        ids = document_ids.cpu()
        starts = torch.ones_like(ids, dtype=torch.bool)
        starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
        offsets = torch.nonzero(starts.reshape(-1)).reshape(-1)
        cu = torch.cat([offsets, torch.tensor([ids.numel()])]).to(torch.int32)
        max_seqlen = int((cu[1:] - cu[:-1]).max()) if ids.numel() else 0
        device = device if device is not None else document_ids.device
        return cls(document_ids.to(device, non_blocking=non_blocking), cu.to(device, non_blocking=non_blocking),
                   max_seqlen)

    def dense(self) -> torch.Tensor:
        """[B, 1, S, S] bool: query t may attend key s (s <= t, same document). Built once."""
        if self._dense is None:
            ids = self.document_ids
            seq = ids.shape[1]
            causal = torch.ones(seq, seq, dtype=torch.bool, device=ids.device).tril()
            self._dense = ((ids[:, :, None] == ids[:, None, :]) & causal).unsqueeze(1)
        return self._dense


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, qk_norm: str = "none", eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        self.q_norm = make_qk_norm(qk_norm, head_dim, eps)
        self.k_norm = make_qk_norm(qk_norm, head_dim, eps)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, S, heads * head_dim] -> [B, heads, S, head_dim]"""
        batch, seq, _ = t.shape
        return t.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

    def queries_keys(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, S, H] -> (q, k), each [B, heads, S, head_dim]: projected, QK-normed, rotated."""
        q = apply_rotary(apply_norm(self.q_norm, self._split_heads(self.q_proj(x))), cos, sin)
        k = apply_rotary(apply_norm(self.k_norm, self._split_heads(self.k_proj(x))), cos, sin)
        return q, k

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                document_mask: Optional[DocumentMask] = None) -> torch.Tensor:
        """x: [B, S, H]; cos, sin: [B, S, head_dim]; document_mask or None (plain causal) -> [B, S, H]"""
        batch, seq, _ = x.shape
        q, k = self.queries_keys(x, cos, sin)  # [B, heads, S, head_dim]
        v = self._split_heads(self.v_proj(x))
        if document_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif varlen_available(q):
            out = _varlen_causal(q, k, v, document_mask)
        else:
            _note_dense_fallback(q)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=document_mask.dense())
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


def _varlen_causal(q, k, v, mask: DocumentMask) -> torch.Tensor:
    """q, k, v [B, heads, S, d] -> [B, heads, S, d], causal inside each document."""
    from torch.nn.attention.varlen import varlen_attn

    batch, heads, seq, dim = q.shape
    packed = [t.transpose(1, 2).reshape(batch * seq, heads, dim) for t in (q, k, v)]
    out = varlen_attn(*packed, mask.cu_seqlens, mask.cu_seqlens, mask.max_seqlen, mask.max_seqlen,
                      **_varlen_causal_kwargs())
    return out.view(batch, seq, heads, dim).transpose(1, 2)


@functools.lru_cache(maxsize=None)
def _varlen_causal_kwargs() -> dict:
    """torch 2.10 spells causal `is_causal=True`; later versions `window_size=(-1, 0)`."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    return {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}


def _note_dense_fallback(q: torch.Tensor) -> None:
    if q.is_cuda and not _DENSE_NOTED:
        _DENSE_NOTED.append(True)
        warnings.warn(f"document masking on {q.device} in {q.dtype} without torch's varlen flash kernel: using a "
                      f"dense [S, S] mask in SDPA (O(S^2) memory)", stacklevel=3)


_DENSE_NOTED: list = []
