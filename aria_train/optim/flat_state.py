"""What both optimizers share: the state-dict format, and which parameters they update (with
which options) and where each sits in its global (EP-independent) tensor.

## Optimizer state-dict format ("aria-flat-v1")

Both optimizers (ReplicatedAdamW and the ZeRO-1 Zero1Optimizer) return the same structure from
`sharded_state_dict()`:

    {
      "format": "aria-flat-v1",
      "step": int,                                  # optimizer steps taken (skipped ones excluded)
      "state": {
        "<parameter name>": {                       # model.named_parameters() name, e.g.
          "master":     FlatShard,                  #   "layers.0.moe.experts.w_down"
          "exp_avg":    FlatShard,
          "exp_avg_sq": FlatShard,
        }, ...
      },
    }

Every state tensor is described as a piece of the parameter's FULL tensor, flattened to 1-D:
`FlatShard(global_shape, offset, local)` says that `local` (a 1-D fp32 tensor) holds elements
[offset, offset + local.numel()) of the full tensor flattened in row-major order. "Full" means the
single-rank model: a routed-expert parameter has global shape [E, ...] over ALL experts, and the
rank holding experts [first, first + E_local) places its rows at offset first * prod(shape[1:]).
Hence:
  * keys never depend on world size, EP size, bucket size or ZeRO on/off;
  * a rank lists only the pieces it holds (ZeRO-1: the intersection of its bucket shard with each
    parameter, so a parameter may appear on several ranks with different offsets, or on none);
    replicated: whole tensors, identical on every rank of a DP/EDP group;
  * a 1-D contiguous range is a box, so each piece maps to one chunk of a
    torch.distributed.checkpoint ShardedTensor of size [numel]; DCP can then reshard to any other
    layout (aria_train.checkpoint.state.flat_pieces_to_dcp). Resharding in memory:
    `load_sharded_state_dict` accepts, per name and state, one FlatShard or a list of them at
    any offsets and copies the overlap with the ranges this rank holds.
  * `local` tensors returned by `sharded_state_dict()` are VIEWS of the live optimizer state: a
    DCP load into them writes the state in place; call `load_sharded_state_dict` afterwards
    anyway (it also copies the loaded master weights into the model parameters and sets the step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from aria_train.optim.config import OptimizerConfig
from aria_train.moe.experts import expert_parameter_layouts

STATE_FORMAT = "aria-flat-v1"
STATE_KEYS = ("master", "exp_avg", "exp_avg_sq")

# rule(name, param) -> {"decay": bool, "lr_scale": float} (either key optional)
ParamRule = Callable[[str, nn.Parameter], dict]


@dataclass
class FlatShard:
    """Elements [offset, offset + local.numel()) of the full tensor of shape global_shape,
    flattened row-major."""

    global_shape: tuple
    offset: int
    local: torch.Tensor  # 1-D

    @property
    def global_numel(self) -> int:
        return math.prod(self.global_shape)


@dataclass
class ParamInfo:
    name: str
    param: nn.Parameter
    is_expert: bool
    global_shape: tuple  # shape in the single-rank model
    global_offset: int  # flat offset of this rank's local tensor inside the full flattened tensor
    weight_decay: float
    lr_scale: float


def default_param_rule(name: str, param: nn.Parameter) -> dict:
    """Weight decay on matrices (2-D and 3-D expert weights, embeddings), not on norms/vectors."""
    return {"decay": param.ndim >= 2, "lr_scale": 1.0}


def collect_params(model: nn.Module, opt_cfg: OptimizerConfig, param_rule: Optional[ParamRule] = None) -> list[ParamInfo]:
    """Trainable parameters in registration order with their global placement (routed experts:
    from their ExpertLayout) and options."""
    rule = param_rule or default_param_rule
    experts = expert_parameter_layouts(model)
    infos = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        options = {**default_param_rule(name, param), **(rule(name, param) or {})}
        wd = opt_cfg.weight_decay if options["decay"] else 0.0
        if name in experts:
            layout = experts[name]
            global_shape = (layout.num_experts,) + tuple(param.shape[1:])
            offset = layout.first * math.prod(param.shape[1:])
        else:
            global_shape, offset = tuple(param.shape), 0
        infos.append(ParamInfo(name, param, name in experts, global_shape, offset, wd, float(options["lr_scale"])))
    return infos


def copy_overlap(dest: torch.Tensor, dest_offset: int, pieces: Union[FlatShard, Iterable[FlatShard]]) -> int:
    """Copies into `dest` (1-D, holding [dest_offset, dest_offset + numel)) every overlapping range
    of `pieces`. Returns the number of elements copied."""
    if isinstance(pieces, FlatShard):
        pieces = [pieces]
    copied = 0
    end = dest_offset + dest.numel()
    for piece in pieces:
        local = piece.local.reshape(-1)
        lo, hi = max(dest_offset, piece.offset), min(end, piece.offset + local.numel())
        if hi > lo:
            dest[lo - dest_offset : hi - dest_offset].copy_(local[lo - piece.offset : hi - piece.offset])
            copied += hi - lo
    return copied


def check_format(state: dict) -> None:
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"optimizer state has format {state.get('format')!r}, expected {STATE_FORMAT!r}")

