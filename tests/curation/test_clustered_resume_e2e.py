"""Stage 1 through launch/pretrain.py (torchrun, 2 ranks, gloo) on a cluster_pack output with
data.packing: clustered: 8 steps straight vs 4 steps + stop + resume to 8 give bit-identical
losses, learning rates, gradient norms and consumed samples."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from curate_helpers import load_tool, write_jsonl  # noqa: E402
from launch_runs import pretrain, step_records  # noqa: E402

from aria_train.data.curation.synthetic import topic_corpus  # noqa: E402


def _args(base: Path, log: str, *extra) -> list:
    return ["--stage", "1", "--set", "train.micro_batch_size=2", "--global-batch-size", "4", "--seq-length", "64",
            "--log-interval", "1", "--set", "train.eval_interval=0", "--set", "data.packing=clustered",
            "--data-path", str(base / "packed"), "--set", "data.split=90,10,0",
            "--set", f"data.cache_dir={base / 'cache'}", "--log-dir", str(base / log),
            "--train-iters", "8", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("clustered_e2e")
    texts, _ = topic_corpus(400, 4, seed=1, sentences=(1, 3))
    write_jsonl(base / "docs.jsonl", [{"text": t} for t in texts])
    cluster_pack = load_tool("cluster_pack")
    assert cluster_pack.main(["--input", str(base / "docs.jsonl"), "--output-prefix", str(base / "packed"),
                              "--seq-length", "64", "--leaf-size", "150"]) == 0
    save = ["--save", str(base / "save"), "--save-interval", "4"]
    return {
        "base": base,
        "straight": pretrain(2, _args(base, "straight"), base),
        "stop": pretrain(2, _args(base, "stop", *save, "--exit-interval", "4"), base),
        "resume": pretrain(2, _args(base, "resume", *save, "--load", str(base / "save")), base),
    }


def test_clustered_stage1_resumes_exactly(runs):
    base = runs["base"]
    assert "clustered packing" in runs["straight"].stdout
    straight = step_records(base / "straight")
    stop, resume = step_records(base / "stop"), step_records(base / "resume")
    assert sorted(straight) == list(range(1, 9)) and sorted(stop) == list(range(1, 5))
    assert sorted(resume) == list(range(5, 9)) and "resumed from" in runs["resume"].stdout
    keys = ("loss", "lr", "grad_norm", "consumed_samples")
    for step in range(1, 9):
        got = (stop if step <= 4 else resume)[step]
        assert [got[k] for k in keys] == [straight[step][k] for k in keys], step
    assert straight[8]["loss"] < straight[1]["loss"]
