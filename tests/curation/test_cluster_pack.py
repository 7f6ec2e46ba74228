"""tools/cluster_pack.py on documents from K planted topics (disjoint vocabularies): inside packed
sequences, adjacent documents share a topic >= 0.9 of the time (a shuffled packing: about 1/K),
through both paths (one kNN + MST over everything, and k-means buckets first); every document is
written exactly once with its tokens unchanged; groups fill at most one sequence."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curate_helpers import load_tool, write_jsonl  # noqa: E402

from aria_train.data.curation.clustered_dataset import read_groups  # noqa: E402
from aria_train.data.curation.pack import next_fit_groups  # noqa: E402
from aria_train.data.curation.synthetic import topic_corpus  # noqa: E402
from aria_train.data.megatron_import import import_megatron  # noqa: E402

cluster_pack = load_tool("cluster_pack")
K, N, SEQ = 8, 1500, 512


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster_pack")
    texts, topics = topic_corpus(N, K, seed=3)
    write_jsonl(base / "topics.jsonl", [{"text": t} for t in texts])
    return base, topics


def _pack(base: Path, name: str, *extra) -> dict:
    out = base / name
    argv = ["--input", str(base / "topics.jsonl"), "--output-prefix", str(out), "--seq-length", str(SEQ), *extra]
    assert cluster_pack.main(argv) == 0
    indexed = import_megatron("megatron.core.datasets.indexed_dataset")
    source = indexed.IndexedDataset(str(out) + ".work/source")
    packed = indexed.IndexedDataset(str(out))
    boundaries, meta = read_groups(str(out), len(packed.sequence_lengths))
    return {"order": np.load(str(out) + ".order.npy"), "boundaries": boundaries, "meta": meta,
            "source": source, "packed": packed}


def _adjacent_same_topic(order: np.ndarray, boundaries: np.ndarray, topics: np.ndarray) -> float:
    same = total = 0
    for begin, end in zip(boundaries[:-1], boundaries[1:]):
        group = topics[order[begin:end]]
        same += int(np.sum(group[1:] == group[:-1]))
        total += len(group) - 1
    return same / total


@pytest.mark.parametrize("leaf_size", [N, 300])  # one MST over all; k-means into 5 buckets first
def test_similar_documents_share_sequences(corpus, leaf_size):
    base, topics = corpus
    result = _pack(base, f"packed_{leaf_size}", "--leaf-size", str(leaf_size))
    clustered = _adjacent_same_topic(result["order"], result["boundaries"], topics)
    lengths = np.asarray(result["source"].sequence_lengths)
    shuffled_order = np.random.default_rng(0).permutation(N)
    shuffled = _adjacent_same_topic(shuffled_order, next_fit_groups(lengths[shuffled_order], SEQ + 1), topics)
    print(f"leaf_size {leaf_size}: adjacent same-topic clustered {clustered:.3f}, shuffled {shuffled:.3f} "
          f"(1/K = {1 / K:.3f}), fill {result['meta']['fill']:.3f}, groups {result['meta']['groups']}")
    assert clustered >= 0.9
    assert 0.5 / K < shuffled < 2.0 / K
    assert ("kmeans" in result["meta"]["seconds"]) == (leaf_size < N)


def test_every_document_once_tokens_conserved_groups_fit(corpus):
    base, _ = corpus
    result = _pack(base, "packed_check", "--leaf-size", "300")
    order, source, packed, boundaries = result["order"], result["source"], result["packed"], result["boundaries"]
    assert np.array_equal(np.sort(order), np.arange(N))
    for position, document in enumerate(order):
        assert np.array_equal(packed.get(position), source.get(int(document)))
    assert int(np.sum(packed.sequence_lengths)) == int(np.sum(source.sequence_lengths)) == result["meta"]["tokens"]
    group_tokens = np.add.reduceat(np.asarray(packed.sequence_lengths, dtype=np.int64), boundaries[:-1])
    sizes = np.diff(boundaries)
    assert np.all(group_tokens[sizes > 1] <= SEQ + 1)  # several documents: they fit one sample
    # next-fit: a group closes only when the next document would not fit
    assert np.all(group_tokens[:-1] + np.asarray(packed.sequence_lengths)[boundaries[1:-1]] > SEQ + 1)


def test_user_embedder_is_plugged_in(corpus):
    base, topics = corpus
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    result = _pack(base, "packed_user", "--embedder", "embedders:factory", "--dim", "64")
    assert result["meta"]["embedder"] == "histogram" and result["meta"]["dim"] == 64
    assert np.array_equal(np.sort(result["order"]), np.arange(N))


def test_next_fit_groups():
    assert next_fit_groups(np.array([3, 3, 3, 9, 1, 1]), 7).tolist() == [0, 2, 3, 4, 6]
    assert next_fit_groups(np.array([10]), 4).tolist() == [0, 1]


@pytest.mark.parametrize("argv, culprit", [
    (["--input", "nowhere/prefix", "--output-prefix", "{tmp}/o", "--seq-length", "64"], "nowhere/prefix"),
    (["--input", "{tmp}/x.jsonl", "--output-prefix", "{tmp}/o", "--seq-length", "64"], "x.jsonl"),
    (["--input", "p", "--output-prefix", "{tmp}/o", "--seq-length", "64", "--embedder", "nomodule:f"], "nomodule"),
])
def test_bad_input_is_one_line_error(tmp_path, capsys, argv, culprit):
    assert cluster_pack.main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and culprit in err[0], err
