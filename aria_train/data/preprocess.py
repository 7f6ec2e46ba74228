"""JSONL -> Megatron indexed dataset (PREFIX.bin + PREFIX.idx), as Megatron-LM's
tools/preprocess_data.py writes it without sentence splitting: one sequence per document, the
token dtype chosen by megatron's DType.optimal_dtype(vocab_size) (uint16 below 65500 tokens),
eod appended to every document unless told otherwise. Blank texts are skipped, since a document
of nothing but eod teaches nothing.

Both files are written under temporary names and renamed into place, the .idx last, so a reader
that finds PREFIX.idx finds a complete pair.
"""

import os
from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator

from aria_train.data.errors import DataError
from aria_train.data.jsonl import iter_jsonl_texts
from aria_train.data.megatron_import import import_megatron
from aria_train.data.tokenizer import AriaTokenizer

_ENCODE_BATCH = 256


@dataclass
class PreprocessStats:
    documents: int
    tokens: int
    skipped_blank: int


def preprocess_jsonl(
    input_path: str,
    output_prefix: str,
    tokenizer: AriaTokenizer,
    json_key: str = "text",
    append_eod: bool = True,
) -> PreprocessStats:
    """Tokenize each line's json_key text into a document of output_prefix.{bin,idx}."""
    return write_indexed_dataset(
        iter_jsonl_texts(input_path, json_key), output_prefix, tokenizer, append_eod
    )


def write_indexed_dataset(
    texts: Iterable[str],
    output_prefix: str,
    tokenizer: AriaTokenizer,
    append_eod: bool = True,
) -> PreprocessStats:
    indexed = import_megatron("megatron.core.datasets.indexed_dataset")
    directory = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(directory, exist_ok=True)
    tmp_prefix = f"{output_prefix}.tmp-{os.getpid()}"
    dtype = indexed.DType.optimal_dtype(tokenizer.vocab_size)
    stats = PreprocessStats(documents=0, tokens=0, skipped_blank=0)
    try:
        builder = indexed.IndexedDatasetBuilder(tmp_prefix + ".bin", dtype=dtype)
        for batch in _batches(texts, _ENCODE_BATCH):
            kept = [text for text in batch if text.strip()]
            stats.skipped_blank += len(batch) - len(kept)
            for ids in tokenizer.encode_batch(kept):
                if append_eod:
                    ids.append(tokenizer.eod)
                builder.add_document(ids, [len(ids)])
                stats.documents += 1
                stats.tokens += len(ids)
        builder.finalize(tmp_prefix + ".idx")
        if stats.documents == 0:
            raise DataError(f"{output_prefix}: no documents to write (every text was blank)")
        os.replace(tmp_prefix + ".bin", output_prefix + ".bin")
        os.replace(tmp_prefix + ".idx", output_prefix + ".idx")
    finally:
        for suffix in (".bin", ".idx"):
            if os.path.exists(tmp_prefix + suffix):
                os.remove(tmp_prefix + suffix)
    return stats


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
