"""The routed experts of one layer, stored as stacked 3-D weights and run as grouped GEMMs.

Layout follows ARIA's checkpoints (and transformers' AriaExperts): w_gate_up [e, H, 2I] whose
output halves are (gate, up), w_down [e, I, H], where e is the number of experts this module
holds: all E of the layer, or under expert parallelism the slice `layout` describes
(global experts [layout.first, layout.end)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aria_train.moe.grouped_gemm import grouped_matmul
from aria_train.moe.layout import ExpertLayout


class GroupedExperts(nn.Module):
    def __init__(self, hidden_size: int, ffn_size: int, layout: ExpertLayout):
        super().__init__()
        self.layout = layout
        self.ffn_size = ffn_size
        e = layout.num_local_experts
        self.w_gate_up = nn.Parameter(torch.empty(e, hidden_size, 2 * ffn_size))
        self.w_down = nn.Parameter(torch.empty(e, ffn_size, hidden_size))

    @property
    def num_experts(self) -> int:
        """E: experts of the layer over all ranks."""
        return self.layout.num_experts

    @property
    def num_local_experts(self) -> int:
        """e: experts this module holds (the leading dimension of its weights)."""
        return self.layout.num_local_experts

    @property
    def first_expert(self) -> int:
        """Global index of w_*[0]."""
        return self.layout.first

    def forward(self, x_NH: torch.Tensor, counts_e: torch.Tensor) -> torch.Tensor:
        """x_NH: [N, H] rows sorted by local expert; counts_e: [e] rows per local expert -> [N, H]"""
        gate_up_NI2 = grouped_matmul(x_NH, self.w_gate_up, counts_e)
        gate_NI, up_NI = gate_up_NI2.chunk(2, dim=-1)
        return grouped_matmul(F.silu(gate_NI) * up_NI, self.w_down, counts_e)


def expert_parameter_layouts(model: nn.Module) -> dict[str, ExpertLayout]:
    """Every routed-expert parameter of `model` by name, with the layout of its leading (expert)
    dimension. These parameters are sharded by expert parallelism; every other one is dense."""
    layouts: dict[str, ExpertLayout] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, GroupedExperts):
            for param_name, _ in module.named_parameters(recurse=False):
                layouts[f"{module_name}.{param_name}" if module_name else param_name] = module.layout
    return layouts

