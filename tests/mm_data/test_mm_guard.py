"""The bad-data guard: a source whose recent samples are too often bad, or whose first 100 are all
bad, stops the stream with one line (source, fraction, most common reason, one example), at the
same draw on every rank."""

import io
import json

import pytest
import webdataset as wds
from PIL import Image

from aria_train.data.errors import DataError
from aria_train.data.multimodal import (
    BadDataGuard,
    MultimodalMicroBatchIterator,
    MultimodalMixture,
    ShardSource,
)
from aria_train.data.multimodal.guard import reason_class


def test_window_fraction_and_first_reads():
    guard = BadDataGuard(max_fraction=0.2, window=10)
    for i in range(10):  # 2 bad in a full window of 10: 20% is not above 20%
        guard.bad("src", f"s.tar:{i}", "image 3: boom") if i in (4, 7) else guard.good("src")
    for _ in range(2):
        guard.good("src")
    state = json.loads(json.dumps(guard.state_dict()))
    with pytest.raises(DataError) as err:
        guard.bad("src", "s.tar:k12", "image 0: boom")  # the window now holds 3 bad of 10
    assert str(err.value) == ("data: source src: 30.0% of its last 10 samples are bad (data.max_bad_fraction=0.2); "
                              "most common: image N: boom (3 of them), e.g. s.tar:k12: image 0: boom")
    resumed = BadDataGuard(max_fraction=0.2, window=10)
    resumed.load_state_dict(state)
    with pytest.raises(DataError, match="30.0% of its last 10"):  # the same read stops a resumed run
        resumed.bad("src", "s.tar:k12", "image 0: boom")

    first = BadDataGuard(max_fraction=1.0, window=1000)
    for i in range(99):
        first.bad("web", f"w.tar:{i}", "schema: x")
    with pytest.raises(DataError, match=r"^data: source web: its first 100 samples are all bad; most common: "
                                        r"schema: x \(100 of them\), e.g. w.tar:99: schema: x$"):
        first.bad("web", "w.tar:99", "schema: x")
    assert reason_class("image 12: cannot identify image file <_io.BytesIO object at 0x7f3a>") == (
        "image N: cannot identify image file")


def jpeg(i):
    buf = io.BytesIO()
    Image.new("RGB", (70, 70), (i * 37 % 255, 90, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def img2dataset_shards(directory, shards=3, per_shard=20, corrupt_every=0):
    """img2dataset's layout written by webdataset; every corrupt_every-th image is not an image."""
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for s in range(shards):
        with wds.TarWriter(str(directory / f"{s:05d}.tar")) as sink:
            for _ in range(per_shard):
                image = b"\x00garbage, not a jpeg" if corrupt_every and n % corrupt_every == 2 else jpeg(n)
                sink.write({"__key__": f"{s:05d}{n:04d}", "jpg": image, "txt": f"a photo numbered {n}",
                            "json": {"key": f"{s:05d}{n:04d}", "status": "success", "caption": f"a photo numbered {n}"}})
                n += 1
    return directory


def test_layouts_the_config_does_not_accept_stop_after_100_reads(renderer, tmp_path):
    data = img2dataset_shards(tmp_path / "cc")
    mix = MultimodalMixture([(1.0, ShardSource(data))], 64, 0, renderer=renderer, formats=["aria"])
    with pytest.raises(DataError) as err:
        for _ in range(200):
            mix.next_plan()
    line = str(err.value)
    assert line.startswith("data: source cc: its first 100 samples are all bad; most common: layout caption is not "
                           "in data.mm_formats [aria] (100 of them), e.g. ")
    assert f"{data}/000" in line and ".tar:0000" in line and "\n" not in line
    assert mix.planner.draws == 100  # each bad sample costs its draw


def test_a_fifth_of_the_images_corrupt_stops_every_rank_at_the_same_batch(renderer, tmp_path):
    data = img2dataset_shards(tmp_path / "laion", shards=2, per_shard=25, corrupt_every=5)

    def failing_batch(rank, world):
        mix = MultimodalMixture([(1.0, ShardSource(data, seed=4))], 64, 1, renderer=renderer, bad_sample_window=100)
        it = MultimodalMicroBatchIterator(mix, 4, 1, rank, world)
        for step in range(100):
            try:
                it.next_global_batch()
            except DataError as err:
                return step, str(err)
        raise AssertionError("the guard never stopped the stream")

    outcomes = {failing_batch(rank, world) for world in (1, 2) for rank in range(world)}
    assert len(outcomes) == 1  # one rank or two, each rank: the same step, the same line
    step, line = outcomes.pop()
    assert step > 0
    assert line.startswith("data: source laion: 20.0% of its last 100 samples are bad (data.max_bad_fraction=0.05); "
                           "most common: image N: cannot identify image file (20 of them), e.g. ")


@pytest.mark.parametrize("override, message", [
    ({"data.mm_formats": ["caption", "webdataset"]}, "data.mm_formats="),
    ({"data.max_bad_fraction": 1.5}, "data.max_bad_fraction=1.5 must be within [0, 1]"),
    ({"data.bad_sample_window": 0}, "data.bad_sample_window=0 must be positive"),
])
def test_guard_and_layout_keys_are_checked(override, message):
    from aria_train.config import ConfigError
    from aria_train.train.run_config import build_config

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_config(2, None, None, override)
