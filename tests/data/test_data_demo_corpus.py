import json
import os

import numpy as np
import pytest

from aria_train.data.demo_corpus import demo_corpus_stats, ensure_demo_corpus
from aria_train.data.indexed_check import check_indexed_dataset
from aria_train.data.tokenizer import load_tokenizer
from aria_train.data.train_tokenizer import train_sentencepiece
from aria_train.data.tokenizer import AriaTokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_builds_once_and_is_idempotent(tmp_path, tok):
    prefix = ensure_demo_corpus(str(tmp_path), tok)
    assert prefix == str(tmp_path / "demo_corpus")
    info = check_indexed_dataset(prefix)
    stats = demo_corpus_stats(str(tmp_path))
    assert stats["tokens"] == info.num_tokens and stats["documents"] == info.document_count
    assert 1000 < info.document_count and 300_000 < info.num_tokens < 2_000_000
    with open(prefix + ".jsonl") as f:
        first = json.loads(f.readline())["text"]
    with open(prefix + ".bin", "rb") as f:
        ids = np.frombuffer(f.read(2 * (len(tok.encode(first)) + 1)), dtype=np.uint16).tolist()
    assert ids == tok.encode(first) + [tok.eod]

    mtimes = {s: os.stat(prefix + s).st_mtime_ns for s in (".bin", ".idx", ".json", ".jsonl")}
    assert ensure_demo_corpus(str(tmp_path), tok) == prefix
    assert {s: os.stat(prefix + s).st_mtime_ns for s in mtimes} == mtimes
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def test_rebuilds_after_an_interrupted_build_or_another_tokenizer(tmp_path, tok):
    prefix = ensure_demo_corpus(str(tmp_path), tok)
    os.remove(prefix + ".json")  # as if the build died before writing its stamp
    before = os.stat(prefix + ".bin").st_mtime_ns
    ensure_demo_corpus(str(tmp_path), tok)
    assert os.stat(prefix + ".bin").st_mtime_ns != before

    other = AriaTokenizer(train_sentencepiece(["another tokenizer " * 50, "x y z"], 280), "other")
    ensure_demo_corpus(str(tmp_path), other)
    stamp = demo_corpus_stats(str(tmp_path))
    assert stamp["tokenizer_sha256"] == other.unique_identifiers["model_sha256"]
    assert stamp["tokens"] == check_indexed_dataset(prefix).num_tokens
