import os
import struct
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist

from aria_train.data.config import DataConfig
from aria_train.data.errors import DataError
from aria_train.data.gpt_data import build_gpt_datasets
from aria_train.data.megatron_import import import_megatron
from aria_train.data.tokenizer import load_tokenizer

SEQ = 16


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def write_megatron_corpus(prefix, num_docs, base, doc_len=lambda d: 20 + (d * 7) % 23):
    """What Megatron-LM's preprocess_data.py leaves on disk, written with megatron's own builder.

    Token j of document d is base + 100*d + j, so every token says where it came from.
    """
    indexed = import_megatron("megatron.core.datasets.indexed_dataset")
    dtype = indexed.DType.optimal_dtype(1024)  # as Megatron-LM picks it from the vocab size
    builder = indexed.IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for d in range(num_docs):
        builder.add_item(torch.arange(doc_len(d)) + base + 100 * d)
        builder.end_document()
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    return {
        "a": write_megatron_corpus(root / "a", num_docs=40, base=0),  # tokens < 4000
        "b": write_megatron_corpus(root / "b", num_docs=30, base=10_000),
        "root": root,
    }


def config(tmp_path, data_path, split="969,30,1"):
    return DataConfig(data_path=data_path, split=split, seq_length=SEQ, cache_dir=str(tmp_path))


def where(token):
    """(corpus, document, position) of a token written by write_megatron_corpus."""
    corpus = "b" if token >= 10_000 else "a"
    token -= 10_000 if corpus == "b" else 0
    return corpus, token // 100, token % 100


def test_megatron_lm_corpus_loads_and_samples_are_document_windows(corpora, tmp_path, tok):
    cfg = config(tmp_path, [corpora["a"]], "90,10,0")
    train, valid, test = build_gpt_datasets(cfg, tok, (50, 10, 0), seed=1)
    assert test is None  # no test samples asked for: not built
    assert len(train) >= 50 and len(valid) >= 10
    assert not dist.is_initialized()  # the temporary world of one is gone
    train_docs, valid_docs = set(range(36)), set(range(36, 40))  # round(0.9 * 40) = 36
    for dataset, docs in ((train, train_docs), (valid, valid_docs)):
        for i in range(len(dataset)):
            sample = dataset[i]
            assert sample["tokens"].shape == (SEQ,) and sample["tokens"].dtype == torch.int64
            assert torch.equal(sample["tokens"][1:], sample["labels"][:-1])
            assert torch.equal(sample["position_ids"], torch.arange(SEQ))
            text = sample["tokens"].tolist() + sample["labels"][-1:].tolist()
            places = [where(t) for t in text]
            assert {doc for _, doc, _ in places} <= docs
            # consecutive tokens continue a document or start another at its beginning
            for (_, d0, p0), (_, d1, p1) in zip(places, places[1:]):
                assert (d1 == d0 and p1 == p0 + 1) or p1 == 0


def test_same_seed_same_samples_other_seed_other_order(corpora, tmp_path, tok):
    cfg = config(tmp_path, [corpora["a"]], "90,10,0")
    first = build_gpt_datasets(cfg, tok, (40, 0, 0), seed=7)[0]
    again = build_gpt_datasets(cfg, tok, (40, 0, 0), seed=7)[0]  # from the index cache
    other = build_gpt_datasets(cfg, tok, (40, 0, 0), seed=8)[0]
    samples = lambda ds: torch.stack([ds[i]["tokens"] for i in range(40)])
    assert torch.equal(samples(first), samples(again))
    assert not torch.equal(samples(first), samples(other))
    assert os.listdir(tmp_path / "index_cache")


def test_blend_follows_weights(corpora, tmp_path, tok):
    cfg = DataConfig(
        data_path=["0.7", corpora["a"], "0.3", corpora["b"]],
        split="98,2,0",
        seq_length=SEQ,
        cache_dir=str(tmp_path),
    )
    train, valid, _ = build_gpt_datasets(cfg, tok, (200, 20, 0), seed=3)
    assert len(train) == 200 and len(valid) == 20
    ids = np.array([int(train[i]["dataset_id"]) for i in range(200)])
    assert abs((ids == 0).mean() - 0.7) <= 0.01
    for i in range(200):
        corpus = {where(t)[0] for t in train[i]["tokens"].tolist()}
        assert corpus == {"ab"[ids[i]]}


