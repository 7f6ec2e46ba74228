"""Corrupt images, malformed JSON, schema errors, truncated and non-tar shards: skipped and
counted with shard and key (one log line each), or a one-line DataError; nothing hangs."""

import io
import json
import logging
import tarfile

import numpy as np
import pytest
from PIL import Image

from aria_train.data.errors import DataError
from aria_train.data.multimodal import (
    BadSamples,
    MultimodalMixture,
    ShardSource,
    read_shard,
    write_synthetic_shards,
)


def _png(seed=0):
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _caption(i):
    return json.dumps({"kind": "caption", "image": 0, "caption": f"sample {i}"}).encode()


def _write_tar(path, members):
    with tarfile.open(path, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture()
def bad_shard(tmp_path):
    truncated_png = _png(5)[:400]  # header intact, pixel data cut: found only when decoded
    return _write_tar(tmp_path / "bad-000000.tar", [
        ("k0.json", _caption(0)), ("k0.0.png", _png(0)),
        ("k1.json", _caption(1)), ("k1.0.png", b"this is not an image"),
        ("k2.json", b'{"kind": "caption", "image": 0, '), ("k2.0.png", _png(2)),
        ("k3.json", _caption(3)), ("k3.0.png", _png(3)),
        ("k4.json", json.dumps({"kind": "caption", "image": 3, "caption": "x"}).encode()), ("k4.0.png", _png(4)),
        ("k5.json", _caption(5)), ("k5.0.png", truncated_png),
        ("k6.0.png", _png(6)),  # no JSON
        ("k7.json", _caption(7)), ("k7.0.png", _png(7)),
    ])


def _drain(mix, n=12):
    return [mix.next_sequence() for _ in range(n)]


def test_bad_samples_are_skipped_and_counted(tok, renderer, bad_shard, caplog):
    mix = MultimodalMixture([(1.0, ShardSource(bad_shard))], 64, 0, renderer=renderer)
    with caplog.at_level(logging.WARNING, logger="aria_train.data.multimodal"):
        seqs = _drain(mix)
    keys = {p.sample.key for s in seqs for p in s.placed}
    assert {"k0", "k3", "k5", "k7"} <= keys and not keys & {"k1", "k2", "k4", "k6"}
    reasons = {key: reason for shard, key, reason in mix.bad.records}
    assert all(shard == bad_shard for shard, _, _ in mix.bad.records)
    assert set(reasons) == {"k1", "k2", "k4", "k5", "k6"}  # k5 once: decoded by its owner only
    assert reasons["k1"].startswith("image 0:") and "identify" in reasons["k1"]
    assert reasons["k2"].startswith("malformed JSON")
    assert "image 3 is missing" in reasons["k4"]
    assert reasons["k5"].startswith("image 0: decode failed")
    assert reasons["k6"] == "no JSON member"
    assert mix.bad.count == len(mix.bad.records)
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"{bad_shard}:k1 skipped" in line for line in lines)
    assert all("\n" not in line for line in lines)
    # k5's header was fine, so its tokens were planned: the pixels are a black stand-in, no loss
    for s in seqs:
        for p in s.placed:
            span = s.target[p.offset : p.offset + p.length]
            assert span.any() != (p.sample.key == "k5")


def test_error_mode_raises_one_line(tok, renderer, bad_shard):
    mix = MultimodalMixture([(1.0, ShardSource(bad_shard))], 64, 0, renderer=renderer, on_bad_sample="error")
    with pytest.raises(DataError) as err:
        _drain(mix)
    assert f"{bad_shard}:k1" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="on_bad_sample"):
        BadSamples("ignore")


def test_decode_failure_only_on_the_owning_rank_keeps_ranks_in_step(tok, renderer, bad_shard):
    mix = MultimodalMixture([(1.0, ShardSource(bad_shard))], 64, 0, renderer=renderer, on_bad_sample="error")
    with pytest.raises(DataError, match="k1"):  # header errors are seen by every rank
        [mix.next_sequence(materialize=False) for _ in range(12)]


@pytest.mark.parametrize("cut", [0.15, 0.5, 0.77, 0.999])
def test_truncated_tar(tmp_path, cut):
    [shard] = write_synthetic_shards(tmp_path / "full", 6, seed=1, samples_per_shard=10, kind="caption")
    data = open(shard, "rb").read()
    with tarfile.open(shard) as t:
        last = t.getmembers()[-1]
        data_end = last.offset_data + -(-last.size // 512) * 512  # where the zero blocks begin
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[: int(data_end * cut)])
    bad = BadSamples()
    got = [s.key for _, s in read_shard(str(broken), bad)]
    assert got == [f"syn_{i:06d}" for i in range(len(got))]  # a clean prefix
    assert bad.count >= 1 and any("truncated" in r or "not a readable tar" in r for _, _, r in bad.records)
    with pytest.raises(DataError):
        list(read_shard(str(broken), BadSamples("error")))
    # cut inside the trailing zero padding only: nothing is lost, nothing reported
    broken.write_bytes(data[: data_end + 1024])
    bad = BadSamples()
    assert len(list(read_shard(str(broken), bad))) == 6 and bad.count == 0


def test_not_a_tar_and_all_bad_sources_do_not_hang(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x01" * 5000)
    bad = BadSamples()
    assert list(read_shard(str(junk), bad)) == [] and bad.records[0][2].startswith("not a readable tar")
    src = ShardSource([str(junk), str(junk)], bad=bad)
    with pytest.raises(DataError, match="no usable sample"):
        src.read()


def test_background_loading_reports_the_workers_bad_samples(tok, renderer, bad_shard):
    """With data.prefetch the worker skips bad samples; the trainer's log still counts them."""
    from aria_train.data.multimodal import MultimodalMicroBatchIterator
    from aria_train.data.prefetch import BackgroundBatches

    def iterator():
        mix = MultimodalMixture([(1.0, ShardSource(bad_shard))], 64, 0, renderer=renderer)
        return MultimodalMicroBatchIterator(mix, 4, 2, 0, 1)

    direct, background = iterator(), BackgroundBatches(iterator(), prefetch=2)
    try:
        for _ in range(3):
            direct.next_global_batch()
            background.next_global_batch()
        assert direct.bad_samples.count > 0
        assert background.bad_samples.count == direct.bad_samples.count
        assert dict(background.bad_samples.by_reason) == dict(direct.bad_samples.by_reason)
    finally:
        background.close()
