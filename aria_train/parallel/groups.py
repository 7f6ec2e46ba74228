"""Process groups of the parallel layout: data parallel over the world, expert parallel (EP)
inside blocks of `ep_size` consecutive ranks, expert-data-parallel (EDP) across those blocks.

    world 8, ep 4:   EP groups  [0 1 2 3] [4 5 6 7]
                     EDP groups [0 4] [1 5] [2 6] [3 7]   (ranks holding the same experts)

Dense parameters are replicated on the world (gradients summed over it, optimizer state sharded
over it); routed experts are split over the EP group (`expert_layout`: rank `ep_rank` holds
experts [ep_rank * E / ep_size, (ep_rank + 1) * E / ep_size)) and replicated over the EDP group.

`init_parallel_groups` must be called by every rank after torch.distributed is initialised; it
creates every EP group and then every EDP group in the same order on all ranks, as
`torch.distributed.new_group` requires. Without an initialised process group it returns the
trivial single-process layout (all groups None, every size 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch.distributed as dist

from aria_train.config.errors import ConfigError
from aria_train.moe.layout import ExpertLayout
from aria_train.parallel.config import check_ep_divides_world


@dataclass
class ParallelGroups:
    world_size: int = 1
    rank: int = 0
    ep_size: int = 1
    ep_rank: int = 0  # position inside the EP block = which slice of the experts this rank holds
    edp_size: int = 1  # world_size // ep_size
    edp_rank: int = 0  # index of this rank's EP block
    world_group: Optional[Any] = None  # None = not distributed (or the default group)
    ep_group: Optional[Any] = None
    edp_group: Optional[Any] = None
    ep_ranks: list[int] = field(default_factory=lambda: [0])  # global ranks of this rank's EP group
    edp_ranks: list[int] = field(default_factory=lambda: [0])  # global ranks of this rank's EDP group
    distributed: bool = False

    def expert_layout(self, num_experts: int) -> ExpertLayout:
        """Which of `num_experts` global experts (per layer) this rank holds."""
        return ExpertLayout(num_experts, self.ep_size, self.ep_rank)


def ep_blocks(world_size: int, ep_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """(EP groups, EDP groups) as lists of global ranks, in creation order."""
    ep_groups = [list(range(start, start + ep_size)) for start in range(0, world_size, ep_size)]
    edp_groups = [list(range(pos, world_size, ep_size)) for pos in range(ep_size)]
    return ep_groups, edp_groups


def init_parallel_groups(ep_size: int = 1) -> ParallelGroups:
    """Creates the groups of the layout. Every rank must call it, with the same ep_size."""
    if not (dist.is_available() and dist.is_initialized()):
        if ep_size != 1:
            raise ConfigError(f"parallel.ep_size={ep_size} does not divide the world size 1 (torch.distributed is off)")
        return ParallelGroups()
    world_size, rank = dist.get_world_size(), dist.get_rank()
    check_ep_divides_world(ep_size, world_size)
    ep_groups, edp_groups = ep_blocks(world_size, ep_size)
    my_ep = my_edp = None
    my_ep_ranks: list[int] = []
    my_edp_ranks: list[int] = []
    for ranks in ep_groups:  # every rank creates every group, in the same order
        group = dist.new_group(ranks)
        if rank in ranks:
            my_ep, my_ep_ranks = group, ranks
    for ranks in edp_groups:
        group = dist.new_group(ranks)
        if rank in ranks:
            my_edp, my_edp_ranks = group, ranks
    return ParallelGroups(
        world_size=world_size,
        rank=rank,
        ep_size=ep_size,
        ep_rank=rank % ep_size,
        edp_size=world_size // ep_size,
        edp_rank=rank // ep_size,
        world_group=dist.group.WORLD,
        ep_group=my_ep,
        edp_group=my_edp,
        ep_ranks=my_ep_ranks,
        edp_ranks=my_edp_ranks,
        distributed=True,
    )
