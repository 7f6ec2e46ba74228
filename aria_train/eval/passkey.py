"""Passkey retrieval (needle in a haystack) over a grid of context lengths x needle depths.

A prompt of exactly `length` tokens is built from token pieces, each tokenized on its own and
concatenated, so every position is known exactly:

    [intro] [filler ... ] [needle] [filler ...] [question]
    intro    = "There is an important pass key hidden inside a lot of irrelevant text. Find it."
    filler   = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back
                again." repeated and cut to length
    needle   = "The pass key is NNNNN. Remember it. NNNNN is the pass key."
    question = "What is the pass key? The pass key is"

Depth d in [0, 1] places the needle after round(d x filler tokens) filler tokens: 0 right after
the intro, 1 right before the question. The answer is " NNNNN" (the question's continuation).

Scoring (`method`):
  * "rank" (default): the log-likelihood of each candidate answer (the true key and
    `candidates - 1` other random keys, each scored as the continuation of the same prompt, in
    one batch) is summed over its tokens; a trial is correct when the true key scores highest
    (ties count as wrong). This is the robust choice for small models: it needs no
    instruction following or stopping rule, it is insensitive to how digits are tokenized (all
    candidates go through the same tokenizer), and a model with no retrieval scores near
    chance, 1 / candidates, instead of a flat 0, so progress is visible early.
  * "greedy": greedy decoding of as many tokens as the true answer has; correct when the decoded
    digits equal the key. Stricter; meaningful for larger trained models.

A model is anything with `tail_logits(tokens [B, S], n) -> [B, n, V]` (the logits of the last n
positions); `DecoderScorer` wraps AriaForCausalLM so that only those rows go through the LM head.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

INTRO = "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it."
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
ANSWER = " {key}"


@dataclass
class PasskeyPrompt:
    tokens: list[int]  # exactly `length` tokens, ending with the question
    needle_start: int  # index of the needle's first token
    needle_len: int
    key: str
    answer: list[int]  # token ids of the answer continuation " NNNNN"
    depth: float


class DecoderScorer:
    """Adapts AriaForCausalLM: hidden states for the whole sequence, logits for the tail only."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def tail_logits(self, tokens: torch.Tensor, n: int) -> torch.Tensor:
        hidden = self.model(tokens).hidden[:, -n:]
        return self.model.logits(hidden).float()


class PasskeyBuilder:
    def __init__(self, tokenizer, key_digits: int = 5):
        self.tokenizer = tokenizer
        self.key_digits = key_digits
        self.intro = tokenizer.encode(INTRO)
        self.filler = tokenizer.encode(" " + FILLER)
        self.question = tokenizer.encode(" " + QUESTION)

    def random_key(self, rng: random.Random) -> str:
        return str(rng.randrange(10 ** (self.key_digits - 1), 10**self.key_digits))

    def needle(self, key: str) -> list[int]:
        return self.tokenizer.encode(" " + NEEDLE.format(key=key))

    def answer(self, key: str) -> list[int]:
        return self.tokenizer.encode(ANSWER.format(key=key))

    def build(self, length: int, depth: float, key: str) -> PasskeyPrompt:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth {depth} is not in [0, 1]")
        needle = self.needle(key)
        filler_total = length - len(self.intro) - len(needle) - len(self.question)
        if filler_total < 0:
            raise ValueError(f"context length {length} is shorter than the passkey prompt itself "
                             f"({length - filler_total} tokens)")
        repeats = filler_total // len(self.filler) + 1
        filler = (self.filler * repeats)[:filler_total]
        before = round(depth * filler_total)
        tokens = self.intro + filler[:before] + needle + filler[before:] + self.question
        assert len(tokens) == length
        return PasskeyPrompt(tokens, len(self.intro) + before, len(needle), key, self.answer(key), depth)


