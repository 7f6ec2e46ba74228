"""What the routers did: expert load balance, dropped tokens, router z and entropy, per layer and
per modality, summed over micro-batches, steps of a log window and ranks.

    acc = RoutingAccumulator(num_layers, num_experts)
    acc.add(out.router_stats, is_visual)        # every micro-batch (cheap, stays on the device)
    metrics, counts = acc.reduce_and_reset(groups)   # at a log step, every rank (one all-reduce)

Definitions (per layer; counts are routed assignments, k per token):
  load_max_over_mean  max_e c_e / mean_e c_e   (1 = perfectly balanced, E = all on one expert)
  load_cv             std_e c_e / mean_e c_e   (population std; 0 = balanced)
  dropped_frac        assignments dropped by the capacity limit / assignments (0 when dropless)
  router_z            token mean of logsumexp(router logits)
  router_entropy      token mean entropy of the full router softmax (max log E)
Per modality (ARIA Figure 1): the activation rate of expert e for modality m is the fraction of
m's tokens that chose e among their top-k, so rates sum to k over experts; the visual
specialisation of e is R_v[e] / R_t[e].
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from aria_train.parallel.distributed import all_reduce_sum
from aria_train.parallel.groups import ParallelGroups


def modality_expert_counts(top_experts: torch.Tensor, is_visual: torch.Tensor, num_experts: int):
    """top_experts [T, k], is_visual [T] bool -> (counts [2, E] visual/text assignments, tokens [2]).
    No host synchronisation (scatter-add, no boolean indexing)."""
    tokens_n, k = top_experts.shape
    visual = is_visual.reshape(-1).to(top_experts.device, torch.float64)
    if visual.numel() != tokens_n:
        raise ValueError(f"is_visual has {visual.numel()} tokens, top_experts {tokens_n}")
    weights = torch.stack([visual, 1 - visual])  # [2, T]
    counts = torch.zeros(2, num_experts, dtype=torch.float64, device=top_experts.device)
    index = top_experts.reshape(1, -1).expand(2, -1)
    counts.scatter_add_(1, index, weights.repeat_interleave(k, dim=1))
    return counts, weights.sum(1)


def rates_from_counts(counts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """counts [..., E] / tokens [...] -> activation rates [..., E]; zeros where no tokens."""
    return counts / tokens.clamp_min(1).unsqueeze(-1)


def expert_activation_rates(top_experts: torch.Tensor, is_visual: torch.Tensor, num_experts: int):
    """Activation rates of every expert for visual and for text tokens.

    top_experts [T, k] (expert ids chosen per token), is_visual [T] -> (R_v [E], R_t [E]), where
    R_m[e] = #(tokens of modality m with e among their top-k) / #(tokens of modality m); each sums
    to k over experts (0 everywhere when the modality has no tokens)."""
    counts, tokens = modality_expert_counts(top_experts, is_visual, num_experts)
    rates = rates_from_counts(counts, tokens)
    return rates[0], rates[1]


def visual_specialisation(r_visual: torch.Tensor, r_text: torch.Tensor) -> torch.Tensor:
    """R_v / R_t per expert: > 1 means the expert prefers image tokens. nan where both rates are
    0, inf where only text never chose it."""
    return r_visual / r_text


def load_balance(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """counts [..., E] -> (max/mean, coefficient of variation) over the last dim; nan for no tokens."""
    counts = counts.double()
    mean = counts.mean(-1)
    safe = torch.where(mean > 0, mean, torch.full_like(mean, float("nan")))
    return counts.amax(-1) / safe, counts.std(-1, unbiased=False) / safe


class RoutingAccumulator:
    """Sums RouterStats over micro-batches and steps on this rank; reduces over ranks on demand."""

    def __init__(self, num_layers: int, num_experts: int, device: torch.device | str = "cpu",
                 layer_ids: Optional[Sequence[int]] = None):
        """num_layers: the MoE layers; layer_ids: their decoder layer numbers for the metric names
        (default 0, 1, ...; with model.moe.layer_freq / first_k_dense only some layers are MoE)."""
        self.num_layers, self.num_experts = num_layers, num_experts
        self.layer_ids = list(layer_ids) if layer_ids is not None else list(range(num_layers))
        if len(self.layer_ids) != num_layers:
            raise ValueError(f"{len(self.layer_ids)} layer ids for {num_layers} MoE layers")
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        L, E = self.num_layers, self.num_experts
        zeros = dict(dtype=torch.float64, device=self.device)
        self.tokens_per_expert = torch.zeros(L, E, **zeros)
        self.modality_counts = torch.zeros(L, 2, E, **zeros)  # visual, text
        self.modality_tokens = torch.zeros(L, 2, **zeros)
        # per layer: dropped, tokens, sum of per-token logsumexp, sum of per-token entropy
        self.scalars = torch.zeros(L, 4, **zeros)

    @torch.no_grad()
    def add(self, router_stats: Sequence, is_visual: Optional[torch.Tensor] = None) -> None:
        """router_stats: one aria_train.moe.layer.RouterStats per MoE layer; is_visual [T] or None
        (None = every token is text)."""
        if len(router_stats) != self.num_layers:
            raise ValueError(f"{len(router_stats)} router stats for {self.num_layers} layers")
        for layer, stats in enumerate(router_stats):
            tokens = stats.top_experts.shape[0]
            self.tokens_per_expert[layer] += stats.tokens_per_expert.to(self.device, torch.float64)
            # everything stays on the device: the token count is added as a Python number, never
            # as a tensor built on the host and copied over (a blocking copy per layer on CUDA)
            self.scalars[layer, 0] += stats.dropped.to(self.device, torch.float64)
            self.scalars[layer, 1] += tokens
            self.scalars[layer, 2] += stats.logsumexp_mean.detach().to(self.device, torch.float64) * tokens
            self.scalars[layer, 3] += stats.entropy_mean.detach().to(self.device, torch.float64) * tokens
            if is_visual is None:  # all text: no per-token work
                self.modality_counts[layer, 1] += stats.tokens_per_expert.to(self.device, torch.float64)
                self.modality_tokens[layer, 1] += tokens
            else:
                counts, modality_tokens = modality_expert_counts(stats.top_experts, is_visual, self.num_experts)
                self.modality_counts[layer] += counts.to(self.device)
                self.modality_tokens[layer] += modality_tokens.to(self.device)

    def reduce_and_reset(self, groups: ParallelGroups) -> tuple[dict, dict]:
        """Collective over the world of `groups` (every rank at the same step). Returns (scalar
        metrics for JSONL/wandb, per-expert arrays as nested lists for JSONL and the heatmap tool)."""
        L, E = self.num_layers, self.num_experts
        flat = torch.cat([self.tokens_per_expert.reshape(-1), self.modality_counts.reshape(-1),
                          self.modality_tokens.reshape(-1), self.scalars.reshape(-1)])
        flat = all_reduce_sum(flat, groups).cpu()
        sizes = [L * E, L * 2 * E, L * 2, L * 4]
        tpe, mcounts, mtokens, scalars = torch.split(flat, sizes)
        tpe, mcounts, mtokens, scalars = tpe.view(L, E), mcounts.view(L, 2, E), mtokens.view(L, 2), scalars.view(L, 4)
        self.reset()
        return summarise(tpe, scalars, mcounts, mtokens, bool(mtokens[:, 0].sum() > 0), self.layer_ids)


def summarise(tokens_per_expert, scalars, modality_counts, modality_tokens, has_visual: bool,
              layer_ids: Optional[Sequence[int]] = None):
    max_over_mean, cv = load_balance(tokens_per_expert)
    assignments = tokens_per_expert.sum(-1).clamp_min(1)
    tokens = scalars[:, 1].clamp_min(1)
    dropped = scalars[:, 0] / assignments
    z, entropy = scalars[:, 2] / tokens, scalars[:, 3] / tokens
    metrics: dict = {}
    layer_ids = list(layer_ids) if layer_ids is not None else list(range(tokens_per_expert.shape[0]))
    for layer in range(tokens_per_expert.shape[0]):
        prefix = f"router/layer{layer_ids[layer]:02d}/"
        metrics[prefix + "load_max_over_mean"] = float(max_over_mean[layer])
        metrics[prefix + "load_cv"] = float(cv[layer])
        metrics[prefix + "dropped_frac"] = float(dropped[layer])
        metrics[prefix + "z"] = float(z[layer])
        metrics[prefix + "entropy"] = float(entropy[layer])
    finite = torch.nan_to_num(max_over_mean, nan=-1.0)
    worst = int(finite.argmax())
    metrics["router/worst_layer"] = layer_ids[worst]
    metrics["router/load_max_over_mean_worst"] = float(max_over_mean[worst])
    metrics["router/load_cv_mean"] = float(cv.nanmean())
    metrics["router/dropped_frac"] = float(scalars[:, 0].sum() / assignments.sum())
    metrics["router/z_mean"] = float(z.mean())
    metrics["router/entropy_mean"] = float(entropy.mean())
    counts = {"tokens_per_expert": tokens_per_expert.round().long().tolist(),
              "tokens": scalars[:, 1].round().long().tolist()}
    if has_visual:
        rates = rates_from_counts(modality_counts, modality_tokens)  # [L, 2, E]
        counts["activation_rate_visual"] = rates[:, 0].tolist()
        counts["activation_rate_text"] = rates[:, 1].tolist()
        counts["visual_tokens"] = modality_tokens[:, 0].tolist()
        counts["text_tokens"] = modality_tokens[:, 1].tolist()
        spec = visual_specialisation(rates[:, 0], rates[:, 1])
        metrics["router/visual_specialisation_max"] = float(torch.nan_to_num(spec, nan=0.0, posinf=0.0).max())
    return metrics, counts


def console_summary(metrics: dict) -> str:
    """Compact: the worst layer's load max/mean, mean CV, dropped fraction when non-zero."""
    if "router/worst_layer" not in metrics:
        return ""
    text = (f"route worst L{metrics['router/worst_layer']} max/mean {metrics['router/load_max_over_mean_worst']:.2f}"
            f" cv {metrics['router/load_cv_mean']:.2f}")
    if metrics.get("router/dropped_frac", 0.0) > 0:
        text += f" drop {metrics['router/dropped_frac']:.1%}"
    return text
