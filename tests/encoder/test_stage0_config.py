"""Stage 0's config: the pipeline's YAML resolves, and pairs that cannot work fail with one line
naming the key (launch/pretrain.py prints it as `error: ...` and exits 2)."""

import subprocess
import sys

import pytest

from aria_train.config import ConfigError
from aria_train.train.run_config import REPO_ROOT, build_config


def test_pipeline_config_resolves():
    cfg = build_config(0, world_size=2)
    assert cfg.stage == 0 and cfg.has_vision and not cfg.multimodal
    assert [(p.dataset, p.objective, p.weight, p.batch_size) for p in cfg.encoder.pairs] == [
        ("shapes", "softmax", 1.0, 64), ("shapes", "nce", 1.0, 64), ("captions", "nce", 2.0, 64)]
    assert cfg.encoder.schedule == "weighted_round_robin" and "a photo of a {}." in cfg.encoder.prompts
    assert cfg.vision.preset == "tiny"


@pytest.mark.parametrize("overrides, message", [
    ({"encoder.pairs": [{"dataset": "captions", "objective": "softmax"}]},
     r"encoder.pairs\[0\] \(captions, softmax\): softmax classification needs a labelled dataset"),
    ({"encoder.pairs": [{"dataset": "birds", "objective": "nce"}]}, "no dataset named 'birds'"),
    ({"encoder.pairs": [{"dataset": "shapes", "objective": "mse"}]}, "encoder.pairs.objective='mse' is not one of"),
    ({"encoder.pairs": [{"dataset": "shapes", "weight": 0}]}, r"weight=0.0 must be positive"),
    ({"encoder.pairs": [{"dataset": "shapes", "batch_size": 10}]}, "batch_size=10 is not a multiple of the world size 4"),
    ({"encoder.pairs": [{"dataset": "shapes"}, {"dataset": "shapes"}]}, "the same dataset and objective twice"),
    ({"encoder.pairs": []}, "encoder.pairs is empty"),
    ({"encoder.pairs": [{"dataset": "shapes", "colour": 1}]}, "unknown config key encoder.pairs.colour"),
    ({"encoder.datasets": [{"name": "a"}, {"name": "a"}]}, "the name 'a' is used twice"),
    ({"encoder.prompts": ["a photo"]}, r"template 'a photo' must hold exactly one \{\}"),
    ({"encoder.schedule": "random"}, "encoder.schedule='random' is not one of"),
    ({"encoder.init_temperature": 0.001}, "starts above encoder.max_logit_scale"),
    ({"multimodal": True}, "stage 0 trains the encoder alone"),
    ({"checkpoint.init_from_hf": "/models/Aria"}, r"checkpoint.init_from_hf \(--init-from-hf\) loads an Aria decoder"),
    ({"train.freeze": ["vision", "decoder"]}, r"train.freeze=\['decoder'\] names parts stage 0 does not have"),
])
def test_bad_pairs_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(0, overrides=overrides, world_size=4)


def test_launch_prints_the_error_and_exits_2():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "launch" / "pretrain.py"), "--stage", "0", "--set",
                             "encoder.pairs=[{dataset: captions, objective: softmax}]"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: encoder.pairs[0] (captions, softmax): softmax classification")


def test_dry_run_counts_the_dual_encoder():
    """--dry-run applies to stage 0: the towers' and heads' parameters (a tiny ViT, the pipeline's text tower)."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "launch" / "pretrain.py"), "--stage", "0", "--dry-run",
                             "--set", "train.freeze=[vision]", "--set", "vision.activation_checkpointing=crops"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    cfg = build_config(0)
    vit = sum(p.numel() for p in _tiny_vit(cfg).parameters())
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert rows["vision_tower"].split()[0] == f"{vit:,}"
    total = int(rows["total"].split()[0].replace(",", ""))
    assert rows["trainable"].split()[0] == f"{total - vit:,}" and total > vit


def _tiny_vit(cfg):
    from aria_train.model.vision import VisionTransformer

    return VisionTransformer(cfg.vision)
