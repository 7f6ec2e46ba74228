"""vision.init_from takes an aria-train run (or iter_ directory) holding a ViT: stage 2's tower
gets stage 0's weights, a position grid of another size is resized, and a checkpoint without a
ViT, or with one of another shape, is a one-line error naming the path."""

import dataclasses

import pytest
import torch

from aria_train.checkpoint import Checkpointer, RunDescription, TrainingParts
from aria_train.checkpoint.config import CheckpointConfig
from aria_train.convert.hf_multimodal import _resize_positions, init_vision_tower
from aria_train.errors import UserError
from aria_train.model.decoder import build_model
from aria_train.model.dual_encoder import build_dual_encoder
from aria_train.model.multimodal import build_multimodal_model
from aria_train.model.text_encoder import TextEncoderConfig
from aria_train.optim.config import OptimizerConfig
from aria_train.optim.replicated import ReplicatedAdamW
from aria_train.parallel.groups import ParallelGroups
from aria_train.train.run_config import build_config
from aria_train.train.state import TrainState


def _save(model, root, stage: int, step: int = 7) -> None:
    groups = ParallelGroups()
    state = TrainState(step=step, consumed_samples=10)
    parts = TrainingParts(model, ReplicatedAdamW(model, OptimizerConfig(), groups), state)
    run = RunDescription(config={}, stage=stage, model_preset="tiny", rope_base=1e5, num_experts=16)
    Checkpointer(CheckpointConfig(save=str(root)), groups, run).save(parts)


@pytest.fixture(scope="module")
def stage0_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("init") / "stage0"
    cfg = build_config(2)
    model = build_dual_encoder(cfg.vision, TextEncoderConfig(), cfg.model.vocab_size, cfg.model.hidden_size, {"s": 3},
                               seed=11)
    _save(model, root, stage=0)
    return root, {k: v.clone() for k, v in model.vision_tower.state_dict().items()}


def test_stage2_tower_takes_the_stage0_weights(stage0_run):
    root, expected = stage0_run
    cfg = build_config(2)
    model = build_multimodal_model(cfg.model, cfg.vision, cfg.projector, image_token_id=5, seed=0)
    assert not torch.equal(model.vision_tower.embeddings.patch_embedding.weight,
                           expected["embeddings.patch_embedding.weight"])
    for where in (root, root / "iter_0000007"):
        said = init_vision_tower(model, where)
        assert said == f"stage-0 encoder checkpoint {root / 'iter_0000007'} (iteration 7)"
        for name, tensor in model.vision_tower.state_dict().items():
            assert torch.equal(tensor, expected[name]), name


def test_position_grid_is_resized(stage0_run):
    root, expected = stage0_run
    cfg = build_config(2, overrides={"vision.image_size": 280})  # a 20x20 position grid instead of 10x10
    model = build_multimodal_model(cfg.model, cfg.vision, cfg.projector, image_token_id=5, seed=0)
    init_vision_tower(model, root)
    key = "embeddings.position_embedding.weight"
    assert torch.equal(model.vision_tower.state_dict()[key], _resize_positions(expected[key], 20))


def test_checkpoint_without_a_fitting_vit_is_refused(stage0_run, tmp_path):
    root, _ = stage0_run
    cfg = build_config(2)
    text_only = tmp_path / "stage1"
    _save(build_model(cfg.model, seed=0), text_only, stage=1)
    model = build_multimodal_model(cfg.model, cfg.vision, cfg.projector, image_token_id=5, seed=0)
    with pytest.raises(UserError, match=r"\(stage 1\) holds no vision_tower weights"):
        init_vision_tower(model, text_only)
    wider = dataclasses.replace(cfg.vision, hidden_size=48, num_heads=2, intermediate_size=64)
    other = build_multimodal_model(cfg.model, wider, cfg.projector, image_token_id=5, seed=0)
    shapes = r"has shape \[32, 3, 14, 14\] there, \[48, 3, 14, 14\] here"
    with pytest.raises(UserError, match=rf"vision.init_from={root}: embeddings.patch_embedding.weight {shapes}"):
        init_vision_tower(other, root)
