"""Peak CPU memory of the chunked cross-entropy (aria_train.train.loss) against full logits.

    python bench/chunked_loss_memory.py                       # the default table
    python bench/chunked_loss_memory.py --cases 1024x16384 32768x8192 --hidden 256

Each case is VOCABxTOKENS. For each, one forward + backward of the loss over a leaf [tokens,
hidden] fp32 hidden state (gradients pre-allocated, as the optimizer's buffers are), measured as
the peak of live CPU tensor bytes above the start (torch.profiler allocator events, see
aria_train.accounting.measure_cpu_peak_bytes). The chunked loss keeps one chunk's [chunk, vocab]
logits alive; the full loss keeps [tokens, vocab] several times over.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from aria_train.accounting import measure_cpu_peak_bytes  # noqa: E402
from aria_train.train.loss import chunked_cross_entropy_sum, full_cross_entropy_sum  # noqa: E402


def measure(vocab: int, tokens: int, hidden: int, chunk: int, full: bool) -> tuple[int, float, float]:
    torch.manual_seed(0)
    h = torch.randn(tokens, hidden, requires_grad=True)
    weight = torch.randn(vocab, hidden, requires_grad=True)
    h.grad, weight.grad = torch.zeros_like(h), torch.zeros_like(weight)
    labels = torch.randint(0, vocab, (tokens,))
    mask = torch.ones(tokens)
    result = {}

    def step():
        if full:
            loss = full_cross_entropy_sum(h, weight, labels, mask)
        else:
            loss = chunked_cross_entropy_sum(h, weight, labels, mask, chunk_tokens=chunk)
        loss.backward()
        result["loss"] = float(loss.detach())

    start = time.perf_counter()
    peak = measure_cpu_peak_bytes(step)
    return peak, time.perf_counter() - start, result["loss"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["1024x16384", "32768x8192"], help="VOCABxTOKENS")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=4096, help="chunk_tokens of the chunked loss")
    args = parser.parse_args(argv)
    print(f"hidden {args.hidden}, fp32, chunk {args.chunk} tokens, torch {torch.__version__}, CPU")
    print("| vocab | tokens | full logits [T x V] fp32 | full loss peak | chunked loss peak | ratio | loss equal |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for case in args.cases:
        vocab, tokens = (int(v) for v in case.lower().split("x"))
        full_peak, full_s, full_loss = measure(vocab, tokens, args.hidden, args.chunk, full=True)
        chunk_peak, chunk_s, chunk_loss = measure(vocab, tokens, args.hidden, args.chunk, full=False)
        same = abs(full_loss - chunk_loss) <= 1e-4 * abs(full_loss)
        print(f"| {vocab:,} | {tokens:,} | {tokens * vocab * 4 / 2**20:,.0f} MiB | {full_peak / 2**20:,.1f} MiB "
              f"({full_s:.1f} s) | {chunk_peak / 2**20:,.1f} MiB ({chunk_s:.1f} s) | {full_peak / chunk_peak:.1f}x | "
              f"{'yes' if same else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
