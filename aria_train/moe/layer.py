"""One ARIA MoE feed-forward block: router -> dispatcher -> grouped experts -> combine, plus the
shared experts that every token passes through (none when num_shared_experts is 0).

The router is top-k (ARIA's, with the balance and z losses) or expert choice
(aria_train.moe.expert_choice: every expert takes exactly C tokens, so there is no balance loss;
the z-loss still applies to its logits).

The layer is written for one rank holding every expert. Expert parallelism is applied from the
outside (aria_train.parallel.expert_parallel): it slices `experts` to the rank's share (an
ExpertLayout) and swaps `dispatcher` for the all-to-all one; nothing here changes.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from aria_train.moe.config import MoEConfig
from aria_train.moe.balance import group_load_balancing_loss, z_loss
from aria_train.moe.capacity import capacity_keep_mask
from aria_train.moe.dispatcher import LocalDispatcher, TokenDispatcher, count_per_expert
from aria_train.moe.expert_choice import ExpertChoiceRouter
from aria_train.moe.experts import GroupedExperts
from aria_train.moe.grouped_gemm import compute_dtype
from aria_train.moe.layout import ExpertLayout
from aria_train.moe.router import TopKRouter
from aria_train.nn.swiglu import SwiGLU


@dataclass
class RouterStats:
    """What the router did in one layer, for monitoring (all detached, this rank's tokens)."""

    tokens_per_expert: torch.Tensor  # [E] routed assignments (global experts) before any drop
    dropped: torch.Tensor  # scalar, assignments dropped by the capacity limit
    logsumexp_mean: torch.Tensor  # scalar, mean router logsumexp ("router z")
    entropy_mean: torch.Tensor  # scalar, mean entropy of the full router softmax
    top_experts: torch.Tensor  # [T, k] chosen experts, for per-modality activation rates


@dataclass
class MoEOutput:
    hidden: torch.Tensor  # [T, H]
    balance_loss: torch.Tensor  # scalar, coefficient applied
    z_loss: torch.Tensor  # scalar, coefficient applied
    stats: Optional[RouterStats]  # None from a decoder layer's dense MLP (aria_train.model.decoder)


class MoELayer(nn.Module):
    def __init__(self, hidden_size: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.router == "expert_choice":
            self.router = ExpertChoiceRouter(hidden_size, cfg.num_experts, cfg.expert_choice_capacity_factor)
        else:
            self.router = TopKRouter(hidden_size, cfg.num_experts, cfg.top_k)
        self.experts = GroupedExperts(hidden_size, cfg.expert_ffn_size, ExpertLayout(cfg.num_experts))
        self.shared = SwiGLU(hidden_size, cfg.num_shared_experts * cfg.expert_ffn_size) if cfg.num_shared_experts else None
        self.dispatcher: TokenDispatcher = LocalDispatcher(cfg.num_experts)

    def forward(self, x: torch.Tensor) -> MoEOutput:
        """x: [T, H] -> MoEOutput"""
        cfg = self.cfg
        routing = self.router(x)
        keep = routing.keep
        if keep is None and cfg.capacity_factor is not None:
            keep = capacity_keep_mask(routing.top_experts, cfg.num_experts, cfg.capacity_factor)
        # Rows travel (and are gathered k times) in the compute dtype: under bf16 autocast the
        # residual stream is fp32, and the expert GEMM would cast them anyway; sent as fp32 they
        # would cost the all-to-all twice the bytes, in both directions and in backward.
        rows = x.to(compute_dtype(x))
        expert_input, counts, handle = self.dispatcher.dispatch(rows, routing.top_experts, keep)
        expert_output = self.experts(expert_input, counts)
        routed = self.dispatcher.combine(expert_output, routing.top_weights, handle)
        no_tokens = x.shape[0] == 0  # an encoder rank without images still runs (EP collectives)
        if routing.keep is not None:  # expert choice: even by construction, no balance loss
            # Counted by a scatter-add on the device (bincount would read the host on CUDA).
            tokens_per_expert = torch.zeros(cfg.num_experts, dtype=torch.long, device=x.device).scatter_add_(
                0, routing.top_experts.reshape(-1), routing.keep.reshape(-1).long())
            balance = routing.logits.new_zeros(())
        else:
            tokens_per_expert = count_per_expert(routing.top_experts.reshape(-1), cfg.num_experts)
            balance = routing.logits.new_zeros(()) if no_tokens else group_load_balancing_loss(
                routing.probs, tokens_per_expert, cfg.top_k, cfg.balance_group_size, cfg.aux_loss_coeff
            )
        z = routing.logits.new_zeros(()) if no_tokens else z_loss(routing.logits, cfg.z_loss_coeff)
        stats = self._stats(x, routing, tokens_per_expert, keep if routing.keep is None else None)
        hidden = routed if self.shared is None else routed + self.shared(x)
        return MoEOutput(hidden, balance, z, stats)

    @torch.no_grad()
    def _stats(self, x, routing, tokens_per_expert, capacity_keep) -> RouterStats:
        dropped = (~capacity_keep).sum() if capacity_keep is not None else torch.zeros((), dtype=torch.long, device=x.device)
        entropy = -(routing.probs * torch.log(routing.probs.clamp_min(1e-20))).sum(-1).mean()
        return RouterStats(tokens_per_expert, dropped, torch.logsumexp(routing.logits, -1).mean(), entropy,
                           routing.top_experts)
