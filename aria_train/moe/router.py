"""Top-k router: a bias-free linear, top-k on the raw logits, softmax over the k chosen.

Softmax over the chosen k equals renormalising a full softmax over those k, which is what ARIA
and transformers' AriaTextTopKRouter do. The full softmax is still returned: the load-balancing
loss needs every expert's probability.

Precision: the router runs in fp32 whatever the compute dtype (megatron-core's
`moe_router_dtype=fp32`): input and weight are upcast and autocast is off for the matmul, so
the logits are not rounded to bf16 before top-k, softmax, the z-loss and the balance loss (a
bf16 logit has 8 bits of mantissa: near-ties between experts would be decided by rounding).
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class Routing:
    logits: torch.Tensor  # [T, E] raw router logits (fp32), for the z-loss
    probs: torch.Tensor  # [T, E] softmax over all experts (fp32), for the balance loss
    top_weights: torch.Tensor  # [T, k] softmax over the chosen logits (fp32; combine casts)
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
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = nn.functional.linear(x.float(), self.weight.float())  # [T, E] fp32
        top_logits, top_experts = torch.topk(logits, self.top_k, dim=-1)
        top_weights = torch.softmax(top_logits, dim=-1)
        return Routing(logits, torch.softmax(logits, dim=-1), top_weights, top_experts)
