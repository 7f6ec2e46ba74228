"""The bf16 layout with frozen parameter groups (train.freeze): frozen weights are stored in bf16
too, so a model's parameter bytes are what the accounting counts (2 bytes per weight)."""

import torch

from aria_train.accounting import count_parameters, memory_per_rank
from aria_train.model.decoder import build_model
from aria_train.model.freeze import freeze_parameters
from aria_train.optim.build import build_optimizer
from aria_train.optim.config import OptimizerConfig
from aria_train.parallel.groups import ParallelGroups
from aria_train.train.run_config import build_config


def test_frozen_parameters_are_bf16_and_weight_bytes_match_the_accounting():
    cfg = build_config(1, preset="tiny")
    model = build_model(cfg.model, seed=0)
    counts = count_parameters(model, cfg.model)
    frozen = freeze_parameters(model, ["routed_experts"])
    assert 0 < frozen < counts.total
    build_optimizer(model, OptimizerConfig(), ParallelGroups(), param_dtype=torch.bfloat16)
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(True, torch.bfloat16), (False, torch.bfloat16)}, dtypes
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weight_bytes == memory_per_rank(counts, 1, 1, precision="bf16").weights


def test_fp32_layout_leaves_frozen_parameters_fp32():
    cfg = build_config(1, preset="tiny")
    model = build_model(cfg.model, seed=0)
    freeze_parameters(model, ["routed_experts"])
    build_optimizer(model, OptimizerConfig(), ParallelGroups())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
