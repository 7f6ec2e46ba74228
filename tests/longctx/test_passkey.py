"""Passkey evaluation: prompt layout (needle at the requested token depth), an oracle model that
copies scores 1.0 with both scoring methods, and the CLI writes its table and heatmap."""

import csv
import sys
from pathlib import Path

import pytest
import torch

from aria_train.data.tokenizer import load_tokenizer
from aria_train.eval.passkey import PasskeyBuilder, evaluate_passkey

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import eval_passkey  # noqa: E402


class CopyOracle:
    """Predicts the token that followed the latest earlier occurrence of the last n tokens (an
    induction head with perfect recall): it retrieves whatever the context says."""

    def __init__(self, vocab_size: int, n: int = 4):
        self.vocab_size, self.n = vocab_size, n

    def tail_logits(self, tokens: torch.Tensor, count: int) -> torch.Tensor:
        batch, seq = tokens.shape
        out = torch.zeros(batch, count, self.vocab_size)
        for b in range(batch):
            row = tokens[b].tolist()
            for i, pos in enumerate(range(seq - count, seq)):
                context = row[pos - self.n + 1: pos + 1]
                for start in range(pos - self.n, -1, -1):  # latest earlier match first
                    if row[start: start + self.n] == context:
                        out[b, i, row[start + self.n]] = 10.0
                        break
        return out


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("")


@pytest.mark.parametrize("length", [128, 512, 1024])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_needle_sits_at_the_requested_depth(tokenizer, length, depth):
    builder = PasskeyBuilder(tokenizer)
    prompt = builder.build(length, depth, "48213")
    assert len(prompt.tokens) == length
    assert prompt.tokens[prompt.needle_start: prompt.needle_start + prompt.needle_len] == builder.needle("48213")
    filler_total = length - len(builder.intro) - prompt.needle_len - len(builder.question)
    # tokens of filler before the needle / all filler tokens == depth (to one token)
    before = prompt.needle_start - len(builder.intro)
    assert before == round(depth * filler_total)
    assert abs(before / filler_total - depth) <= 1 / filler_total
    assert prompt.tokens[-len(builder.question):] == builder.question
    assert "48213" in tokenizer.decode(prompt.tokens[prompt.needle_start: prompt.needle_start + prompt.needle_len])


def test_prompt_too_short_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="shorter than the passkey prompt"):
        PasskeyBuilder(tokenizer).build(16, 0.5, "12345")


@pytest.mark.parametrize("method", ["rank", "greedy"])
def test_copying_oracle_scores_one(tokenizer, method):
    results = evaluate_passkey(CopyOracle(tokenizer.vocab_size), tokenizer, [128, 384], [0.0, 0.5, 1.0],
                               trials=2, method=method)
    assert [r.accuracy for r in results] == [1.0] * 6


def test_a_model_that_ignores_the_context_is_not_rewarded(tokenizer):
    class Constant:
        def tail_logits(self, tokens, count):
            return torch.zeros(tokens.shape[0], count, tokenizer.vocab_size)

    # all candidates tie: a tie is wrong, so accuracy 0 (not 1 / candidates by luck)
    results = evaluate_passkey(Constant(), tokenizer, [128], [0.5], trials=3)
    assert results[0].accuracy == 0.0


def test_cli_on_a_random_tiny_model_writes_table_and_heatmap(tmp_path, capsys):
    rc = eval_passkey.main(["--random-init", "--model", "tiny", "--lengths", "128", "256", "--depths", "0", "0.5",
                            "1", "--trials", "1", "--out", str(tmp_path)])
    assert rc == 0
    rows = list(csv.DictReader((tmp_path / "passkey.csv").open()))
    assert [(r["context_length"], r["needle_depth"]) for r in rows] == [
        ("128", "0"), ("128", "0.5"), ("128", "1"), ("256", "0"), ("256", "0.5"), ("256", "1")]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    table = (tmp_path / "passkey.md").read_text()
    assert "| depth \\ length | 128 | 256 |" in table
    assert "chance is 0.20: the right key ranked first among 5 candidates" in table  # the default --candidates
    png = (tmp_path / "passkey_heatmap.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert "passkey.csv" in capsys.readouterr().out
