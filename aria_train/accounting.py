"""Parameter and memory accounting for `launch/pretrain.py --dry-run`.

Counts come from a model built on the meta device (no memory). Memory per rank assumes the
layout of DESIGN.md: dense parameters replicated on every rank, routed experts split over the EP
group; gradients in fp32 buffers; fp32 master weights and two AdamW moments sharded by ZeRO-1
(dense over the world, experts over their expert-data-parallel group).
"""

from dataclasses import dataclass

from torch import nn

from aria_train.config.schema import ModelConfig
from aria_train.moe.experts import expert_parameter_names

GIB = 1024**3


@dataclass
class ParameterCounts:
    total: int
    routed_experts: int  # all routed experts of all layers
    embeddings: int  # input embedding + LM head
    active_per_token: int  # what one text token runs: dense + top_k / E of the routed experts

    @property
    def dense(self) -> int:
        return self.total - self.routed_experts

    @property
    def active_without_embeddings(self) -> int:
        return self.active_per_token - self.embeddings


def count_parameters(model: nn.Module, cfg: ModelConfig) -> ParameterCounts:
    expert_names = expert_parameter_names(model)
    total = routed = embeddings = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if name in expert_names:
            routed += param.numel()
        if name in ("embed_tokens.weight", "lm_head.weight"):
            embeddings += param.numel()
    active = total - routed + routed * cfg.moe.top_k // cfg.moe.num_experts
    return ParameterCounts(total, routed, embeddings, active)


@dataclass
class RankMemory:
    weights: float  # bytes
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


def memory_per_rank(
    counts: ParameterCounts, world_size: int, ep_size: int, weight_bytes: int = 2, grad_bytes: int = 4,
    optimizer_bytes: int = 12, zero1: bool = True,
) -> RankMemory:
    """Bytes one rank holds. bf16 weights, fp32 gradient buffers, and fp32 master + exp_avg +
    exp_avg_sq (12 bytes) by default."""
    local_experts = counts.routed_experts / ep_size
    local_params = counts.dense + local_experts
    edp_size = world_size // ep_size
    if zero1:
        optimizer = optimizer_bytes * (counts.dense / world_size + local_experts / edp_size)
    else:
        optimizer = optimizer_bytes * local_params
    return RankMemory(weight_bytes * local_params, grad_bytes * local_params, optimizer)


def format_report(counts: ParameterCounts, memory: RankMemory, world_size: int, ep_size: int, preset: str) -> str:
    lines = [
        f"model preset                 {preset}",
        f"total parameters             {counts.total:,}",
        f"  routed experts             {counts.routed_experts:,}",
        f"  dense (attn, norms, router, shared experts, embeddings) {counts.dense:,}",
        f"active parameters per token  {counts.active_per_token:,}",
        f"  without embedding tables   {counts.active_without_embeddings:,}",
        f"parallel layout              world {world_size}, ep-size {ep_size}, "
        f"expert-data-parallel {world_size // ep_size}, ZeRO-1",
        f"per-rank memory (GiB)        weights {memory.weights / GIB:.2f} (bf16) | "
        f"gradients {memory.gradients / GIB:.2f} (fp32) | optimizer {memory.optimizer / GIB:.2f} "
        f"(fp32 master + 2 moments, sharded) | total {memory.total / GIB:.2f}",
    ]
    return "\n".join(lines)
