"""Top-k router: a bias-free linear, top-k on the raw logits, softmax over the k chosen.

Softmax over the chosen k equals renormalising a full softmax over those k, which is what ARIA
and transformers' AriaTextTopKRouter do. The full softmax is still returned: the load-balancing
loss needs every expert's probability.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class Routing:
    logits: torch.Tensor  # [T, E] raw router logits (fp32), for the z-loss
    probs: torch.Tensor  # [T, E] softmax over all experts (fp32), for the balance loss
    top_weights: torch.Tensor  # [T, k] softmax over the chosen logits, in the input dtype
    top_experts: torch.Tensor  # [T, k] global expert indices (int64)
    keep: Optional[torch.Tensor] = None  # [T, k] bool: the real slots (expert choice pads); None = all


class TopKRouter(nn.Module):
    def __init__(self, hidden_size: int, num_experts: int, top_k: int):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))

    def forward(self, x: torch.Tensor) -> Routing:
        """x: [T, H] -> Routing"""
        logits = nn.functional.linear(x, self.weight).float()  # [T, E]
        top_logits, top_experts = torch.topk(logits, self.top_k, dim=-1)
        top_weights = torch.softmax(top_logits, dim=-1).to(x.dtype)
        return Routing(logits, torch.softmax(logits, dim=-1), top_weights, top_experts)
