"""train.freeze: the named parameter groups take no gradient and no optimizer state; a run
(2 ranks, experts split over them, ZeRO-1) leaves them exactly as initialised while the rest
trains, and the dry-run's memory counts them as weights only."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from launch_runs import pretrain  # noqa: E402

from aria_train.eval.trained_model import load_trained_model  # noqa: E402
from aria_train.model.decoder import build_model  # noqa: E402
from aria_train.model.freeze import FREEZE_GROUPS, freeze_parameters, parameter_groups  # noqa: E402
from aria_train.optim.flat_state import collect_params  # noqa: E402
from aria_train.optim.config import OptimizerConfig  # noqa: E402
from aria_train.plan.counts import count_stage  # noqa: E402
from aria_train.plan.layout import Layout, layout_memory  # noqa: E402
from aria_train.train.run_config import build_config  # noqa: E402


def test_groups_cover_the_decoder_and_towers():
    cfg = build_config(1)
    model = build_model(cfg.model, device="meta")
    for name, _ in model.named_parameters():
        groups = parameter_groups(name)
        assert "decoder" in groups and len(groups) == 2, name  # one specific group each
    assert parameter_groups("vision_tower.encoder.layers.0.mlp.fc1.weight") == {"vision"}
    assert parameter_groups("multi_modal_projector.query") == {"projector"}
    assert parameter_groups("language_model.layers.1.moe.experts.w_down") == {"decoder", "routed_experts"}
    frozen = freeze_parameters(model, ["routed_experts", "embeddings"])
    expected = 2 * (16 * 64 * 64 + 16 * 32 * 64) + 1024 * 64  # 2 layers of experts + input embedding
    assert frozen == expected
    trainable = {info.name for info in collect_params(model, OptimizerConfig())}
    assert "embed_tokens.weight" not in trainable and "lm_head.weight" in trainable
    assert not any(".experts." in n for n in trainable)
    with pytest.raises(ValueError, match="unknown freeze group"):
        freeze_parameters(model, ["everything"])
    assert "routed_experts" in FREEZE_GROUPS


def test_frozen_groups_cost_weights_only_in_the_accounting():
    cfg = build_config(1, preset="aria-25b")
    counts = count_stage(cfg)
    full = layout_memory(cfg, counts, Layout(8, 8, "full", "none", 1))
    frozen = layout_memory(cfg, counts, Layout(8, 8, "full", "none", 1, ("routed_experts",)))
    routed = counts.decoder.routed_experts
    assert frozen.weights == full.weights
    assert full.gradients - frozen.gradients == 4 * routed / 8  # fp32 gradients of this rank's experts
    assert full.optimizer - frozen.optimizer == pytest.approx(12 * routed / 8)  # their ZeRO-1 shard (EDP 1)


def test_a_run_leaves_frozen_groups_as_initialised(tmp_path):
    args = ["--stage", 1, "--ep-size", 2, "--train-iters", 2, "--set", "train.freeze=[routed_experts,embeddings]",
            "--set", "train.eval_interval=0", "--save", tmp_path / "ckpt", "--save-interval", 2,
            "--log-dir", tmp_path / "run", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    result = pretrain(2, args, tmp_path)
    assert "frozen (routed_experts, embeddings): " in result.stdout
    trained, cfg = load_trained_model(str(tmp_path / "ckpt"))
    initial = build_model(cfg.model, seed=cfg.train.seed)
    start = dict(initial.named_parameters())
    for name, param in trained.named_parameters():
        same = torch.equal(param, start[name])
        assert same == bool(parameter_groups(name) & {"routed_experts", "embeddings"}), name
