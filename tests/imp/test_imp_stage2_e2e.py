"""Stage 2 on the tiny preset with every IMP option on (pipelines/stage2_mm/imp_options.yaml:
QK-LayerNorm, decoder MoE placement, expert-choice MoE in the ViT's last half, video tubelets
with factorised positions, spectrogram audio), through launch/pretrain.py on 2 CPU ranks with
expert parallelism 2 (the encoder's experts sharded too): the loss falls over 30 steps, a run
resumed from the step-24 checkpoint continues bit for bit, and the same checkpoint resumes
resharded on one process (ep 1) with the same losses."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from launch_runs import pretrain, step_records  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "stage2_mm" / "imp_options.yaml"
STEPS, SAVED = 30, 24
KEYS = ("loss", "lm_loss", "balance_loss", "z_loss", "grad_norm", "image_tokens", "image_crops", "video_clips",
        "audio_clips")


def _args(base: Path, name: str, *extra) -> list:
    return ["--stage", "2", "--config", CONFIG, "--train-iters", STEPS, "--global-batch-size", 4,
            "--set", "train.micro_batch_size=2", "--seq-length", 64, "--log-interval", 1,
            "--set", "train.eval_interval=0", "--set", "data.synthetic_samples=64",
            "--set", f"data.cache_dir={base / 'cache'}", "--log-dir", base / name, "--run-name", name,
            *extra]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    base = tmp_path_factory.mktemp("imp_stage2")
    pretrain(2, _args(base, "straight", "--ep-size", 2, "--save", base / "ckpt", "--save-interval", SAVED), base)
    return base, step_records(base / "straight")


def test_all_options_on_trains(straight):
    _, records = straight
    assert sorted(records) == list(range(1, STEPS + 1))
    losses = [records[s]["lm_loss"] for s in range(1, STEPS + 1)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last)
    for key in ("image_crops", "video_clips", "audio_clips"):
        assert sum(records[s][key] for s in records) > 0, key  # every kind of media was trained on


def test_resume_is_exact(straight):
    base, records = straight
    pretrain(2, _args(base, "resumed", "--ep-size", 2, "--load", base / "ckpt" / f"iter_{SAVED:07d}"), base)
    resumed = step_records(base / "resumed")
    assert sorted(resumed) == list(range(SAVED + 1, STEPS + 1))
    for step in resumed:
        for key in KEYS:
            assert resumed[step][key] == records[step][key], (step, key)


def test_the_checkpoint_reshards_to_one_rank(straight):
    base, records = straight
    result = pretrain(0, _args(base, "resharded", "--load", base / "ckpt" / f"iter_{SAVED:07d}", "--exit-interval",
                               SAVED + 2), base)
    assert "resharded from world 2 / ep 2" in result.stdout
    resharded = step_records(base / "resharded")
    assert sorted(resharded) == [SAVED + 1, SAVED + 2]
    for step in resharded:
        assert resharded[step]["loss"] == pytest.approx(records[step]["loss"], rel=1e-5), step
