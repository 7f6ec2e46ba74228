"""tools/expert_heatmap.py: a PNG (+ CSV, JSON) from a tiny stage-1 checkpoint, from a run's
metrics.jsonl, and the visual-specialisation view from per-modality statistics."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ops_helpers import PRETRAIN, ROOT, TINY, run  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tool():
    spec = importlib.util.spec_from_file_location("expert_heatmap", ROOT / "tools" / "expert_heatmap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Stage 1, one process, 3 steps, a checkpoint at the end."""
    tmp = tmp_path_factory.mktemp("heatmap_run")
    result = run([sys.executable, str(PRETRAIN), "--stage", "1", "--train-iters", "3", *TINY,
                  "--global-batch-size", "2", "--log-interval", "1", "--save", tmp / "ckpt", "--log-dir", tmp / "log"])
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp


def _check_outputs(out: Path, layers: int, experts: int, columns: list):
    assert (out / "expert_heatmap.png").read_bytes()[:8] == PNG_MAGIC
    rows = list(csv.DictReader(open(out / "expert_activation.csv")))
    assert len(rows) == layers * experts
    assert list(rows[0]) == ["layer", "expert", *columns]
    stats = json.loads((out / "expert_activation.json").read_text())
    assert stats["layers"] == layers and stats["experts"] == experts
    return rows, stats


def test_heatmap_from_a_checkpoint(tiny_run, tmp_path):
    result = run([sys.executable, str(ROOT / "tools" / "expert_heatmap.py"), "--checkpoint", tiny_run / "ckpt",
                  "--batches", "2", "--out", tmp_path])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 layers x 16 experts from" in result.stdout and "iter_0000003" in result.stdout
    rows, stats = _check_outputs(tmp_path, 2, 16, ["tokens_per_expert", "activation_rate"])
    # 2 global batches x 2 samples x 32 tokens, top-4: every token picks 4 experts
    for layer in range(2):
        assert sum(int(r["tokens_per_expert"]) for r in rows if r["layer"] == str(layer)) == 2 * 2 * 32 * 4
        assert sum(stats["activation_rate"][layer]) == pytest.approx(4.0)


def test_heatmap_from_logged_statistics(tiny_run, tmp_path):
    tool = _tool()
    stats = tool.stats_from_jsonl(tiny_run / "log" / "metrics.jsonl")
    assert "3 windows" in stats["source"]
    assert sum(stats["tokens_per_expert"][0]) == 3 * 2 * 32 * 4  # summed over the logged windows
    assert sum(stats["activation_rate"][1]) == pytest.approx(4.0)
    tool.write_outputs(stats, tmp_path)
    _check_outputs(tmp_path, 2, 16, ["tokens_per_expert", "activation_rate"])


def test_visual_specialisation_view_and_expert_cap(tmp_path):
    tool = _tool()
    layers, experts = 3, 64
    rate_v = [[(2.0 if e % 8 == 0 else 0.5) * 6 / experts for e in range(experts)] for _ in range(layers)]
    rate_t = [[6 / experts] * experts for _ in range(layers)]
    record = {"step": 10, "router_counts": {
        "tokens_per_expert": [[100] * experts] * layers, "tokens": [1000] * layers,
        "activation_rate_visual": rate_v, "activation_rate_text": rate_t,
        "visual_tokens": [200.0] * layers, "text_tokens": [800.0] * layers}}
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 5, "loss": 1.0}) + "\n" + json.dumps(record) + "\n")
    stats = tool.stats_from_jsonl(path)
    assert stats["visual_specialisation"][0][0] == pytest.approx(2.0)
    assert stats["visual_specialisation"][2][1] == pytest.approx(0.5)
    tool.write_outputs(stats, tmp_path / "out", max_experts=50)
    _check_outputs(tmp_path / "out", layers, experts, ["tokens_per_expert", "activation_rate",
                                                      "activation_rate_visual", "activation_rate_text",
                                                      "visual_specialisation"])


def test_stage2_run_logs_per_modality_rates_and_the_tool_draws_specialisation(tmp_path):
    """Stage 2 (image + text tokens): the trainer logs R_v and R_t per layer; the tool, from the
    checkpoint, computes R_v / R_t per expert."""
    result = run([sys.executable, str(PRETRAIN), "--stage", "2", "--train-iters", "1", "--global-batch-size", "2",
                  "--set", "train.micro_batch_size=2", "--set", "train.eval_interval=0", "--log-interval", "1",
                  "--set", "checkpoint.init_from=", "--set", "data.synthetic_samples=64", "--save", tmp_path / "ckpt",
                  "--log-dir", tmp_path / "log"],
                 timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    record = [json.loads(line) for line in (tmp_path / "log" / "metrics.jsonl").read_text().splitlines()][-1]
    counts = record["router_counts"]
    assert min(counts["visual_tokens"]) > 0 and min(counts["text_tokens"]) > 0
    for layer in range(2):  # rates of each modality sum to top-k = 4
        assert sum(counts["activation_rate_visual"][layer]) == pytest.approx(4.0)
        assert sum(counts["activation_rate_text"][layer]) == pytest.approx(4.0)
    assert record["router/visual_specialisation_max"] > 0

    result = run([sys.executable, str(ROOT / "tools" / "expert_heatmap.py"), "--checkpoint", tmp_path / "ckpt",
                  "--batches", "1", "--out", tmp_path / "out"], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    _, stats = _check_outputs(tmp_path / "out", 2, 16, ["tokens_per_expert", "activation_rate",
                                                        "activation_rate_visual", "activation_rate_text",
                                                        "visual_specialisation"])
    assert "stage 2" in stats["source"]
