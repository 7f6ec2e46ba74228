"""Stage 2 through launch/pretrain.py on data in the layouts users have: img2dataset-style
WebDataset shards and LLaVA conversation JSON train (images counted, loss falling over 30 steps),
and a resumed run whose shards went bad stops with one `error:` line before its next step,
leaving the checkpoint it resumed from the latest."""

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch_runs import PRETRAIN, pretrain, step_records  # noqa: E402
from spawn_world import free_port  # noqa: E402
from test_mm_guard import img2dataset_shards  # noqa: E402

from aria_train.checkpoint.layout import read_latest  # noqa: E402


def stage2_args(base: Path, data, steps: int, name: str, *extra) -> list:
    return ["--stage", "2", "--train-iters", steps, "--global-batch-size", 4, "--set", "train.micro_batch_size=2",
            "--seq-length", 64, "--log-interval", 1, "--set", "train.eval_interval=0",
            "--set", f"data.mm_data_path=[1.0, {data}]", "--set", f"data.cache_dir={base / 'cache'}",
            "--set", "checkpoint.init_from=", "--log-dir", base / name, *extra]


def assert_trains_on_images(log_dir: Path, steps: int = 30):
    records = step_records(log_dir)
    assert sorted(records) == list(range(1, steps + 1))
    assert all(records[s]["image_crops"] > 0 for s in records)  # the console's "images N"
    losses = [records[s]["loss"] for s in sorted(records)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses


def test_stage2_trains_on_img2dataset_shards(tmp_path):
    data = img2dataset_shards(tmp_path / "cc3m", shards=3, per_shard=20)
    result = pretrain(0, stage2_args(tmp_path, data, 30, "log", "--save", ""), tmp_path)
    assert "data: indexed" in result.stdout
    assert_trains_on_images(tmp_path / "log")


def test_stage2_trains_on_llava_json(tmp_path):
    images = tmp_path / "llava" / "images"
    images.mkdir(parents=True)
    colours = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
    records = []
    for i in range(40):
        name, rgb = list(colours.items())[i % 4]
        Image.new("RGB", (28 + 14 * (i % 3), 42), rgb).save(images / f"{i:04d}.jpg")
        records.append({"id": f"{i:04d}", "image": f"{i:04d}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this picture?"},
            {"from": "gpt", "value": f"It is {name}."}]})
    (tmp_path / "llava" / "llava_instruct.json").write_text(json.dumps(records, indent=1))
    data = tmp_path / "llava" / "llava_instruct.json"
    pretrain(0, stage2_args(tmp_path, data, 30, "log", "--save", "", "--set", f"data.mm_image_root={images}"),
             tmp_path)
    assert_trains_on_images(tmp_path / "log")


def test_bad_data_stops_a_resumed_run_and_keeps_the_checkpoint(tmp_path):
    data = img2dataset_shards(tmp_path / "laion", shards=3, per_shard=20)
    ckpt = tmp_path / "ckpt"
    guard = ["--set", "data.bad_sample_window=50"]
    pretrain(2, stage2_args(tmp_path, data, 4, "first", "--save", ckpt, "--set", "checkpoint.save_interval=2", *guard),
             tmp_path)
    assert read_latest(ckpt) == 4
    before = sorted(os.listdir(ckpt))
    img2dataset_shards(data, shards=3, per_shard=20, corrupt_every=5)  # the same shards, now a fifth broken

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{free_port()}", str(PRETRAIN)]
    args = stage2_args(tmp_path, data, 30, "second", "--load", ckpt, "--save", ckpt, *guard)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(cmd + [str(a) for a in args], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: data: source laion: ") and "of its last 50 samples are bad" in errors[0]
    assert "most common: image N: cannot identify image file" in errors[0] and f"{data}/000" in errors[0]
    # It trained until the guard's window (half filled by the first run) crossed the line, and
    # stopped while fetching the next step's data: that step never ran, nothing was saved (not
    # even the save a finishing or signalled run makes), the first run's checkpoint is the latest.
    assert "resumed from" in result.stdout and "at step 4" in result.stdout
    steps = sorted(step_records(tmp_path / "second"))
    assert steps == list(range(5, 5 + len(steps))) and len(steps) < 26
    last = steps[-1] if steps else 4
    assert (tmp_path / "second" / "exit_status").read_text().split() == ["error", str(last)]
    assert read_latest(ckpt) == 4 and sorted(os.listdir(ckpt)) == before


def test_a_layout_the_config_does_not_accept_stops_the_run(tmp_path):
    data = img2dataset_shards(tmp_path / "cc", shards=2, per_shard=20)
    args = stage2_args(tmp_path, data, 30, "log", "--save", "", "--set", "data.mm_formats=[aria, llava]")
    result = subprocess.run([sys.executable, str(PRETRAIN), *map(str, args)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data: source cc: its first 100 samples are all bad; most common: layout caption "
                           "is not in data.mm_formats [aria, llava] (100 of them), e.g. ")
