"""data.packing: clustered: each sample is one group of documents (padded, loss masked on the
padding), groups shuffled per epoch from the seed, long documents cut into Megatron-style
windows, splits by group, exact resume through the micro-batch iterator, and clear errors."""

import dataclasses

import numpy as np
import pytest
import torch

from aria_train.config import ConfigError
from aria_train.train.run_config import build_config
from aria_train.data.config import DataConfig
from aria_train.data.batches import MicroBatchIterator
from aria_train.data.curation.clustered_dataset import ClusteredGPTDataset, read_groups
from aria_train.data.curation.embed import HashedTfidf
from aria_train.data.curation.pack import cluster_pack
from aria_train.data.errors import DataError
from aria_train.data.gpt_data import build_gpt_datasets
from aria_train.data.megatron_import import import_megatron
from aria_train.data.tokenizer import load_tokenizer

SEQ, DOCS, LONG = 32, 80, (5, 17)


def _length(d: int) -> int:
    return 100 if d in LONG else 4 + (d * 7) % 13


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A corpus whose token j of document d is 1000 + 50 d + j, clustered with seq_length SEQ."""
    base = tmp_path_factory.mktemp("clustered")
    indexed = import_megatron("megatron.core.datasets.indexed_dataset")
    builder = indexed.IndexedDatasetBuilder(str(base / "src.bin"), dtype=np.uint16)
    for d in range(DOCS):
        builder.add_document(torch.arange(_length(d)) + 1000 + 50 * d, [_length(d)])
    builder.finalize(str(base / "src.idx"))
    cluster_pack(str(base / "src"), str(base / "out"), SEQ, HashedTfidf(dim=32), base / "work", k=4, leaf_size=30)
    out = indexed.IndexedDataset(str(base / "out"))
    boundaries, _ = read_groups(str(base / "out"), DOCS)
    # copies: megatron closes the memory map when `out` is collected, which would leave views dangling
    return {"prefix": str(base / "out"), "boundaries": boundaries, "docs": [np.array(out.get(i)) for i in range(DOCS)]}


def _dataset(packed, n=200, seed=7, split=0, fractions=(1.0, 0.0, 0.0), seq=SEQ):
    return ClusteredGPTDataset(packed["prefix"], seq, n, seed, split, list(fractions), pad=0)


def test_a_sample_is_one_group_padded_and_masked(packed):
    ds = _dataset(packed)
    seen_long = 0
    for i in range(ds.num_units):
        unit = ds.unit_of(i)
        group, window = int(ds.unit_group[unit]), int(ds.unit_window[unit])
        b = packed["boundaries"]
        text = np.concatenate(packed["docs"][b[group]:b[group + 1]]).astype(np.int64)
        text = text[window * SEQ: window * SEQ + SEQ + 1]  # Megatron windows overlap by one token
        seen_long += window > 0
        sample = ds[i]
        real = len(text)
        assert sample["tokens"][:real - 1].tolist() == text[:-1].tolist()
        assert sample["labels"][:real - 1].tolist() == text[1:].tolist()
        assert sample["loss_mask"].tolist() == [1.0] * (real - 1) + [0.0] * (SEQ - real + 1)
        assert torch.all(sample["tokens"][real:] == 0) and sample["position_ids"].tolist() == list(range(SEQ))
    assert seen_long == sum((_length(d) - 1 + SEQ - 1) // SEQ - 1 for d in LONG)


def test_groups_shuffled_per_epoch_deterministic_from_the_seed(packed):
    ds = _dataset(packed)
    n = ds.num_units
    epoch0, epoch1 = [ds.unit_of(i) for i in range(n)], [ds.unit_of(i) for i in range(n, 2 * n)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))  # every unit once per epoch
    assert epoch0 != epoch1 and epoch0 != list(range(n))
    assert [_dataset(packed).unit_of(i) for i in range(n)] == epoch0
    assert [_dataset(packed, seed=8).unit_of(i) for i in range(n)] != epoch0
    assert torch.equal(_dataset(packed)[n + 3]["tokens"], ds[n + 3]["tokens"])


def test_splits_take_disjoint_groups(packed):
    fractions = (0.8, 0.2, 0.0)
    train, valid = _dataset(packed, split=0, fractions=fractions), _dataset(packed, split=1, fractions=fractions)
    groups = len(packed["boundaries"]) - 1
    assert len(train.boundaries) - 1 + len(valid.boundaries) - 1 == groups
    assert train.boundaries[-1] == valid.boundaries[0]
    with pytest.raises(DataError, match="holds none"):
        _dataset(packed, split=2, fractions=fractions)


def test_resume_mid_run_gives_the_same_batches(packed):
    ds = _dataset(packed, n=64)
    straight = MicroBatchIterator(ds, 8, 2, 0, 1)
    batches = [straight.next_global_batch() for _ in range(6)]
    first = MicroBatchIterator(ds, 8, 2, 0, 1)
    for _ in range(3):
        first.next_global_batch()
    resumed = MicroBatchIterator(_dataset(packed, n=64), 8, 2, 0, 1)
    resumed.load_state_dict(first.state_dict())
    for expected in batches[3:]:
        for a, b in zip(expected, resumed.next_global_batch()):
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_build_gpt_datasets_clustered_and_errors(packed, tmp_path):
    tok = load_tokenizer()
    cfg = DataConfig(data_path=[packed["prefix"]], seq_length=SEQ, split="80,20,0", packing="clustered")
    train, valid, test = build_gpt_datasets(cfg, tok, (40, 8, 0), seed=1)
    assert isinstance(train, ClusteredGPTDataset) and len(train) == 40 and len(valid) == 8 and test is None
    with pytest.raises(DataError, match="packed for seq_length 32"):
        build_gpt_datasets(dataclasses.replace(cfg, seq_length=16), tok, (4, 0, 0), seed=1)
    with pytest.raises(DataError, match="one data prefix"):
        build_gpt_datasets(dataclasses.replace(cfg, data_path=[packed["prefix"]] * 2), tok, (4, 0, 0), seed=1)
    src = packed["prefix"].replace("out", "src")
    with pytest.raises(DataError, match="cluster_pack"):
        build_gpt_datasets(dataclasses.replace(cfg, data_path=[src]), tok, (4, 0, 0), seed=1)
    with pytest.raises(ConfigError, match="data.packing"):
        build_config(1, overrides={"data.packing": "sorted"})
