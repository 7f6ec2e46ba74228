"""The per-shard length index: it agrees with the renderer sample by sample, is built on first use
and rebuilt when stale, and lets each rank read only the samples of its own sequences."""

import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from aria_train.data.errors import DataError
from aria_train.data.multimodal import (
    ImageConfig,
    LanguageSource,
    MultimodalMicroBatchIterator,
    MultimodalMixture,
    SampleRenderer,
    ShardSource,
    ensure_indexes,
    list_shards,
    read_shard,
    write_synthetic_shards,
)
from aria_train.data.multimodal.index import index_path, is_current, load_index, read_header, tokenizer_fingerprint

TOOL = Path(__file__).resolve().parents[2] / "tools" / "build_mm_shards.py"


@pytest.mark.parametrize("mode", ["medium", "ultra-high"])
def test_index_lengths_and_blocks_match_the_renderer(tok, tiny_projector, syn_dir, mode):
    renderer = SampleRenderer(tok, ImageConfig.from_projector(tiny_projector, mode=mode))
    checked = 0
    for shard in list_shards(syn_dir):
        assert is_current(shard, tokenizer_fingerprint(tok), None)  # written with the shards
        idx = load_index(shard, tokenizer_fingerprint(tok), None)
        layout = idx.sample_layout(renderer.image_cfg)
        for pos, raw in read_shard(shard):
            planned = renderer.plan(raw)
            assert idx.key(pos) == raw.key and idx.status[pos] == 0 and idx.formats[pos] == "aria"
            assert layout.lengths[pos] + 1 == len(planned)  # + EOD
            assert layout.blocks(idx, pos) == tuple((img.start, img.end) for img in planned.images)
            checked += 1
    assert checked == 48


def _caption_shard(path: Path, n: int) -> str:
    """img2dataset-style shard written by webdataset: KEY.jpg + KEY.txt."""
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (70, 70), (10 * i % 255, 80, 120)).save(buf, format="JPEG")
            sink.write({"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": f"picture number {i}"})
    return str(path)


def test_missing_index_is_built_on_first_use_and_a_stale_one_rebuilt(tok, renderer, tmp_path):
    shard = _caption_shard(tmp_path / "00000.tar", 6)
    assert not os.path.exists(index_path(shard))
    with pytest.raises(DataError, match="no usable length index"):
        load_index(shard, tokenizer_fingerprint(tok), None)
    mix = MultimodalMixture([(1.0, ShardSource(str(tmp_path)))], 64, 0, renderer=renderer)
    assert read_header(shard)["samples"] == 6 and mix.next_sequence().placed
    _caption_shard(tmp_path / "00000.tar", 7)  # the shard changed: its index is stale
    assert not is_current(shard, tokenizer_fingerprint(tok), None)
    assert not is_current(_caption_shard(tmp_path / "other.tar", 2), "another-tokenizer", None)
    with pytest.raises(DataError, match="stale"):
        load_index(shard, tokenizer_fingerprint(tok), None)
    assert ensure_indexes([shard], tok) == 1 and read_header(shard)["samples"] == 7
    assert ensure_indexes([shard], tok) == 0  # current: not rebuilt


def _docs():
    return [np.append(np.arange(300, 300 + n) % 700 + 300, 2) for n in (37, 90, 12, 64)]


def test_each_rank_reads_only_the_samples_of_its_own_sequences(tok, renderer, syn_dir, monkeypatch):
    loads = []
    original = ShardSource.load

    def counting_load(self, unit, record):
        loads.append((self._rank, unit, record))
        return original(self, unit, record)

    monkeypatch.setattr(ShardSource, "load", counting_load)
    G, steps = 8, 3

    def run(rank, world):
        source = ShardSource(syn_dir, seed=3)
        source._rank = rank
        mix = MultimodalMixture([(0.3, LanguageSource(_docs())), (0.7, source)], 64, 5, renderer=renderer)
        it = MultimodalMicroBatchIterator(mix, G, 2 if world < 4 else 1, rank, world)
        it._replay(2 * G)  # a replay (resume without a mixture state) reads nothing
        assert loads == []
        return [it.next_global_batch() for _ in range(steps)]

    single = run(0, 1)
    single_loads = sorted(loads)
    assert len(single_loads) >= 3 * steps
    for world in (2, 4):
        per_rank = []
        for rank in range(world):
            loads.clear()
            run(rank, world)
            per_rank.append(sorted({(u, r) for _, u, r in loads}))
        every = [x for rank_loads in per_rank for x in rank_loads]
        # no sample is read by two ranks, and together they read what one rank reads alone
        assert len(every) == len(set(every)) and sorted(every) == sorted({(u, r) for _, u, r in single_loads})
        assert max(len(x) for x in per_rank) < len(single_loads)


