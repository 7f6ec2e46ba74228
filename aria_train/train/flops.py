"""Model FLOPs of a training step, counting only what a token actually runs, and the accelerator
peaks MFU is reported against.

Decoder, per token and layer, forward: attention projections 2 * 4 * H * heads * head_dim;
attention scores and values 2 * 2 * S * heads * head_dim (causal, so half of the S x S square:
2 * S * d for QK^T and 2 * S * d for AV, halved); router 2 * H * E; top-k routed experts and the
shared MLP 2 * 3 * H * I each (a dense layer, when model.moe.layer_freq / first_k_dense leave
some: its MLP 2 * 3 * H * dense_width). Plus the LM head 2 * H * V.

Images (multimodal stages), per crop of n = h * w patches with Q learned queries, forward:
  ViT: patch embedding 2 * (C * p * p) * D * n; per layer the q/k/v/out projections
       2 * 4 * D^2 * n, full (bidirectional) attention 2 * 2 * n^2 * D, the MLP 2 * 2 * D * I_v * n;
  projector: q_proj + in-projection of the queries 2 * 2 * D^2 * Q, k/v_proj + in-projections of
       the patches 2 * 4 * D^2 * n, attention 2 * 2 * Q * n * D, out_proj + linear 2 * 2 * D^2 * Q,
       the FFN 2 * D * H * Q + 2 * H^2 * Q.
  (With vision.moe the MoE layers are counted as the dense MLP of vision.intermediate_size, not
  as their experts: an approximation for MFU.)
Backward is twice forward (every parameter trains).
"""

from __future__ import annotations

from typing import Iterable, Optional

from aria_train.model.config import ModelConfig
from aria_train.model.vision_config import VisionConfig

# Dense bf16 peak (no sparsity) by device name, first match wins: every substring of a row must
# occur in torch.cuda.get_device_name() (case-insensitive). NVIDIA's datasheets.
PEAK_BF16_FLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIe"), 756e12),
    (("H100", "NVL"), 835e12),
    (("H100",), 989e12),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (("H200", "NVL"), 835e12),
    (("H200",), 989e12),
    (("A100",), 312e12),
    (("B200",), 2250e12),
]


def forward_flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    moe = cfg.moe
    inner = cfg.num_heads * cfg.head_dim
    attention_proj = 2 * 4 * cfg.hidden_size * inner
    attention_core = 2 * 2 * seq_length * inner / 2  # causal: half the scores are computed
    router = 2 * cfg.hidden_size * moe.num_experts
    experts = 2 * 3 * cfg.hidden_size * moe.expert_ffn_size * (moe.top_k + moe.num_shared_experts)
    dense_mlp = 2 * 3 * cfg.hidden_size * moe.dense_width  # layers model.moe.layer_freq leaves dense
    num_moe = len(cfg.moe_layers)
    attention = cfg.num_layers * (attention_proj + attention_core)
    feed_forward = num_moe * (router + experts) + (cfg.num_layers - num_moe) * dense_mlp
    return attention + feed_forward + 2 * cfg.hidden_size * cfg.vocab_size


def train_flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    return 3 * forward_flops_per_token(cfg, seq_length)


def vit_forward_flops(vision: VisionConfig, patches: int) -> float:
    """One crop of `patches` patches through the ViT (forward)."""
    d, n = vision.hidden_size, patches
    embed = 2 * vision.num_channels * vision.patch_size**2 * d * n
    per_layer = 2 * 4 * d * d * n + 2 * 2 * n * n * d + 2 * 2 * d * vision.intermediate_size * n
    return embed + vision.num_layers * per_layer


def projector_forward_flops(vision: VisionConfig, text_hidden: int, patches: int, queries: int) -> float:
    """One crop's projector forward: `queries` learned queries over `patches` ViT features."""
    d, n, q = vision.hidden_size, patches, queries
    attention = 2 * 2 * d * d * q + 2 * 4 * d * d * n + 2 * 2 * q * n * d + 2 * 2 * d * d * q
    ffn = 2 * d * text_hidden * q + 2 * text_hidden * text_hidden * q
    return attention + ffn


def image_train_flops(vision: VisionConfig, text_hidden: int, crops: Iterable[tuple[int, int, int]]) -> float:
    """Training FLOPs (forward + backward) of the ViT and projector for crops given as
    (h_patches, w_patches, queries)."""
    total = 0.0
    for h, w, queries in crops:
        total += vit_forward_flops(vision, h * w) + projector_forward_flops(vision, text_hidden, h * w, queries)
    return 3 * total


def peak_flops(device_name: str) -> Optional[float]:
    """Dense bf16 FLOP/s of the named accelerator, or None when it is not in the table."""
    name = device_name.lower()
    for keys, value in PEAK_BF16_FLOPS:
        if all(key.lower() in name for key in keys):
            return value
    return None
