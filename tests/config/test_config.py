import pytest

from aria_train.config import ConfigError
from aria_train.train.run_config import build_config


def test_stage1_defaults_to_tiny_preset():
    cfg = build_config(1)
    assert cfg.model.preset == "tiny"
    assert cfg.model.vocab_size == 1024
    assert cfg.model.moe.num_experts == 16


def test_preset_and_overrides_apply_in_order():
    cfg = build_config(1, preset="aria-25b", overrides={"model.moe.top_k": "4", "train.train_iters": 30})
    assert cfg.model.hidden_size == 2560
    assert cfg.model.moe.top_k == 4
    assert cfg.train.train_iters == 30


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.moe.nonexistent": 1}, "unknown config key model.moe.nonexistent"),
        ({"trainer.iters": 1}, "unknown config key trainer"),
        ({"train.train_iters": "many"}, "config key train.train_iters expects an integer"),
        ({"optimizer.lr": "fast"}, "config key optimizer.lr expects a number"),
        ({"model.moe.top_k": 17}, "model.moe.top_k=17 exceeds model.moe.num_experts=16"),
        ({"model.num_heads": 5}, "model.num_heads=5 does not divide model.hidden_size=64"),
        ({"model.moe.balance_group_size": 5}, "model.moe.balance_group_size=5 does not divide"),
        ({"parallel.ep_size": 3}, "parallel.ep_size=3 does not divide model.moe.num_experts=16"),
        ({"schedule.style": "linear"}, "schedule.style='linear' is not one of"),
        ({"data.tokenizer_type": "huggingface"}, "data.tokenizer_type=huggingface needs data.tokenizer_model"),
        ({"vision.activation_checkpointing": True}, "vision.activation_checkpointing=True is not one of"),
        ({"train.freeze": ["experts"]}, "train.freeze='experts' is not one of"),
    ],
)
def test_bad_config_fails_with_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        build_config(1, overrides=overrides)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_world_size_checks():
    with pytest.raises(ConfigError, match="parallel.ep_size=4 does not divide the world size 2"):
        build_config(1, overrides={"parallel.ep_size": 4}, world_size=2)
    with pytest.raises(ConfigError, match="train.global_batch_size=6 is not a multiple"):
        build_config(1, overrides={"train.global_batch_size": 6, "train.micro_batch_size": 2}, world_size=4)


def test_missing_config_file_and_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(1, config_file=tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="--model 'huge' is neither a model preset"):
        build_config(1, preset="huge")
    with pytest.raises(ConfigError, match="model.preset='huge' is not one of"):
        build_config(1, overrides={"model.preset": "huge"})