def test_works_with_torch_distributed_initialized(corpora, tmp_path, tok):
    cfg = config(tmp_path, ["0.5", corpora["a"], "0.5", corpora["b"]], "98,2,0")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        train, _, _ = build_gpt_datasets(cfg, tok, (30, 4, 0), seed=3)
        assert dist.is_initialized() and len(train) == 30
    finally:
        dist.destroy_process_group()


def _one_line_error(cfg, tok):
    with pytest.raises(DataError) as err:
        build_gpt_datasets(cfg, tok, (10, 2, 0), seed=1)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_prefix(corpora, tmp_path, tok):
    missing = str(tmp_path / "nowhere" / "corpus")
    cfg = config(tmp_path, ["0.5", corpora["a"], "0.5", missing])
    assert _one_line_error(cfg, tok) == f"data prefix {missing}: {missing}.idx not found"
    only_idx = tmp_path / "only_idx"
    (tmp_path / "only_idx.idx").write_bytes(b"")
    cfg = replace(cfg, data_path=[str(only_idx)])
    assert _one_line_error(cfg, tok) == f"data prefix {only_idx}: {only_idx}.bin not found"


def _copy_corpus(src, dst):
    for suffix in (".bin", ".idx"):
        with open(src + suffix, "rb") as f:
            data = f.read()
        with open(str(dst) + suffix, "wb") as f:
            f.write(data)
    return str(dst)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda b: b"NOTANIDX\x00" + b[9:], "not a Megatron index file (bad magic header)"),
        (lambda b: b[:9] + struct.pack("<Q", 2) + b[17:],
         "unsupported index version 2 (expected 1)"),
        (lambda b: b[:17] + bytes([42]) + b[18:], "unknown token dtype code 42"),
        (lambda b: b[: len(b) - 8], "(truncated or corrupt)"),
        (lambda b: b[:20], "truncated header (20 bytes)"),
    ],
    ids=["magic", "version", "dtype", "truncated", "header-only"],
)
def test_corrupt_idx(corpora, tmp_path, tok, damage, expected):
    prefix = _copy_corpus(corpora["a"], tmp_path / "bad")
    with open(prefix + ".idx", "rb") as f:
        data = f.read()
    with open(prefix + ".idx", "wb") as f:
        f.write(damage(data))
    cfg = config(tmp_path, [prefix])
    message = _one_line_error(cfg, tok)
    assert message.startswith(f"{prefix}.idx: ") and message.endswith(expected)


def test_truncated_bin(corpora, tmp_path, tok):
    prefix = _copy_corpus(corpora["a"], tmp_path / "short")
    os.truncate(prefix + ".bin", os.path.getsize(prefix + ".bin") - 2)
    cfg = config(tmp_path, [prefix])
    assert _one_line_error(cfg, tok).startswith(f"{prefix}.bin: ")


def test_split_without_documents_is_an_error_not_a_hang(corpora, tmp_path, tok):
    # 40 documents and a 1/1000 test share: the test split gets no document
    cfg = config(tmp_path, [corpora["a"]], "969,30,1")
    with pytest.raises(DataError, match=r"the test split is empty"):
        build_gpt_datasets(cfg, tok, (10, 2, 2), seed=1)


def test_bad_blend_and_split(corpora, tmp_path, tok):
    cfg = config(tmp_path, ["0.7", corpora["a"], corpora["b"]])
    assert _one_line_error(cfg, tok).startswith("data_path: expected PREFIX")
    cfg = config(tmp_path, [corpora["a"]], "90;10")
    assert _one_line_error(cfg, tok).startswith("data split '90;10'")


def test_empty_data_path_uses_demo_corpus(tmp_path, tok):
    cfg = DataConfig(data_path=[], split="969,30,1", seq_length=64, cache_dir=str(tmp_path))
    train, valid, test = build_gpt_datasets(cfg, tok, (100, 10, 2), seed=1234)
    assert os.path.isfile(tmp_path / "demo_corpus.idx")
    sample = train[0]
    assert sample["tokens"].max() < tok.vocab_size
    assert len(train) >= 100 and len(valid) >= 10 and len(test) >= 2
    eods = sum(int((train[i]["tokens"] == tok.eod).sum()) for i in range(100))
    assert eods > 0  # documents end with eod