def score_prompt(model, prompt: PasskeyPrompt, builder: PasskeyBuilder, rng: random.Random,
                 method: str = "rank", candidates: int = 5, device="cpu") -> bool:
    """True when the model retrieves the key of `prompt`."""
    if method == "greedy":
        tokens = torch.tensor([prompt.tokens], device=device)
        out = []
        for _ in range(len(prompt.answer)):
            next_token = int(model.tail_logits(tokens, 1)[0, -1].argmax())
            out.append(next_token)
            tokens = torch.cat([tokens, torch.tensor([[next_token]], device=device)], dim=1)
        digits = "".join(ch for ch in builder.tokenizer.decode(out) if ch.isdigit())
        return digits == prompt.key
    if method != "rank":
        raise ValueError(f"method {method!r} is not one of rank, greedy")
    keys = [prompt.key]
    while len(keys) < candidates:
        other = builder.random_key(rng)
        if other not in keys:
            keys.append(other)
    answers = [builder.answer(k) for k in keys]
    width = max(len(a) for a in answers)
    # right-pad the answers; the padded positions are not scored
    rows = [prompt.tokens + a + [a[-1]] * (width - len(a)) for a in answers]
    tokens = torch.tensor(rows, device=device)
    logits = model.tail_logits(tokens, width + 1)[:, :-1]  # position i predicts answer token i
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    scores = []
    for row, answer in enumerate(answers):
        targets = torch.tensor(answer, device=logprobs.device)
        scores.append(float(logprobs[row, torch.arange(len(answer)), targets].sum()))
    best = max(range(len(keys)), key=lambda i: scores[i])
    return best == 0 and scores.count(scores[0]) == 1


@dataclass
class PasskeyResult:
    length: int
    depth: float
    accuracy: float
    trials: int


def evaluate_passkey(model, tokenizer, lengths: Sequence[int], depths: Sequence[float], trials: int = 4,
                     method: str = "rank", candidates: int = 5, seed: int = 0, device="cpu") -> list[PasskeyResult]:
    """Accuracy per (length, depth) over `trials` random keys. `model` has tail_logits (see the
    module doc); wrap AriaForCausalLM in DecoderScorer."""
    builder = PasskeyBuilder(tokenizer)
    results = []
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"{seed}-{length}-{depth}")
            correct = 0
            for _ in range(trials):
                prompt = builder.build(length, depth, builder.random_key(rng))
                correct += score_prompt(model, prompt, builder, rng, method, candidates, device)
            results.append(PasskeyResult(length, depth, correct / trials, trials))
    return results


def write_results(results: list[PasskeyResult], out_dir: Path, title: str = "passkey retrieval",
                  candidates: Optional[int] = None) -> dict[str, Path]:
    """passkey.csv, passkey.md (depth rows x length columns) and passkey_heatmap.png in out_dir.
    With `candidates` (method "rank"), the table says what chance is: 1 / candidates."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lengths = sorted({r.length for r in results})
    depths = sorted({r.depth for r in results})
    grid = {(r.depth, r.length): r for r in results}
    csv_path = out_dir / "passkey.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["context_length", "needle_depth", "accuracy", "trials"])
        for r in results:
            writer.writerow([r.length, f"{r.depth:g}", f"{r.accuracy:.4f}", r.trials])
    md_path = out_dir / "passkey.md"
    lines = [f"# {title}", "", "| depth \\ length | " + " | ".join(str(n) for n in lengths) + " |",
             "|---" * (len(lengths) + 1) + "|"]
    for d in depths:
        lines.append(f"| {d:g} | " + " | ".join(f"{grid[(d, n)].accuracy:.2f}" for n in lengths) + " |")
    mean = sum(r.accuracy for r in results) / len(results)
    lines += ["", f"mean accuracy {mean:.3f} over {len(results)} cells x {results[0].trials} trials"]
    if candidates:
        lines.append(f"chance is {1 / candidates:.2f}: the right key ranked first among {candidates} candidates "
                     f"by a model that cannot retrieve it")
    md_path.write_text("\n".join(lines) + "\n")
    png_path = out_dir / "passkey_heatmap.png"
    _heatmap(grid, lengths, depths, png_path, title)
    return {"csv": csv_path, "markdown": md_path, "png": png_path}


def _heatmap(grid, lengths, depths, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [[grid[(d, n)].accuracy for n in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.6 * len(depths)))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_decoder_from_checkpoint(checkpoint: str, rope_base: Optional[float] = None):
    """The text decoder of an aria-train checkpoint (any stage; a multimodal checkpoint gives its
    language model), on CPU in eval mode, with the run config it was saved with."""
    from aria_train.eval.trained_model import load_trained_model

    return load_trained_model(checkpoint, text_only=True, rope_base=rope_base)