def test_json_records_resume_exactly(tok, renderer, tmp_path):
    (tmp_path / "img").mkdir()
    records = []
    for i in range(9):
        Image.new("RGB", (70, 70), (20 * i, 40, 60)).save(tmp_path / "img" / f"{i}.png")
        records.append({"image": f"img/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": f"Shade {i}."}]})
    (tmp_path / "llava.json").write_text(json.dumps(records))

    def make():
        mix = MultimodalMixture([(1.0, ShardSource(str(tmp_path / "llava.json"), seed=1))], 48, 2, renderer=renderer)
        return MultimodalMicroBatchIterator(mix, 2, 1, 0, 1)

    a = make()
    first = [a.next_global_batch() for _ in range(3)]
    state = a.state_dict()
    ref = [a.next_global_batch() for _ in range(4)]  # crosses into the next epoch: a new permutation
    b = make()
    b.load_state_dict(json.loads(json.dumps(state)))
    for r in ref:
        got = b.next_global_batch()
        assert all((x["tokens"] == y["tokens"]).all() and (x["loss_mask"] == y["loss_mask"]).all()
                   for x, y in zip(got, r))
    assert first[0][0]["patches"] is not None


def test_index_tool(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("build_mm_shards", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for i in range(3):
        _caption_shard(tmp_path / f"{i:05d}.tar", 4)
    (tmp_path / "00002.tar").write_bytes(b"\x01" * 3000)  # not a tar
    assert tool.main(["index", str(tmp_path), "--jobs", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"units": 3, "samples": 8, "usable": 8, "undecodable_images": 0,
                   "damaged": [str(tmp_path / "00002.tar")]}
    assert all(os.path.exists(index_path(p)) for p in list_shards(tmp_path))


def test_an_index_that_cannot_be_written_is_one_line(tok, tmp_path):
    shard = _caption_shard(tmp_path / "00000.tar", 2)
    os.mkdir(index_path(shard))  # something in the way (as a read-only folder would be)
    with pytest.raises(DataError) as err:
        ensure_indexes([shard], tok)
    assert f"{shard}: cannot write its length index" in str(err.value) and "\n" not in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["00000.tar", "00000.tar.mmidx"]  # no temporary file left


def test_write_synthetic_shards_indexes_for_the_given_tokenizer(tmp_path, tok):
    (shard,) = write_synthetic_shards(tmp_path, 3, seed=0, samples_per_shard=5, tokenizer=tok)
    assert read_header(shard)["tokenizer"] == tokenizer_fingerprint(tok)


def test_ranks_index_their_share_and_a_failure_stops_every_rank(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mm_workers import index_share_and_agree
    from spawn_world import run_world

    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(4):
        _caption_shard(shards / f"{i:05d}.tar", 3)
    blocked = str(shards / "00003.tar")
    os.mkdir(index_path(blocked))  # rank 1's share: units 1 and 3
    run_world(index_share_and_agree, 2, str(shards), blocked, str(tmp_path))
    lines = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert lines[0] == lines[1] and lines[0].startswith(f"{blocked}: cannot write its length index")
    assert sorted(p.name for p in shards.glob("*.mmidx") if p.is_file()) == [
        "00000.tar.mmidx", "00001.tar.mmidx", "00002.tar.mmidx"]  # the others were built, by their ranks
