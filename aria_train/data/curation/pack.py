"""cluster_pack: order a corpus so similar documents are neighbours, cut the order into groups
that fill one training sequence each, and write it as a Megatron indexed dataset.

    source (PREFIX.bin/.idx, or JSONL tokenized first)
      -> embeddings, two streaming passes (fit, embed) into a float32 memory-mapped file
      -> order_documents (mst_order.py: coarse k-means buckets, kNN + MST + depth-first walk)
      -> groups: next-fit along the order; a group closes when the next document would push it
         past seq_length + 1 tokens (one sample), so neighbours in the walk share a sequence;
         a document longer than a sample is a group of its own
      -> OUTPUT.bin/.idx (documents group by group), OUTPUT.groups.npy, OUTPUT.groups.json (last)
Every document is written exactly once and token counts are unchanged (checked before the
files are renamed into place).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from aria_train.data.curation.clustered_dataset import GROUPS_SUFFIX, META_SUFFIX
from aria_train.data.curation.embed import normalized
from aria_train.data.curation.mst_order import order_documents
from aria_train.data.errors import DataError
from aria_train.data.indexed_check import check_indexed_dataset
from aria_train.data.megatron_import import import_megatron

EMBED_BATCH = 4096


def source_prefix(input_path: str, workdir: Path, tokenizer) -> str:
    """The indexed dataset to cluster: input itself, or input.jsonl tokenized into workdir."""
    if input_path.endswith(".jsonl"):
        from aria_train.data.preprocess import preprocess_jsonl

        prefix = str(Path(workdir) / "source")
        preprocess_jsonl(input_path, prefix, tokenizer)
        return prefix
    for suffix in (".bin", ".idx"):
        input_path = input_path[: -len(suffix)] if input_path.endswith(suffix) else input_path
    return input_path


def embed_corpus(prefix: str, embedder, path: Path, timings: dict) -> np.memmap:
    """Embeddings [N, D] of every document, batch by batch into a memory-mapped file."""
    indexed = import_megatron("megatron.core.datasets.indexed_dataset").IndexedDataset(prefix)
    n = len(indexed.sequence_lengths)
    started = time.perf_counter()

    def batches():
        for begin in range(0, n, EMBED_BATCH):
            yield [indexed.get(i) for i in range(begin, min(n, begin + EMBED_BATCH))]

    if hasattr(embedder, "fit"):
        embedder.fit(batches())
    vectors = None
    for b, docs in enumerate(batches()):
        batch = normalized(embedder(docs), getattr(embedder, "name", type(embedder).__name__))
        if vectors is None:
            vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, batch.shape[1]))
        vectors[b * EMBED_BATCH: b * EMBED_BATCH + len(batch)] = batch
    vectors.flush()
    timings["embed"] += time.perf_counter() - started
    return vectors


def next_fit_groups(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Boundaries [G + 1] of consecutive groups whose token totals stay within capacity."""
    boundaries, total = [0], 0
    for position, length in enumerate(lengths.tolist()):
        if total and total + length > capacity:
            boundaries.append(position)
            total = 0
        total += length
    boundaries.append(len(lengths))
    return np.asarray(boundaries, dtype=np.int64)


def cluster_pack(prefix: str, output_prefix: str, seq_length: int, embedder, workdir: Path, k: int = 10,
                 leaf_size: int = 10000, seed: int = 0) -> dict:
    """Orders, groups and writes the corpus; returns the summary also stored in OUTPUT.groups.json."""
    info = check_indexed_dataset(prefix)
    if info.document_count != info.sequence_count:
        raise DataError(f"{prefix}: documents made of several sequences (sentence-split) are not supported")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    timings = defaultdict(float)
    vectors = embed_corpus(prefix, embedder, Path(workdir) / "embeddings.npy", timings)
    order = order_documents(vectors, k=k, leaf_size=leaf_size, seed=seed, timings=timings)
    started = time.perf_counter()
    lengths = np.asarray(info.sequence_lengths, dtype=np.int64)[order]
    boundaries = next_fit_groups(lengths, seq_length + 1)
    timings["grouping"] += time.perf_counter() - started
    group_tokens = np.add.reduceat(lengths, boundaries[:-1])
    windows = np.maximum(1, -(-(group_tokens - 1) // seq_length))
    meta = {
        "seq_length": seq_length, "source": prefix, "documents": int(len(order)), "tokens": int(lengths.sum()),
        "groups": int(len(boundaries) - 1), "embedder": getattr(embedder, "name", type(embedder).__name__),
        "dim": int(vectors.shape[1]), "k": k, "leaf_size": leaf_size, "seed": seed,
        "fill": float(lengths.sum() / (windows.sum() * (seq_length + 1))),
    }
    started = time.perf_counter()
    _write(prefix, info, order, boundaries, output_prefix, meta)
    timings["write"] += time.perf_counter() - started
    meta["seconds"] = {name: round(value, 3) for name, value in timings.items()}
    Path(output_prefix + META_SUFFIX).write_text(json.dumps(meta, indent=1))
    return meta


def _write(prefix: str, info, order: np.ndarray, boundaries: np.ndarray, output_prefix: str, meta: dict) -> None:
    indexed_module = import_megatron("megatron.core.datasets.indexed_dataset")
    source = indexed_module.IndexedDataset(prefix)
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    tmp = f"{output_prefix}.tmp-{os.getpid()}"
    try:
        builder = indexed_module.IndexedDatasetBuilder(tmp + ".bin", dtype=info.dtype)
        for document in order.tolist():
            tokens = source.get(document)
            builder.add_document(tokens, [len(tokens)])
        builder.finalize(tmp + ".idx")
        written = check_indexed_dataset(tmp)
        if (written.document_count != info.document_count or written.num_tokens != info.num_tokens
                or not np.array_equal(np.sort(order), np.arange(info.document_count))):
            raise DataError(f"cluster_pack: {output_prefix} would not hold every document of {prefix} exactly once")
        if os.path.exists(output_prefix + META_SUFFIX):  # a stale summary must not vouch for new files
            os.remove(output_prefix + META_SUFFIX)
        np.save(tmp + GROUPS_SUFFIX, boundaries)
        os.replace(tmp + ".bin", output_prefix + ".bin")
        os.replace(tmp + ".idx", output_prefix + ".idx")
        os.replace(tmp + GROUPS_SUFFIX, output_prefix + GROUPS_SUFFIX)
        np.save(output_prefix + ".order.npy", order)  # source index of each output document
    finally:
        for suffix in (".bin", ".idx", GROUPS_SUFFIX):
            if os.path.exists(tmp + suffix):
                os.remove(tmp + suffix)
