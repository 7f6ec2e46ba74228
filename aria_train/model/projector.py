"""ARIA's projector: learned queries cross-attend to one image's ViT features, then an FFN maps
them to the decoder width.

A crop padded (in transformers) to a 35x35 patch square (490 px) gets 128 queries, to 70x70
(980 px) 256 queries: `ProjectorConfig.patch_to_query`. Here images are not padded: an image of
h x w patches takes the queries of the smallest configured square side >= max(h, w) (ARIA resizes
a crop so its long side is exactly 490 or 980 px, i.e. 35 or 70 patches), and attends over its
h*w real patches only — what transformers' key padding mask computes.

Numerically transformers' AriaProjector, with its parameter names and layouts:
    query                                    [max_queries, Dv]
    cross_attn.layer_norm / layer_norm_kv    LayerNorm(Dv) on queries / on image features
    cross_attn.{q,k,v}_proj.weight           [Dv, Dv], no bias
    cross_attn.multihead_attn.in_proj_weight [3*Dv, Dv] (q, k, v rows), in_proj_bias [3*Dv]
    cross_attn.multihead_attn.out_proj       Linear(Dv, Dv) with bias
    cross_attn.linear                        Linear(Dv, Dv) with bias
    layer_norm                               LayerNorm(Dv)
    feed_forward.linear_in                   [Dt, Dv], no bias   (GELU-tanh, as gelu_new)
    feed_forward.linear_out                  [Dt, Dt], no bias
(nn.MultiheadAttention's in-projection applies after q/k/v_proj: two projections in a row, as in
ARIA's checkpoints.)
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aria_train.model.vision_config import ProjectorConfig
from aria_train.model.vision import Grid, Segments, _init_module_, grid_list, packed_attention


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """transformers' NewGELUActivation, formula for formula (F.gelu(approximate='tanh') differs
    in the last bits)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class _MultiheadAttentionParams(nn.Module):
    """The parameters of nn.MultiheadAttention(D, heads, bias=True), under its names."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"projector heads {num_heads} do not divide the vision width {dim}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.multihead_attn = _MultiheadAttentionParams(dim)
        self.linear = nn.Linear(dim, dim)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.layer_norm_kv = nn.LayerNorm(dim, eps=eps)

    def forward(
        self, features: torch.Tensor, queries: torch.Tensor, seg_q: Segments, seg_k: Segments, backend: str = "auto"
    ) -> torch.Tensor:
        """features [Tk, Dv] (packed images), queries [Tq, Dv] (packed per image) -> [Tq, Dv]"""
        dim = features.shape[-1]
        w, b = self.multihead_attn.in_proj_weight, self.multihead_attn.in_proj_bias
        q = F.linear(self.q_proj(self.layer_norm(queries)), w[:dim], b[:dim])
        kv = self.layer_norm_kv(features)
        k = F.linear(self.k_proj(kv), w[dim : 2 * dim], b[dim : 2 * dim])
        v = F.linear(self.v_proj(kv), w[2 * dim :], b[2 * dim :])
        head_dim = dim // self.num_heads
        out = packed_attention(
            q.view(-1, self.num_heads, head_dim),
            k.view(-1, self.num_heads, head_dim),
            v.view(-1, self.num_heads, head_dim),
            seg_q,
            seg_k,
            backend,
        )
        out = self.multihead_attn.out_proj(out.reshape(-1, dim))
        return self.linear(out)


class ProjectorMLP(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.linear_in = nn.Linear(in_features, hidden_features, bias=False)
        self.linear_out = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_out(gelu_new(self.linear_in(x)))


class Projector(nn.Module):
    """forward(features [T, Dv] packed, grid [(h_i, w_i)]) -> [sum_i Q_i, Dt], image by image,
    query by query (the order of the image tokens in the text)."""

    def __init__(self, vision_hidden: int, text_hidden: int, vision_heads: int, cfg: ProjectorConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.sides = sorted(cfg.sides().items())  # [(side, queries)] ascending
        heads = cfg.num_heads if cfg.num_heads is not None else vision_heads
        self.query = nn.Parameter(torch.zeros(cfg.max_queries, vision_hidden))
        self.cross_attn = CrossAttention(vision_hidden, heads, cfg.layer_norm_eps)
        self.layer_norm = nn.LayerNorm(vision_hidden, eps=cfg.layer_norm_eps)
        self.feed_forward = ProjectorMLP(vision_hidden, text_hidden, text_hidden)
        self.attention_backend = "auto"

    def queries_for(self, h: int, w: int) -> int:
        """Learned queries for an image of h x w patches (smallest configured square side that
        holds it)."""
        longest = max(h, w)
        for side, queries in self.sides:
            if longest <= side:
                return queries
        raise ValueError(
            f"image of {h}x{w} patches is larger than every projector crop size "
            f"({', '.join(f'{s}x{s}' for s, _ in self.sides)} patches)"
        )

    def num_queries(self, grid: Grid) -> list[int]:
        return [self.queries_for(h, w) for h, w in grid_list(grid)]

    def forward(
        self, features: torch.Tensor, grid: Optional[Grid], num_queries: Optional[Sequence[int]] = None,
        key_lengths: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        """features [T, Dv] (ViT output, packed), grid per image (h, w) with sum h*w = T;
        num_queries per image (default: from the grid) -> [sum num_queries, Dt]. For items that
        are not single images (videos: t*h*w tokens; audio clips), give key_lengths (tokens per
        item) and num_queries instead of the grid."""
        if key_lengths is None:
            grid = grid_list(grid)
            key_lengths = [h * w for h, w in grid]
            if num_queries is None:
                num_queries = self.num_queries(grid)
        seg_k = Segments(list(key_lengths))
        seg_q = Segments(list(num_queries))
        if seg_k.total != features.shape[0]:
            raise ValueError(f"grid covers {seg_k.total} patches but {features.shape[0]} features were given")
        queries = torch.cat([self.query[:n] for n in seg_q.lengths]).to(features.dtype)
        out = self.cross_attn(features, queries, seg_q, seg_k, self.attention_backend)
        return self.feed_forward(self.layer_norm(out))

    @torch.no_grad()
    def init_weights(self, seed: int = 0, prefix: str = "multi_modal_projector.") -> None:
        """As the ViT: LayerNorms 1/0, biases 0, weights and queries Normal(0, init_std or 1/sqrt(fan_in))
        (transformers' trunc_normal_(std) truncates at +-2 absolute, i.e. effectively never)."""
        _init_module_(self, self.cfg.init_std, seed, prefix)


__all__ = ["CrossAttention", "Projector", "ProjectorMLP", "gelu_new"]
