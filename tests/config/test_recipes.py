"""The paper's recipe as configs: every aria-25b stage config builds, and the tokens it trains
(iterations x global batch x sequence length) are the paper's budget, exceeded by less than one
step; train_iters and global_batch_size follow from the token fields unless given explicitly."""

import pytest

from aria_train.config import ConfigError
from aria_train.train.budget import describe_budget
from aria_train.train.run_config import build_config, stage_recipes

# arXiv 2410.05993: stage 1 6.4T language tokens; stage 2 1T language + 400B multimodal; stage 3
# 12B language + 21B multimodal; stage 4 20B
PAPER_TOKENS = {1: 6_400_000_000_000, 2: 1_000_000_000_000 + 400_000_000_000,
                3: 12_000_000_000 + 21_000_000_000, 4: 20_000_000_000}
PAPER_SEQ = {1: 8192, 2: 8192, 3: 65536, 4: 65536}


@pytest.mark.parametrize("stage", sorted(PAPER_TOKENS))
def test_aria_25b_stage_trains_the_paper_token_budget(stage):
    cfg = build_config(stage, preset="aria-25b")
    assert cfg.model.preset == "aria-25b" and cfg.recipe.endswith("aria-25b.yaml")
    seq, train = cfg.data.seq_length, cfg.train
    assert seq == PAPER_SEQ[stage]
    step = train.global_batch_size * seq
    tokens = train.train_iters * step
    assert 0 <= tokens - PAPER_TOKENS[stage] < step, (tokens, PAPER_TOKENS[stage], step)
    assert train.global_batch_size * seq == train.global_batch_tokens
    assert cfg.train.global_batch_size % (cfg.train.micro_batch_size * cfg.parallel.min_world_size) == 0
    assert cfg.parallel.min_world_size % cfg.parallel.ep_size == 0
    print(f"stage {stage}: {describe_budget(cfg)}")


def test_multimodal_mixtures_are_the_paper_token_shares():
    stage2 = build_config(2, preset="aria-25b").data
    assert stage2.mix_by == "tokens"
    assert stage2.language_weight == pytest.approx(1000 / 1400)
    weights = dict(zip(stage2.mm_data_path[1::2], map(float, stage2.mm_data_path[::2])))
    assert weights == {"data/stage2/interleaved": 190, "data/stage2/synthetic_captions": 70,
                       "data/stage2/documents": 102, "data/stage2/video": 35}
    stage3 = build_config(3, preset="aria-25b").data
    assert stage3.language_weight == pytest.approx(12 / 33)
    long_mm, short_mm = map(float, stage3.mm_data_path[::2])
    assert long_mm / (long_mm + short_mm) == pytest.approx(0.69)
    assert stage3.data_path[::2] == ["0.69", "0.31"]


def test_stage4_anneals_to_zero_and_every_stage_has_a_recipe():
    for name in ("aria-25b", "aria-25b-finetune", "aria-25b-finetune-1gpu"):
        cfg = build_config(4, preset=name)
        assert cfg.optimizer.min_lr == 0.0 and cfg.schedule.style == "cosine"
    assert stage_recipes(4) == ["aria-25b", "aria-25b-finetune", "aria-25b-finetune-1gpu"]
    assert all("aria-25b" in stage_recipes(stage) for stage in (1, 2, 3))
    assert build_config(4, preset="aria-25b-finetune").train.freeze == ["routed_experts"]


def test_sequence_length_override_keeps_the_budget(capsys):
    cfg = build_config(1, preset="aria-25b", overrides={"data.seq_length": 4096})
    assert cfg.train.global_batch_size == 4608  # 18,874,368 tokens per step / 4,096
    assert cfg.train.train_iters == 339_085  # same tokens per step: same iterations


def test_explicit_sizes_win_with_a_note(capsys):
    cfg = build_config(1, preset="aria-25b", overrides={"train.train_iters": 20, "train.global_batch_size": 64})
    assert (cfg.train.train_iters, cfg.train.global_batch_size) == (20, 64)
    assert cfg.train.token_budget is None and cfg.train.global_batch_tokens is None
    err = capsys.readouterr().err
    assert "note: train.train_iters=20 given; train.token_budget=6,400,000,000,000 is not used" in err
    assert "note: train.global_batch_size=64 given; train.global_batch_tokens=18,874,368 is not used" in err


def test_token_fields_must_fit(tmp_path):
    with pytest.raises(ConfigError, match="train.global_batch_tokens=1,000 is not a multiple of data.seq_length=128"):
        build_config(1, overrides={"train.global_batch_tokens": 1000})
    config = tmp_path / "both.yaml"
    config.write_text("train:\n  token_budget: 1000000\n  train_iters: 5\n")
    with pytest.raises(ConfigError, match="train.token_budget and train.train_iters are both set"):
        build_config(1, config_file=config)
    with pytest.raises(ConfigError, match="train.token_budget=-5 must be positive"):
        build_config(1, overrides={"train.token_budget": -5})


def test_a_run_trains_its_token_budget_and_logs_it(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from launch_runs import pretrain, step_records

    args = ["--stage", 1, "--set", "train.token_budget=2500", "--set", "train.global_batch_tokens=1024",
            "--set", "train.micro_batch_size=4", "--set", "train.eval_interval=0", "--set", "checkpoint.save=",
            "--log-interval", 1, "--log-dir", tmp_path / "run", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    result = pretrain(0, args, tmp_path)
    # 1,024 tokens per step = 8 sequences of 128; ceil(2,500 / 1,024) = 3 steps
    assert ("tokens: 3 iterations x 8 sequences x 128 tokens = 3,072 tokens (1,024 per step); "
            "train.token_budget 2,500") in result.stdout
    assert sorted(step_records(tmp_path / "run")) == [1, 2, 3]
