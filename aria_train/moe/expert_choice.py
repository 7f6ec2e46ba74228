"""Expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing").

Instead of each token picking its top-k experts, each expert picks its top-C tokens:

    S = softmax(x W^T) over experts            [T, E]   token-to-expert affinities
    (G, I) = top-C of S^T along tokens         [E, C]   expert e takes tokens I[e] with gates G[e]
    y_t = sum over the experts e that chose t of G[e, t] * FFN_e(x_t)

C = min(T, ceil(c * T / E)) for capacity factor c (rounded up, so c * T tokens are always
covered; the cap at T keeps top-C defined for tiny batches). Every expert processes exactly C
tokens: load is even by construction and no balance loss is needed. A token may be chosen by
several experts or by none; one chosen by none passes through the residual stream only (plus
the shared experts, if the layer has any). The gates are the softmax values themselves, not
renormalised, so the router gets gradients through every chosen (token, expert) pair.

Top-C looks at every token of the batch at once, so a token's output depends on tokens after it:
only bidirectional attention (the encoder) may use it; the causal decoder refuses it
(aria_train.model.config). T is the tokens of the micro-batch on this rank: under expert
parallelism every rank routes its own tokens (top-C over the tokens the rank holds), then the
all-to-all carries them, so the result equals one rank running each rank's tokens alone.

For the dispatcher (aria_train.moe.dispatcher), the choice is rewritten into its (token, slot)
form: slot j of token t is the j-th expert (in expert order) that chose t, K = the most experts
any token got (one host read per layer), `keep` marks the real slots and the gates of the padded
ones are 0. Writes are by unique indices, so the result is deterministic.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aria_train.moe.router import Routing


def expert_capacity(num_tokens: int, num_experts: int, capacity_factor: float) -> int:
    """C = min(T, ceil(c * T / E)): tokens each expert takes."""
    return min(num_tokens, math.ceil(capacity_factor * num_tokens / num_experts))


def choice_to_slots(probs_TE: torch.Tensor, chosen_TE: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """probs [T, E], chosen [T, E] bool -> (experts [T, K], gates [T, K], keep [T, K]): each
    token's choosing experts in ascending order, padded (keep False, gate 0) to K = max count."""
    num_tokens, num_experts = chosen_TE.shape
    most = int(chosen_TE.sum(dim=1).max()) if num_tokens else 0  # the host read
    width = max(1, most)
    expert_ids = torch.arange(num_experts, device=chosen_TE.device)
    sort_key = torch.where(chosen_TE, expert_ids, expert_ids + num_experts)  # chosen first, in expert order
    experts_TK = torch.argsort(sort_key, dim=1)[:, :width]
    keep_TK = chosen_TE.gather(1, experts_TK)
    gates_TK = probs_TE.gather(1, experts_TK) * keep_TK
    return experts_TK, gates_TK, keep_TK


class ExpertChoiceRouter(nn.Module):
    """A bias-free linear, softmax over experts, each expert's top-C tokens."""

    def __init__(self, hidden_size: int, num_experts: int, capacity_factor: float):
        super().__init__()
        self.num_experts = num_experts
        self.capacity_factor = capacity_factor
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))

    def forward(self, x: torch.Tensor) -> Routing:
        """x: [T, H] -> Routing whose top_experts/top_weights/keep are [T, K] (see module notes)."""
        # At least fp32, like the top-k router (megatron-core's moe_router_dtype=fp32): a bf16
        # product would round the scores each expert ranks its tokens by.
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = nn.functional.linear(x.to(dtype), self.weight.to(dtype)).float()  # [T, E] fp32
        probs = torch.softmax(logits, dim=-1)
        capacity = expert_capacity(x.shape[0], self.num_experts, self.capacity_factor)
        _, tokens_EC = torch.topk(probs.t(), capacity, dim=1)  # each expert's top-C tokens
        chosen = torch.zeros_like(probs, dtype=torch.bool)
        chosen.scatter_(0, tokens_EC.t(), True)  # chosen[tokens_EC[e, c], e] = True
        experts_TK, gates_TK, keep_TK = choice_to_slots(probs, chosen)
        return Routing(logits, probs, gates_TK.to(x.dtype), experts_TK, keep_TK)
