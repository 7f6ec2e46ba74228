"""Synthetic "pixels matter" data: deterministic by seed, captions and answers read back from
the pixels."""

import io
import re
from collections import Counter

import numpy as np
from PIL import Image

from aria_train.data.multimodal import count_shapes, read_shard, synthetic_sample, write_synthetic_shards
from aria_train.data.multimodal.synthetic import COLORS, NUMBERS, SHAPES, read_scene

WORD_TO_N = {v: k for k, v in NUMBERS.items()}
PHRASE = re.compile(r"(one|two|three) (\w+) (circle|square|triangle)s? on the (left|right)")


def test_same_seed_same_bytes(tmp_path):
    a = write_synthetic_shards(tmp_path / "a", 12, seed=3, samples_per_shard=5)
    b = write_synthetic_shards(tmp_path / "b", 12, seed=3, samples_per_shard=5)
    c = write_synthetic_shards(tmp_path / "c", 12, seed=4, samples_per_shard=5)
    assert len(a) == 3
    assert [open(p, "rb").read() for p in a] == [open(p, "rb").read() for p in b]
    assert open(a[0], "rb").read() != open(c[0], "rb").read()


def test_captions_match_the_pixels():
    seen = Counter()
    for i in range(40):
        meta, images, _ = synthetic_sample(9, i, kind="caption")
        assert images[0].size == (70, 70)
        phrases = list(PHRASE.finditer(meta["caption"]))
        assert " and ".join(m.group(0) for m in phrases) == meta["caption"]  # nothing else is said
        claimed = sorted((color, shape, side) for m in phrases
                         for number, color, shape, side in [m.groups()] for _ in range(WORD_TO_N[number]))
        assert read_scene(images[0]) == claimed  # every drawn shape, and only those
        seen.update((c, s) for c, s, _ in claimed)
    assert {s for _, s in seen} == set(SHAPES) and {c for c, _ in seen} == set(COLORS)


def test_qa_answers_and_video_direction():
    for i in range(30):
        meta, images, _ = synthetic_sample(1, i, kind="ocr_qa")
        q, a = meta["question"], meta["answer"]
        scene = read_scene(images[0])
        if q.startswith("How many"):  # How many <colour> <shape>s are there?
            color, shape = q.split()[2], q.split()[3].rstrip("s")
            assert count_shapes(images[0], color, shape=shape) == WORD_TO_N[a]
        elif q.startswith("Where"):  # Where is/are the <colour> <shape(s)>?
            color, shape = q.split()[3], q.split()[4].rstrip("?").rstrip("s")
            assert {sd for c, sh, sd in scene if (c, sh) == (color, shape)} == {a.split()[-1]}
        else:  # What colour is/are the <shape(s)>?
            shape = q.split()[4].rstrip("?").rstrip("s")
            assert a in {c for c, sh, _ in scene if sh == shape}
    for i in range(5):
        meta, frames, _ = synthetic_sample(1, i, kind="video")
        assert [f["time"] for f in meta["frames"]] == [0.0, 2.0, 4.0]
        xs = []
        for ext, data in frames:
            assert ext == "jpg"
            arr = np.asarray(Image.open(io.BytesIO(data)).convert("L")).astype(int)
            xs.append(np.nonzero((arr < 200).any(axis=0))[0].mean())
        rightward = "from the left to the right" in meta["caption"]
        assert (np.diff(xs) > 0).all() if rightward else (np.diff(xs) < 0).all()


def test_kinds_mix_and_tiny_preset_patch_counts(tmp_path, tiny_projector, renderer):
    shards = write_synthetic_shards(tmp_path, 40, seed=0, samples_per_shard=40)
    samples = [s for _, s in read_shard(shards[0])]
    kinds = {s.meta["kind"] for s in samples}
    assert {"caption", "ocr_qa", "interleaved"} <= kinds
    for s in samples[:10]:
        grid = renderer.render(s)["grid"]
        assert all(h * w in tiny_projector.patch_to_query for h, w in grid)  # 5x5 = 25 patches
