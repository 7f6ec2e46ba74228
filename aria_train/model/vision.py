"""ARIA's vision encoder: a SigLIP-shaped ViT over images at their native aspect ratio.

Images are not padded to a square. Each image (crop) of h x w patches becomes a sequence of
h*w patch vectors; the sequences of all images in a micro-batch are packed into one
[total_patches, C*p*p] tensor, and attention is block-diagonal (an image attends only to its own
patches). Numerically this is transformers' Idefics3VisionTransformer (the tower of
AriaForConditionalGeneration) run on padded images with a patch attention mask, restricted to
the real patches:
  - patch embedding: the Conv2d(kernel = stride = patch) weights, applied as a matrix product to
    flattened (c, y, x) patches;
  - position embedding: a learned (image_size/patch)^2 grid; an h x w image takes the bucketed
    positions Idefics3 computes (fractional coordinate i/h bucketed into the grid), so a 35x35
    crop spreads over the 70x70 grid;
  - pre-norm encoder layers (LayerNorm, attention with biases, LayerNorm, GELU-tanh MLP);
  - the output is the last encoder layer's hidden state, BEFORE post_layernorm (ARIA takes
    hidden_states[-1]); post_layernorm is kept, unused, so checkpoints load as they are.
Parameter names are transformers' (embeddings.*, encoder.layers.N.*, post_layernorm.*).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aria_train.model.vision_config import VisionConfig
from aria_train.nn.image_patches import Grid, grid_list, pack_images, patchify  # noqa: F401 (re-exported)


@functools.lru_cache(maxsize=4096)
def _bucketed_positions_cpu(h: int, w: int, side: int) -> torch.Tensor:
    # Same float32 arithmetic as Idefics3VisionEmbeddings.forward, so the buckets are identical.
    boundaries = torch.arange(1 / side, 1.0, 1 / side, dtype=torch.float32)
    frac_h = torch.arange(h, dtype=torch.float32) * (1.0 / torch.tensor(h))
    frac_w = torch.arange(w, dtype=torch.float32) * (1.0 / torch.tensor(w))
    frac_h = torch.clamp(frac_h, max=1.0 - 1e-6)
    frac_w = torch.clamp(frac_w, max=1.0 - 1e-6)
    bucket_h = torch.bucketize(frac_h, boundaries, right=True)
    bucket_w = torch.bucketize(frac_w, boundaries, right=True)
    return (bucket_h[:, None] * side + bucket_w[None, :]).reshape(-1)


def bucketed_position_ids(grid: Grid, side: int, device=None) -> torch.Tensor:
    """grid [(h, w)] -> position ids [sum h*w] into a side x side position table (Idefics3's
    bucketing: patch (i, j) of an h x w image takes grid cell (floor-bucket(i/h), floor-bucket(j/w)))."""
    ids = []
    for h, w in grid_list(grid):
        if not (1 <= h <= side and 1 <= w <= side):
            raise ValueError(f"image of {h}x{w} patches does not fit the {side}x{side} position grid")
        ids.append(_bucketed_positions_cpu(h, w, side))
    return torch.cat(ids).to(device)


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


def _varlen_available(x: torch.Tensor) -> bool:
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
    if backend == "auto":
        backend = "varlen" if _varlen_available(q) else "loop"
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


# --------------------------------------------------------------------------------------------
# Modules


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.num_patches_per_side = cfg.num_patches_per_side
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.num_patches_per_side**2, cfg.hidden_size)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """patches [T, C*p*p], position_ids [T] -> [T, D]"""
        weight = self.patch_embedding.weight.flatten(1)
        x = F.linear(patches.to(weight.dtype), weight, self.patch_embedding.bias)
        return x + self.position_embedding(position_ids)


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, segments: Segments, backend: str = "auto") -> torch.Tensor:
        """x [T, D] packed -> [T, D]; attention stays inside each segment."""
        shape = (x.shape[0], self.num_heads, self.head_dim)
        q, k, v = self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape)
        out = packed_attention(q, k, v, segments, segments, backend)
        return self.out_proj(out.reshape(x.shape[0], -1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # = transformers' gelu_pytorch_tanh


class VisionEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor, segments: Segments, backend: str = "auto") -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), segments, backend)
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(cfg) for _ in range(cfg.num_layers))


class VisionTransformer(nn.Module):
    """SigLIP-shaped ViT over packed variable-size images.

    forward(patches [T, C*p*p], grid [(h_i, w_i)] with sum h_i*w_i = T) -> features [T, D],
    the last encoder layer's output (before post_layernorm), packed in the input order.
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # kept for checkpoints; unused
        self.activation_checkpointing = cfg.activation_checkpointing
        self.attention_backend = "auto"  # see packed_attention

    def forward(self, patches: torch.Tensor, grid: Grid, position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """patches [T, C*p*p] (images concatenated, each row-major, see patchify);
        grid: per image (h_patches, w_patches); position_ids [T] (default: bucketed from grid)
        -> [T, hidden] before post_layernorm."""
        grid = grid_list(grid)
        segments = Segments([h * w for h, w in grid])
        if segments.total != patches.shape[0]:
            raise ValueError(f"grid covers {segments.total} patches but {patches.shape[0]} were given")
        if position_ids is None:
            position_ids = bucketed_position_ids(grid, self.cfg.num_patches_per_side, patches.device)
        x = self.embeddings(patches, position_ids)
        for layer in self.encoder.layers:
            if self.activation_checkpointing == "layer" and self.training:
                x = checkpoint(layer, x, segments, self.attention_backend, use_reentrant=False)
            else:
                x = layer(x, segments, self.attention_backend)
        return x

    def forward_images(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """list of [C, H_i, W_i] (sides multiples of the patch size) -> list of [h_i*w_i, D]."""
        patches, grid = pack_images(images, self.cfg.patch_size)
        out = self(patches, grid)
        return list(out.split([h * w for h, w in grid]))

    @torch.no_grad()
    def init_weights(self, seed: int = 0, prefix: str = "vision_tower.") -> None:
        """LayerNorms 1/0, biases 0, other weights Normal(0, init_std or 1/sqrt(fan_in)), each tensor from its own
        seeded generator (independent of the rest of the model)."""
        _init_module_(self, self.cfg.init_std, seed, prefix)


def _init_module_(module: nn.Module, std: Optional[float], seed: int, prefix: str) -> None:
    norms = {n for n, m in module.named_modules() if isinstance(m, nn.LayerNorm)}
    for name, param in module.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if owner in norms:
            param.fill_(1.0 if leaf == "weight" else 0.0)
        elif leaf.endswith("bias"):
            param.zero_()
        else:
            # None = 1/sqrt(fan_in): SigLIP-size widths get about the usual 0.02-0.03, while a
            # narrow test preset keeps its signal through the projector's chain of linears
            # instead of drowning it under the biases.
            scale = std if std is not None else param[0].numel() ** -0.5
            seeded_normal_(param, scale, seed, prefix + name)


def seeded_normal_(tensor: torch.Tensor, std: float, seed: int, name: str) -> None:
    generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    values = torch.empty(tensor.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
    tensor.copy_(values)


__all__ = [
    "Segments",
    "VisionTransformer",
    "bucketed_position_ids",
    "pack_images",
    "packed_attention",
    "patchify",
    "seeded_normal_",
]
