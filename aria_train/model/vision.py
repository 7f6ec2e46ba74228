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

import zlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aria_train.model.norm import RMSNorm
from aria_train.model.qk_norm import apply_norm, make_qk_norm
from aria_train.model.vision_config import VisionConfig
from aria_train.model.vision_embeddings import VisionEmbeddings
from aria_train.moe.experts import expert_parameter_layouts
from aria_train.moe.layer import MoELayer
from aria_train.nn.media import AUDIO, IMAGE, VIDEO, MediaBatch
from aria_train.model.packed_attention import ATTENTION_BACKENDS, Segments, packed_attention  # noqa: F401 (re-exported)
from aria_train.model.vision_positions import bucketed_position_ids  # noqa: F401 (re-exported)
from aria_train.nn.image_patches import Grid, grid_list, pack_images, patchify  # noqa: F401 (re-exported)


# --------------------------------------------------------------------------------------------
# Modules


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.q_norm = make_qk_norm(cfg.qk_norm, self.head_dim, cfg.layer_norm_eps)
        self.k_norm = make_qk_norm(cfg.qk_norm, self.head_dim, cfg.layer_norm_eps)

    def queries_keys(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, D] -> (q, k), each [T, heads, head_dim], QK-normed when configured."""
        shape = (x.shape[0], self.num_heads, self.head_dim)
        return apply_norm(self.q_norm, self.q_proj(x).view(shape)), apply_norm(self.k_norm, self.k_proj(x).view(shape))

    def forward(self, x: torch.Tensor, segments: Segments, backend: str = "auto") -> torch.Tensor:
        """x [T, D] packed -> [T, D]; attention stays inside each segment."""
        q, k = self.queries_keys(x)
        v = self.v_proj(x).view(q.shape[0], self.num_heads, self.head_dim)
        out = packed_attention(q, k, v, segments, segments, backend)
        return self.out_proj(out.reshape(x.shape[0], self.num_heads * self.head_dim))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # = transformers' gelu_pytorch_tanh


@dataclass
class VisionOutput:
    features: torch.Tensor  # [T, D] last encoder layer's output (before post_layernorm), items packed in order
    lengths: list  # tokens of each item, in order
    balance_loss: torch.Tensor  # scalar, the MoE layers' (coefficient applied; 0 without experts)
    z_loss: torch.Tensor  # scalar
    router_stats: list = field(default_factory=list)  # per MoE layer, aria_train.moe.layer.RouterStats


class VisionEncoderLayer(nn.Module):
    """Pre-norm: attention, then the MLP: SigLIP's GELU MLP, or (vision.moe) a MoE layer of
    aria_train.moe, whose routed experts expert parallelism shards like the decoder's."""

    def __init__(self, cfg: VisionConfig, is_moe: bool = False):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MoELayer(cfg.hidden_size, cfg.moe.layer_config(cfg.intermediate_size)) if is_moe else VisionMLP(cfg)

    def forward(self, x: torch.Tensor, segments: Segments, backend: str = "auto"):
        """x [T, D] -> (x, balance_loss, z_loss, router stats or None)"""
        x = x + self.self_attn(self.layer_norm1(x), segments, backend)
        h = self.layer_norm2(x)
        if isinstance(self.mlp, MoELayer):
            out = self.mlp(h)
            return x + out.hidden, out.balance_loss, out.z_loss, out.stats
        zero = x.new_zeros((), dtype=torch.float32)
        return x + self.mlp(h), zero, zero, None


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        moe_layers = set(cfg.moe_layers)
        self.layers = nn.ModuleList(VisionEncoderLayer(cfg, i in moe_layers) for i in range(cfg.num_layers))


