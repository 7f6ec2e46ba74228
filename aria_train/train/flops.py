"""Model FLOPs of the MoE decoder, counting only what a token actually runs.

Per token and layer, forward: attention projections 2 * 4 * H * heads * head_dim; attention
scores and values 2 * 2 * S * heads * head_dim (causal, so half of the S x S square:
2 * S * d for QK^T and 2 * S * d for AV, halved); router 2 * H * E; top-k routed experts and
the shared MLP 2 * 3 * H * I each (a dense layer, when model.moe.layer_freq / first_k_dense
leave some: its MLP 2 * 3 * H * dense_width). Plus the LM head 2 * H * V. Backward is twice
forward.
"""

from aria_train.model.config import ModelConfig

# Dense bf16 peak of the accelerators MFU is reported against (no sparsity).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


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


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_FLOPS.items():
        if key in device_name:
            return value
    return None
