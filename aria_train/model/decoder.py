"""The ARIA text decoder: embeddings -> N pre-norm blocks (attention + fine-grained MoE) ->
RMSNorm -> untied LM head.

Numerically the same as transformers' AriaTextForCausalLM (see aria_train.convert.hf_text for
the weight mapping and tests/model/test_hf_parity.py for the check). The model returns the final
hidden states, not logits: the loss projects them onto the vocabulary in chunks
(aria_train.train.loss), so [tokens x vocab] logits never exist at once.

Activation checkpointing (`model.activation_checkpointing`, training only):
- "none": autograd keeps everything each block saves.
- "full": each block keeps only its input [B, S, H]; the whole block runs again in backward.
- "selective": keeps the attention sub-block's activations and recomputes the memory-heavy,
  cheap-to-recompute rest: the attention-input RMSNorm (elementwise; its fp32 normalised copy)
  and the whole MoE sub-block (RMSNorm, router, dispatch / all-to-all, routed experts, combine,
  shared experts), which then keeps only its input. Why this split: the attention core runs
  through SDPA's flash kernels (CUDA and, in torch 2.x, CPU alike), which save only q, k, v, the
  output and the logsumexp, O(T) per head, while recomputing attention is the most expensive
  part of a 64K forward (quadratic). The MoE sub-block is the opposite: per token it saves the
  k dispatched rows, their gate/up intermediates (k x 3I) and the shared-expert intermediates:
  for aria-25b about 30x the fp32 residual stream and 8x what the attention sub-block keeps,
  for a recompute of about one MoE forward (plus, under expert parallelism, its two
  all-to-alls). aria_train.accounting models the bytes of every mode.
All three modes compute the same values and gradients (tests/longctx/test_checkpointing.py).
"""

import math
import zlib
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from aria_train.model.config import ActivationCheckpointing, ModelConfig
from aria_train.model.attention import Attention, DocumentMask
from aria_train.model.norm import RMSNorm
from aria_train.model.rope import RotaryEmbedding
from aria_train.moe.experts import GroupedExperts, expert_parameter_layouts
from aria_train.moe.layer import MoELayer, MoEOutput
from aria_train.nn.swiglu import SwiGLU


@dataclass
class DecoderOutput:
    hidden: torch.Tensor  # [B, S, H] after the final norm
    balance_loss: torch.Tensor  # scalar, summed over layers, coefficient applied
    z_loss: torch.Tensor  # scalar, summed over layers, coefficient applied
    router_stats: list = field(default_factory=list)  # per MoE layer, aria_train.moe.layer.RouterStats
    encoder_router_stats: list = field(default_factory=list)  # the ViT's MoE layers (vision.moe), if any


class DecoderBlock(nn.Module):
    """Attention + feed-forward: a MoE layer, or (with `model.moe.layer_freq` / `first_k_dense`
    placing MoE elsewhere) a dense SwiGLU MLP `mlp` of width `model.moe.dense_width`. Both sit
    behind `moe_norm`, the post-attention norm."""

    def __init__(self, cfg: ModelConfig, is_moe: bool = True):
        super().__init__()
        self.selective_recompute = False  # set by AriaForCausalLM per forward
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.qk_norm, cfg.rms_norm_eps)
        self.moe_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.moe: Optional[MoELayer] = MoELayer(cfg.hidden_size, cfg.moe) if is_moe else None
        if not is_moe:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.moe.dense_width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                document_mask: Optional[DocumentMask] = None):
        """x: [B, S, H] -> (x, balance_loss, z_loss, router_stats)"""
        if self.selective_recompute:
            x = x + self.attention(checkpoint(self.attention_norm, x, use_reentrant=False), cos, sin, document_mask)
            moe_out = checkpoint(self._moe, x, use_reentrant=False)
        else:
            x = x + self.attention(self.attention_norm(x), cos, sin, document_mask)
            moe_out = self._moe(x)
        x = x + moe_out.hidden.view_as(x)
        return x, moe_out.balance_loss, moe_out.z_loss, moe_out.stats

    def _moe(self, x: torch.Tensor) -> MoEOutput:
        h = self.moe_norm(x).flatten(0, 1)
        if self.moe is None:
            zero = h.new_zeros((), dtype=torch.float32)
            return MoEOutput(self.mlp(h), zero, zero, None)
        return self.moe(h)


class AriaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        moe_layers = set(cfg.moe.moe_layers(cfg.num_layers))
        self.layers = nn.ModuleList(DecoderBlock(cfg, i in moe_layers) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_base)
        self.activation_checkpointing: ActivationCheckpointing = cfg.activation_checkpointing

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Normal(0, init_std) everywhere; output projections scaled by 1/sqrt(2 * layers) as in
        Megatron, so the residual stream does not grow with depth.

        Each tensor, and each routed expert, draws from its own generator seeded by (seed, name,
        global expert index). The values therefore do not depend on how experts are sharded:
        a model built at ep-size 4 holds exactly the slices of the single-rank model, and a rank
        can initialise only its own experts after building on the meta device.
        """
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.num_layers)
        expert_layouts = expert_parameter_layouts(self)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            if name.endswith("norm.bias"):  # QK LayerNorm
                param.zero_()
                continue
            scale = out_std if name.endswith(("o_proj.weight", "down_proj.weight", "w_down")) else std
            if name in expert_layouts:
                layout = expert_layouts[name]
                for i in range(layout.num_local_experts):
                    _seeded_normal_(param[i], scale, seed, f"{name}[{layout.global_index(i)}]")
            else:
                _seeded_normal_(param, scale, seed, name)
        self.rope.reset_parameters()

    def forward(
        self,
        tokens: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        document_mask: Optional[DocumentMask] = None,
    ) -> DecoderOutput:
        """tokens: [B, S] (or inputs_embeds [B, S, H]); position_ids: [B, S]; document_mask: attend
        within documents only (aria_train.model.attention; None = plain causal) -> DecoderOutput"""
        x = self.embed_tokens(tokens) if inputs_embeds is None else inputs_embeds
        batch, seq, _ = x.shape
        if position_ids is None:
            position_ids = torch.arange(seq, device=x.device).unsqueeze(0).expand(batch, seq)
        cos, sin = self.rope(position_ids, x.dtype)
        balance = z = x.new_zeros((), dtype=torch.float32)
        router_stats = []
        mode = self.activation_checkpointing if self.training else "none"
        for block in self.layers:
            block.selective_recompute = mode == "selective"
            if mode == "full":
                x, layer_balance, layer_z, stats = checkpoint(block, x, cos, sin, document_mask, use_reentrant=False)
            else:
                x, layer_balance, layer_z, stats = block(x, cos, sin, document_mask)
            balance, z = balance + layer_balance, z + layer_z
            if stats is not None:  # dense layers have no router
                router_stats.append(stats)
        return DecoderOutput(self.norm(x), balance, z, router_stats)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., H] -> [..., vocab]. Only for small inputs: training uses the chunked loss."""
        return self.lm_head(hidden)

    def expert_modules(self) -> list[GroupedExperts]:
        return [block.moe.experts for block in self.layers if block.moe is not None]


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int = 0) -> AriaForCausalLM:
    """Builds and initialises the model. On device="meta" nothing is allocated (for accounting)."""
    with torch.device(device):
        model = AriaForCausalLM(cfg)
    if str(device) != "meta":
        model.init_weights(seed)
    return model


def _seeded_normal_(tensor: torch.Tensor, std: float, seed: int, name: str) -> None:
    generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    values = torch.empty(tensor.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
    tensor.copy_(values)