class VisionTransformer(nn.Module):
    """SigLIP-shaped ViT over packed variable-size images (and, with IMP's options, videos as
    tubelets and audio clips: one tower, a patch embedding per modality).

    forward(patches [T, C*p*p], grid [(h_i, w_i)] with sum h_i*w_i = T) -> features [T, D],
    the last encoder layer's output (before post_layernorm), packed in the input order.
    encode(MediaBatch) -> VisionOutput: every item of a micro-batch (aria_train.nn.media) in its
    order, with the MoE layers' losses (use it when vision.moe is on).
    """

    def __init__(self, cfg: VisionConfig, audio=None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embeddings = VisionEmbeddings(cfg)
        if audio is not None and audio.enabled:
            from aria_train.model.audio import AudioEmbeddings

            self.audio_embeddings = AudioEmbeddings(audio, cfg.hidden_size)
        self.encoder = VisionEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # kept for checkpoints; unused
        self.activation_checkpointing = cfg.activation_checkpointing
        self.attention_backend = "auto"  # see packed_attention

    @property
    def has_experts(self) -> bool:
        """With routed experts every rank must run the tower for every micro-batch, images or
        not: expert parallelism's all-to-alls need every rank of the EP group."""
        return bool(self.cfg.moe_layers)

    def forward(self, patches: torch.Tensor, grid: Grid, position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """patches [T, C*p*p] (images concatenated, each row-major, see patchify);
        grid: per image (h_patches, w_patches); position_ids [T] (default: from grid)
        -> [T, hidden] before post_layernorm."""
        return self.encode(MediaBatch(patches, grid_list(grid)), position_ids).features

    def encode(self, media: MediaBatch, position_ids: Optional[torch.Tensor] = None) -> VisionOutput:
        """Every item of `media` through its embedding, then the shared layers -> VisionOutput.
        position_ids: the images' bucketed positions (default: from their grid)."""
        x, lengths = self.embed(media, position_ids)
        segments = Segments(lengths)
        balance = z = x.new_zeros((), dtype=torch.float32)
        stats = []
        for layer in self.encoder.layers:
            if self.activation_checkpointing == "layer" and self.training:
                x, layer_balance, layer_z, layer_stats = checkpoint(layer, x, segments, self.attention_backend,
                                                                    use_reentrant=False)
            else:
                x, layer_balance, layer_z, layer_stats = layer(x, segments, self.attention_backend)
            balance, z = balance + layer_balance, z + layer_z
            if layer_stats is not None:
                stats.append(layer_stats)
        return VisionOutput(x, lengths, balance, z, stats)

    def embed(self, media: MediaBatch, position_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, list]:
        """-> (embedded tokens [T, D] of every item in media.order, tokens per item)."""
        media.check()
        pieces = {IMAGE: [], VIDEO: [], AUDIO: []}
        if media.grid:
            sizes = [h * w for h, w in media.grid]
            if sum(sizes) != media.patches.shape[0]:
                raise ValueError(f"grid covers {sum(sizes)} patches but {media.patches.shape[0]} were given")
            pieces[IMAGE] = list(self.embeddings.embed_images(media.patches, media.grid, position_ids).split(sizes))
        if media.video_grid:
            sizes = [t * h * w for t, h, w in media.video_grid]
            pieces[VIDEO] = list(self.embeddings.embed_videos(media.video_patches, media.video_grid).split(sizes))
        if media.audio_grid:
            if not hasattr(self, "audio_embeddings"):
                raise ValueError("audio items but the encoder has no audio embedding (audio.input is none)")
            sizes = [h * w for h, w in media.audio_grid]
            pieces[AUDIO] = list(self.audio_embeddings(media.audio_patches, media.audio_grid).split(sizes))
        taken = {IMAGE: 0, VIDEO: 0, AUDIO: 0}
        ordered = []
        for kind in media.order:
            ordered.append(pieces[kind][taken[kind]])
            taken[kind] += 1
        if not ordered:  # nothing to encode: an empty sequence that still runs every layer
            weight = self.embeddings.patch_embedding.weight
            empty = weight.new_zeros(0, self.embeddings._image_kernel().shape[1])
            ordered = [self.embeddings.embed_images(empty, [])]
        return torch.cat(ordered), [piece.shape[0] for piece in ordered if piece.shape[0] > 0]

    def forward_images(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """list of [C, H_i, W_i] (sides multiples of the patch size) -> list of [h_i*w_i, D]."""
        patches, grid = pack_images(images, self.cfg.patch_size)
        out = self(patches, grid)
        return list(out.split([h * w for h, w in grid]))

    @torch.no_grad()
    def init_weights(self, seed: int = 0, prefix: str = "vision_tower.") -> None:
        """LayerNorms 1/0, biases 0, other weights Normal(0, init_std or 1/sqrt(fan_in)), each tensor from its own
        seeded generator (independent of the rest of the model); routed experts one generator per
        global expert, so an expert-parallel shard holds exactly its slice of the full tower."""
        _init_module_(self, self.cfg.init_std, seed, prefix)


def _init_module_(module: nn.Module, std: Optional[float], seed: int, prefix: str) -> None:
    norms = {n for n, m in module.named_modules() if isinstance(m, (nn.LayerNorm, RMSNorm))}
    experts = expert_parameter_layouts(module)
    for name, param in module.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if owner in norms:
            param.fill_(1.0 if leaf == "weight" else 0.0)
        elif leaf.endswith("bias"):
            param.zero_()
        elif name in experts:  # [e, in, out]: fan-in is `in`; one generator per global expert
            layout = experts[name]
            scale = std if std is not None else param.shape[-2] ** -0.5
            for i in range(layout.num_local_experts):
                seeded_normal_(param[i], scale, seed, f"{prefix}{name}[{layout.global_index(i)}]")
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
    "VisionEmbeddings",
    "VisionOutput",
    "VisionTransformer",
    "bucketed_position_ids",
    "pack_images",
    "packed_attention",
    "patchify",
    "seeded_normal_",
]
