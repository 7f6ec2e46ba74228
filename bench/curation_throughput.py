"""cluster_pack throughput: documents/s per phase at 10^5 and 10^6 synthetic documents, peak
memory, and the extrapolation to 10^9 documents over N nodes.

    python bench/curation_throughput.py --docs 100000 1000000

Documents are token arrays of 24-64 tokens drawn from K=64 planted topics (each topic its own
slice of a 1024-token vocabulary), written as a Megatron indexed dataset; cluster_pack then runs
as tools/cluster_pack.py runs it (hashed TF-IDF, dim 256, k 10, leaf 10,000, seq_length 512),
each size in a fresh process so its peak RSS is its own. Phases: embed (df pass + embedding
pass), kmeans (coarse buckets: training + assignment), knn (faiss flat, per bucket), mst
(scipy), traversal (depth-first walk), grouping (next-fit), write (output dataset).
"""

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = ("embed", "kmeans", "knn", "mst", "traversal", "grouping", "write")
TOPICS, VOCAB = 64, 1024


def synthetic_prefix(folder: Path, n_docs: int, seed: int = 0) -> tuple[str, np.ndarray]:
    import torch

    from aria_train.data.megatron_import import import_megatron

    rng = np.random.default_rng(seed)
    slices = (rng.permutation(VOCAB - 64) + 64).reshape(TOPICS, -1)  # 15 tokens per topic
    topics = rng.integers(0, TOPICS, n_docs)
    lengths = rng.integers(24, 65, n_docs)
    indexed = import_megatron("megatron.core.datasets.indexed_dataset")
    builder = indexed.IndexedDatasetBuilder(str(folder / "src.bin"), dtype=np.uint16)
    pick = rng.integers(0, slices.shape[1], int(lengths.sum()))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens_all = slices[np.repeat(topics, lengths), pick]
    for d in range(n_docs):
        builder.add_document(torch.from_numpy(tokens_all[offsets[d]:offsets[d + 1]].astype(np.int64)),
                             [int(lengths[d])])
    builder.finalize(str(folder / "src.idx"))
    return str(folder / "src"), topics


def run_one(n_docs: int) -> dict:
    """One size, in this process: generate, cluster_pack, measure."""
    from aria_train.data.curation.embed import HashedTfidf
    from aria_train.data.curation.pack import cluster_pack

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        prefix, topics = synthetic_prefix(folder, n_docs)
        generate = time.perf_counter() - started
        meta = cluster_pack(prefix, str(folder / "out"), 512, HashedTfidf(dim=256), folder / "work", k=10,
                            leaf_size=10000)
        order = np.load(str(folder / "out.order.npy"))
        boundaries = np.load(str(folder / "out.groups.npy"))
        same = topics[order[1:]] == topics[order[:-1]]
        inside = np.ones(len(same), dtype=bool)
        inside[boundaries[1:-1] - 1] = False  # pairs that straddle two groups
    return {"docs": n_docs, "seconds": meta["seconds"], "generate_s": round(generate, 1), "fill": meta["fill"],
            "adjacent_same_topic": float(same[inside].mean()), "groups": meta["groups"],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def print_tables(results: list) -> None:
    print("| docs | " + " | ".join(PHASES) + " | total | docs/s total | peak RSS | adjacent same-topic |")
    print("|---:|" + "---:|" * (len(PHASES) + 4))
    for r in results:
        total = sum(r["seconds"].get(p, 0.0) for p in PHASES)
        cells = [f"{r['seconds'].get(p, 0.0):.1f} s ({r['docs'] / max(r['seconds'].get(p, 1e-9), 1e-9):,.0f}/s)"
                 for p in PHASES]
        print(f"| {r['docs']:,} | " + " | ".join(cells) +
              f" | {total:.1f} s | {r['docs'] / total:,.0f} | {r['peak_rss_gib']:.2f} GiB | {r['adjacent_same_topic']:.3f} |")
    big = max(results, key=lambda r: r["docs"])
    print_extrapolation(big)


def print_extrapolation(r: dict, target: int = 10**9) -> None:
    """Every phase is linear in documents at a fixed leaf size (kNN and MST cost per document is
    leaf x dim), except k-means, which repeats per level of buckets: 1 level at the measured size,
    ceil(log_256(target / leaf)) levels at the target."""
    levels_then = max(1, math.ceil(math.log(max(r["docs"] / 10000, 1.0001), 256)))
    levels_now = math.ceil(math.log(target / 10000, 256))
    seconds_per_doc = {p: r["seconds"].get(p, 0.0) / r["docs"] for p in PHASES}
    seconds_per_doc["kmeans"] *= levels_now / levels_then
    core_seconds = sum(seconds_per_doc.values()) * target  # on this machine's 2 cores
    embeddings_tib = target * 256 * 4 / 2**40
    print(f"\n10^9 documents: {core_seconds / 3600:,.0f} hours on one 2-core machine like this one "
          f"(k-means x{levels_now / levels_then:.0f} for {levels_now} bucket levels)")
    print("| nodes | 2-core nodes: time | 64-core nodes: time | embeddings on disk per node | RAM per node |")
    print("|---:|---:|---:|---:|---:|")
    for nodes in (1, 8, 64, 256, 1024):
        two = core_seconds / nodes
        sixty_four = two / 32
        ram = 8 * 3 * target / nodes / 2**30 + 1.0  # ids + bucket of each doc (int64) + one leaf
        print(f"| {nodes} | {_human(two)} | {_human(sixty_four)} | {embeddings_tib * 1024 / nodes:,.0f} GiB | "
              f"{ram:,.1f} GiB |")


def _human(seconds: float) -> str:
    if seconds > 2 * 86400:
        return f"{seconds / 86400:.1f} d"
    return f"{seconds / 3600:.1f} h" if seconds > 2 * 3600 else f"{seconds / 60:.0f} min"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, nargs="+", default=[100000, 1000000])
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # child process: one size
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one)))
        return 0
    results = []
    for n in args.docs:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{n} documents failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{n:,} documents: {results[-1]}", file=sys.stderr)
    print_tables(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
