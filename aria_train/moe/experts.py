"""The routed experts of one layer, stored as stacked 3-D weights and run as grouped GEMMs.

Layout follows ARIA's checkpoints (and transformers' AriaExperts): w_gate_up [E, H, 2I] whose
output halves are (gate, up), w_down [E, I, H]. Under expert parallelism a rank holds the slice
[first_expert, first_expert + E_local) of the global experts.
"""

import torch
import torch.nn.functional as F
from torch import nn

from aria_train.moe.grouped_gemm import grouped_matmul


class GroupedExperts(nn.Module):
    def __init__(self, num_experts: int, hidden_size: int, ffn_size: int, first_expert: int = 0):
        super().__init__()
        self.num_experts = num_experts  # held by this module (local experts)
        self.first_expert = first_expert  # global index of w_*[0]
        self.ffn_size = ffn_size
        self.w_gate_up = nn.Parameter(torch.empty(num_experts, hidden_size, 2 * ffn_size))
        self.w_down = nn.Parameter(torch.empty(num_experts, ffn_size, hidden_size))

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x: [N, H] rows sorted by local expert; counts: [E_local] -> [N, H]"""
        gate_up = grouped_matmul(x, self.w_gate_up, counts)  # [N, 2I]
        gate, up = gate_up.chunk(2, dim=-1)
        return grouped_matmul(F.silu(gate) * up, self.w_down, counts)


def expert_parameter_names(model: nn.Module) -> set[str]:
    """Names of every routed-expert parameter: these are sharded by expert parallelism."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, GroupedExperts):
            for param_name, _ in module.named_parameters(recurse=False):
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names
