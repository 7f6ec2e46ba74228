"""Stage 0 end to end under torchrun: a run stopped and resumed takes the same pairs with the same
losses as one that never stopped; the encoder learns (zero-shot classification through the
prompts and retrieval above chance on held-out samples); stage 2 starts from its ViT and trains."""

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from launch_runs import REPO, pretrain, step_records  # noqa: E402

STEPS = 8


def _config(base: Path, samples: int = 240, held_out: int = 48, batch: int = 16) -> Path:
    """The stage-0 pipeline config with smaller demo datasets."""
    raw = yaml.safe_load((REPO / "pipelines" / "stage0_encoder" / "config.yaml").read_text())
    for dataset in raw["encoder"]["datasets"]:
        dataset.update(eval_samples=held_out, synthetic_samples=samples)
    for pair in raw["encoder"]["pairs"]:
        pair["batch_size"] = batch
    path = base / "stage0.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _args(base: Path, name: str, *extra) -> list:
    return ["--stage", "0", "--config", _config(base), "--train-iters", STEPS, "--log-interval", 1,
            "--set", "train.eval_interval=0", "--set", "encoder.schedule=sampled",
            "--set", f"data.cache_dir={base / 'cache'}", "--log-dir", base / name, "--save", base / f"{name}_ckpt",
            *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("stage0")
    pretrain(2, _args(base, "straight"), base)
    pretrain(2, _args(base, "resumed", "--exit-interval", 3), base)
    resumed = pretrain(2, _args(base, "resumed", "--load", base / "resumed_ckpt"), base)
    return base, resumed


def test_resumed_run_continues_the_same_pairs_exactly(runs):
    base, resumed_run = runs
    assert "resumed from" in resumed_run.stdout and "at step 3" in resumed_run.stdout
    straight, resumed = step_records(base / "straight"), step_records(base / "resumed")
    assert sorted(straight) == sorted(resumed) == list(range(1, STEPS + 1))
    pairs = [straight[s]["pair"] for s in sorted(straight)]
    assert len(set(pairs)) > 1  # the schedule alternates
    for step in straight:
        for key in ("pair", "loss", "grad_norm", "logit_scale", "pair_steps", "consumed_samples"):
            assert resumed[step][key] == straight[step][key], (step, key)
        assert straight[step][f"loss/{straight[step]['pair']}"] == straight[step]["loss"]
    assert sum(straight[STEPS]["pair_steps"].values()) == STEPS


def test_stage2_starts_from_the_stage0_vision_tower_and_trains(runs):
    base, _ = runs
    result = pretrain(2, ["--stage", "2", "--train-iters", 6, "--global-batch-size", 4, "--set",
                          "train.micro_batch_size=2", "--seq-length", 64, "--log-interval", 1, "--set",
                          "train.eval_interval=0", "--set", "data.synthetic_samples=64", "--set",
                          f"data.cache_dir={base / 'cache'}", "--set", "checkpoint.init_from=", "--set",
                          f"vision.init_from={base / 'straight_ckpt'}", "--log-dir", base / "stage2"], base)
    expected = f"vision tower initialised from stage-0 encoder checkpoint {base / 'straight_ckpt' / 'iter_0000008'}"
    assert expected in result.stdout
    records = step_records(base / "stage2")
    losses = [records[s]["loss"] for s in sorted(records)]
    assert len(losses) == 6 and all(loss == loss for loss in losses) and losses[-1] < losses[0]


def test_encoder_learns_zero_shot_and_retrieval(tmp_path):
    """A short single-process run on the demo: held-out zero-shot accuracy through the prompts and
    image->text recall@1 well above chance (the README's run reports the full numbers)."""
    config = _config(tmp_path, samples=1200, held_out=120, batch=32)
    pretrain(0, ["--stage", "0", "--config", config, "--train-iters", 150, "--log-interval", 50,
                 "--set", "train.eval_interval=0", "--set", "schedule.warmup_iters=10",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}", "--log-dir", tmp_path / "log"], tmp_path)
    import json

    evals = [json.loads(line) for line in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()]
    final = [r["eval"] for r in evals if "eval" in r][-1]
    assert final["shapes/zero_shot_acc"] > 4 * final["shapes/chance"], final
    assert final["captions/i2t_r@1"] > 4 * final["captions/chance_r@1"], final
    assert final["captions/t2i_r@1"] > 4 * final["captions/chance_r@1"], final


def _moe_run(base: Path, name: str, nproc: int, *extra) -> dict:
    moe = ["--set", "vision.moe.num_experts=4", "--set", "vision.moe.router=topk", "--set", "vision.moe.top_k=2",
           "--train-iters", 3, "--set", "checkpoint.save="]
    pretrain(nproc, _args(base, name, *moe, *extra), base)
    return step_records(base / name)


def test_vision_moe_under_expert_parallelism_trains_like_one_rank(tmp_path):
    """IMP's encoder MoE in stage 0: at world 2 / ep 2 the experts are split across the ranks and
    the losses equal one process's (balance and z coefficients 0, so only the objectives, which
    see the same global batch at any world size, are compared); with the coefficients on, the
    ViT's balance and z-losses join the loss."""
    off = ["--set", "vision.moe.aux_loss_coeff=0", "--set", "vision.moe.z_loss_coeff=0"]
    one = _moe_run(tmp_path, "moe_one", 0, *off)
    split = _moe_run(tmp_path, "moe_ep2", 2, "--ep-size", 2, *off)
    with_aux = _moe_run(tmp_path, "moe_aux", 0)
    for step in (1, 2, 3):
        assert split[step]["pair"] == one[step]["pair"]
        assert split[step]["loss"] == pytest.approx(one[step]["loss"], rel=1e-5, abs=1e-6), step
        assert split[step]["grad_norm"] == pytest.approx(one[step]["grad_norm"], rel=1e-4), step
    assert with_aux[1]["pair"] == one[1]["pair"]
    assert with_aux[1]["loss"] > one[1]["loss"] + 1e-4  # balance (>= 1 x coefficient) and z-loss added
