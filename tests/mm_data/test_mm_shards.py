"""Shard write/read round trip for every kind, byte determinism, cursors."""

import io
import tarfile

import pytest
from PIL import Image

from aria_train.data.errors import DataError
from aria_train.data.multimodal import ShardSource, ShardWriter, list_shards, read_shard, synthetic_sample


def _png(color=(10, 20, 30), size=(28, 14)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_round_trip_every_kind(tmp_path):
    written = {}
    with ShardWriter(tmp_path, samples_per_shard=3) as w:
        for i, kind in enumerate(["caption", "ocr_qa", "interleaved", "video"]):
            meta, images, _ = synthetic_sample(0, i, kind=kind)
            w.write(f"k{i}", meta, images)
            written[f"k{i}"] = (meta, len(images))
        doc = {"kind": "doc_qa", "image": 0, "question": "Q?", "answer": "A", "extra": [1, 2]}
        w.write("k4", doc, [("jpeg", b"\xff\xd8fake"), Image.open(io.BytesIO(_png()))])
        written["k4"] = (doc, 2)
    assert [p.rsplit("/", 1)[1] for p in w.shards] == ["shard-000000.tar", "shard-000001.tar"]
    with tarfile.open(w.shards[1]) as t:
        assert t.getnames() == ["k3.json", "k3.0.jpg", "k3.1.jpg", "k3.2.jpg", "k4.json", "k4.0.jpeg", "k4.1.png"]
    read = [s for path in w.shards for _, s in read_shard(path)]
    assert [s.key for s in read] == ["k0", "k1", "k2", "k3", "k4"]
    for s in read:
        meta, n_images = written[s.key]
        assert s.meta == meta and sorted(s.images) == list(range(n_images))
        assert s.shard.endswith(".tar")
    assert read[4].images[0] == b"\xff\xd8fake" and read[4].images[1] == _png()
    assert Image.open(io.BytesIO(read[2].images[1])).size == (70, 70)


def test_shards_are_byte_deterministic(tmp_path):
    for out in ("a", "b"):
        with ShardWriter(tmp_path / out, 10) as w:
            for i in range(3):
                meta, images, _ = synthetic_sample(5, i)
                w.write(f"s{i}", meta, images)
    assert (tmp_path / "a/shard-000000.tar").read_bytes() == (tmp_path / "b/shard-000000.tar").read_bytes()


def test_writer_rejects_bad_keys_and_leaves_no_partial_shard(tmp_path):
    w = ShardWriter(tmp_path, 5)
    for key in ("a.b", "a/b", "", " a"):
        with pytest.raises(DataError):
            w.write(key, {"kind": "caption"})
    w.write("a", {"kind": "x"})
    with pytest.raises(DataError):
        w.write("a", {"kind": "x"})
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "p", 5) as w2:
            w2.write("a", {"kind": "x"})
            raise RuntimeError("boom")
    assert list((tmp_path / "p").iterdir()) == []


def test_list_shards(tmp_path, syn_dir):
    shards = list_shards(syn_dir)
    assert len(shards) == 4 and shards == sorted(shards)
    assert list_shards(str(syn_dir / "*-00000[01].tar")) == shards[:2]
    with pytest.raises(DataError, match="no .tar shard"):
        list_shards(tmp_path)


def test_source_cursor_resumes_exactly(syn_dir):
    a = ShardSource(syn_dir, seed=3)
    keys = [a.read()[0].key for _ in range(60)]  # wraps past the 48 samples into epoch 1
    assert len(set(keys[:48])) == 48
    b = ShardSource(syn_dir, seed=3)
    for _ in range(25):
        b.read()
    state = b.state_dict()
    c = ShardSource(syn_dir, seed=3)
    c.load_state_dict(state)
    assert [c.read()[0].key for _ in range(35)] == keys[25:]
    sample, cursor = ShardSource(syn_dir, seed=3).read()
    d = ShardSource(syn_dir, seed=3)
    d.load_state_dict(cursor)
    assert d.read()[0].key == sample.key
    with pytest.raises(DataError):
        d.load_state_dict({"epoch": 0, "shard": 9, "sample": 0})
