"""Spawned-rank bodies for tests/train/test_bf16_layout.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.accounting import count_parameters, memory_per_rank  # noqa: E402
from aria_train.model.decoder import build_model  # noqa: E402
from aria_train.optim.build import build_optimizer  # noqa: E402
from aria_train.optim.config import OptimizerConfig  # noqa: E402
from aria_train.parallel.expert_parallel import apply_expert_parallel  # noqa: E402
from aria_train.parallel.groups import init_parallel_groups  # noqa: E402
from aria_train.train.run_config import build_config  # noqa: E402


def measured_and_accounted(ep_size: int, zero1: bool) -> dict:
    """Per-rank bytes of the tiny preset in the bf16 layout: what the model and optimizer hold
    (parameters, gradient buffers, optimizer state) and what aria_train.accounting says."""
    cfg = build_config(1).model
    groups = init_parallel_groups(ep_size)
    model = build_model(cfg, device="meta")
    counts = count_parameters(model, cfg)
    apply_expert_parallel(model, groups)
    model.to_empty(device="cpu")
    model.init_weights(0)
    optimizer = build_optimizer(model, OptimizerConfig(zero1=zero1), groups, param_dtype=torch.bfloat16)
    if hasattr(optimizer, "_param_buffers"):  # ZeRO-1: flat buffers (bucket padding included)
        weights = sum(b.numel() * b.element_size() for b in optimizer._param_buffers)
        gradients = sum(b.numel() * b.element_size() for b in optimizer._grad_buffers)
    else:
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        gradients = sum(g.numel() * g.element_size() for g in optimizer.main_grads)
    accounted = memory_per_rank(counts, groups.world_size, ep_size, zero1=zero1, precision="bf16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    optimizer.close()
    return {"measured": [weights, gradients, optimizer.state_bytes()],
            "accounted": [accounted.weights, accounted.gradients, accounted.optimizer]}


def bytes_worker(rank: int, world: int, out_dir: str, ep_size: int) -> None:
    report = measured_and_accounted(ep_size, zero1=True)
    Path(out_dir, f"bytes_{rank}.json").write_text(json.dumps(report))
