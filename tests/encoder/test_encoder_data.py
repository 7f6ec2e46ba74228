"""Stage 0's data: labelled shards (KEY.jpg + KEY.cls), the caption layouts stage 2 reads, the
held-out split, the pair streams (the global batch is the same at any world size; resume), prompt
randomisation, unusable and undecodable samples."""

import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from aria_train.data.encoder.batches import PairBatches, PairSpec, PairStream
from aria_train.data.encoder.build import ImageSettings, load_dataset
from aria_train.data.encoder.config import EncoderDatasetConfig
from aria_train.data.encoder.dataset import EncoderDataset, ImageReader
from aria_train.data.encoder.prompts import PromptRenderer
from aria_train.data.encoder.schedule import PairSchedule
from aria_train.data.encoder.units import build_unit, load_unit
from aria_train.data.errors import DataError
from aria_train.data.image_tokens import keep_ratio_crop
from aria_train.data.multimodal.synthetic import CLASS_NAMES, labelled_sample, read_scene
from aria_train.data.tokenizer import load_tokenizer

IMAGE = ImageSettings(default_size=70, min_size=48, patch_size=14)
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def jpeg(color, size=(70, 70)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("")


@pytest.fixture()
def labelled_dir(tmp_path):
    """Two webdataset shards of KEY.jpg + KEY.cls (class = colour), and classes.txt."""
    folder = tmp_path / "colours"
    folder.mkdir()
    (folder / "classes.txt").write_text("red\ngreen\nblue\n")
    for shard in range(2):
        with wds.TarWriter(str(folder / f"part-{shard:05d}.tar")) as sink:
            for i in range(6):
                label = (shard * 6 + i) % 3
                sink.write({"__key__": f"s{shard}_{i:03d}", "jpg": jpeg(COLORS[label], (70, 35 + 7 * i)),
                            "cls": str(label)})
    return folder


def test_labelled_shards_give_labels_and_crops(labelled_dir):
    ds = load_dataset(EncoderDatasetConfig(name="colours", path=str(labelled_dir)), "", IMAGE, 0.0)
    assert ds.class_names == ["red", "green", "blue"] and len(ds.train_ids) == 12 and ds.bad_count == 0
    reader = ImageReader(70, 48, 14)
    for unit, position in ds.train_ids:
        where, label, text = ds.sample(int(unit), int(position))
        crop, weight = reader.crop(ds, int(unit), int(position))
        assert weight == 1.0 and text is None
        assert crop.shape[0] == 3 and crop.shape[1] % 14 == 0 and crop.shape[2] == 70  # long side 70, ratio kept
        mean_rgb = (crop[:, :35, :].mean(dim=(1, 2)) + 1) * 127.5  # normalised back to 0..255
        assert int(mean_rgb.argmax()) == label, where  # the class is the colour the pixels have
    assert (labelled_dir / "part-00000.tar.encidx").is_file()


def test_caption_layouts_of_stage_2(tmp_path):
    """img2dataset / LAION captions (KEY.jpg + KEY.txt, or a caption in KEY.json), ARIA's own
    caption kind, JSONL records; a llava conversation is not a pair and is reported unusable."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    with wds.TarWriter(str(folder / "a-000.tar")) as sink:
        sink.write({"__key__": "k0", "jpg": jpeg(COLORS[0]), "txt": "a red square", "json": {"status": "success"}})
        sink.write({"__key__": "k1", "webp": jpeg(COLORS[1]), "json": {"caption": " green in the json "}})
        sink.write({"__key__": "k2", "0.png": jpeg(COLORS[2]), "json": {"kind": "caption", "image": 0,
                                                                         "caption": "blue, ARIA's layout"}})
        sink.write({"__key__": "k3", "jpg": jpeg(COLORS[0]), "json": {"conversations": [
            {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]}})
    unit = build_unit(str(folder / "a-000.tar"))
    assert unit.text[:3] == ["a red square", "green in the json", "blue, ARIA's layout"]
    assert unit.reason[:3] == ["", "", ""] and "llava" in unit.reason[3]
    (folder / "img.jpg").write_bytes(jpeg(COLORS[1]))
    records = folder / "records.jsonl"
    records.write_text(json.dumps({"image": "img.jpg", "caption": "from a record"}) + "\n"
                       + json.dumps({"image": "https://example.com/x.jpg", "caption": "remote"}) + "\n")
    jsonl = build_unit(str(records))
    assert jsonl.text[0] == "from a record" and jsonl.image[0][0] == str(folder / "img.jpg")
    assert "image files only" in jsonl.reason[1]
    ds = EncoderDataset("pairs", "image_text", [load_unit(str(folder / "a-000.tar")), load_unit(str(records))],
                        None, max_bad_fraction=0.5)
    assert len(ds.train_ids) == 4 and ds.bad_count == 2
    crop, weight = ImageReader(70, 48, 14).crop(ds, 1, 0)  # the JSONL record's image file
    assert weight == 1.0 and torch.allclose(crop, keep_ratio_crop(Image.open(folder / "img.jpg"), 70, 48, 14))


def test_unusable_samples_stop_the_dataset_with_one_line(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "classes.txt").write_text("a\nb\n")
    with wds.TarWriter(str(folder / "x-000.tar")) as sink:
        sink.write({"__key__": "ok", "jpg": jpeg(COLORS[0]), "cls": "1"})
        sink.write({"__key__": "far", "jpg": jpeg(COLORS[0]), "cls": "7"})
        sink.write({"__key__": "none", "jpg": jpeg(COLORS[0]), "txt": "no class"})
        sink.write({"__key__": "word", "jpg": jpeg(COLORS[0]), "cls": "cat"})
    config = EncoderDatasetConfig(name="broken", path=str(folder))
    with pytest.raises(DataError, match=r"encoder dataset broken: 3 of 4 samples are unusable as labelled .*e\.g\. "):
        load_dataset(config, "", IMAGE, 0.05)
    ds = load_dataset(config, "", IMAGE, 0.8)
    assert len(ds.train_ids) == 1 and ds.bad_count == 3
    with pytest.raises(DataError, match="no class names"):
        (folder / "classes.txt").unlink()
        load_dataset(config, "", IMAGE, 0.8)


def test_undecodable_image_keeps_its_place_with_weight_zero(labelled_dir, tmp_path):
    ds = load_dataset(EncoderDatasetConfig(name="colours", path=str(labelled_dir)), "", IMAGE, 0.0)
    unit = ds.units[0]
    name, offset, size = unit.image[0]
    with open(unit.unit, "r+b") as f:  # the header survives, the pixels do not
        f.seek(offset + size // 2)
        f.write(b"\x00" * (size // 2))
    reader = ImageReader(70, 48, 14)
    crop, weight = reader.crop(ds, 0, 0)
    assert weight == 0.0 and torch.all(crop == -1.0) and reader.bad.count == 1


def test_held_out_split_is_disjoint_and_fixed(labelled_dir):
    a = load_dataset(EncoderDatasetConfig(name="c", path=str(labelled_dir), eval_samples=4), "", IMAGE, 0.0)
    b = load_dataset(EncoderDatasetConfig(name="c", path=str(labelled_dir), eval_samples=4), "", IMAGE, 0.0)
    train, held = {tuple(r) for r in a.train_ids.tolist()}, {tuple(r) for r in a.eval_ids.tolist()}
    assert len(held) == 4 and len(train) == 8 and not train & held
    assert np.array_equal(a.eval_ids, b.eval_ids)
    with pytest.raises(DataError, match="not more than its eval_samples=12"):
        load_dataset(EncoderDatasetConfig(name="c", path=str(labelled_dir), eval_samples=12), "", IMAGE, 0.0)


@pytest.mark.parametrize("world", [2, 4])
def test_global_batch_does_not_depend_on_world_size(world):
    def walk(w):
        streams = [PairStream(3, 10, 8, seed=5, rank=r, world=w) for r in range(w)]
        return [sum((s.next_share() for s in streams), []) for _ in range(6)]  # 6 x 8 > 4 epochs of 10

    one, many = walk(1), walk(world)
    assert one == many
    epochs = [e for batch in one for e, _, _ in batch]
    assert epochs == sorted(epochs) and epochs[-1] == 4
    first_epoch = [i for batch in one for e, _, i in batch if e == 0]
    assert sorted(first_epoch) == list(range(10))  # every sample once per epoch
    with pytest.raises(DataError, match="does not split over 3 ranks"):
        PairStream(0, 10, 8, seed=0, rank=0, world=3)


def _batches(ds, tok, templates, schedule="weighted_round_robin"):
    """Two pairs on one dataset with different batch sizes and image sizes (70 and 42 px)."""
    specs = [PairSpec("c/softmax", "softmax", ds, 4, ImageReader(70, 48, 14)),
             PairSpec("c/nce", "nce", ds, 6, ImageReader(42, 28, 14))]
    return PairBatches(specs, PairSchedule([1.0, 2.0], schedule, seed=3), tok, PromptRenderer(templates, 3), 16,
                       seed=3)


def test_pair_batches_alternate_render_prompts_and_resume(labelled_dir, tok):
    ds = load_dataset(EncoderDatasetConfig(name="c", path=str(labelled_dir)), "", IMAGE, 0.0)
    templates = ["a photo of a {}.", "a drawing of the {}.", "{}, in colour"]
    straight = _batches(ds, tok, templates)
    first = [straight.next_global_batch() for _ in range(9)]
    assert [b.name for b in first[:3]] == ["c/nce", "c/softmax", "c/nce"] and straight.steps == [3, 6]
    nce = [b for b in first if b.objective == "nce"]
    assert all(b.labels is None and len(b.text_lengths) == 6 and b.text_tokens.numel() == sum(b.text_lengths)
               for b in nce)
    texts = [t for b in nce for t in b.texts]
    assert len({t.replace(n, "{}") for t in texts for n in ("red", "green", "blue") if n in t}) == 3  # every template
    soft = [b for b in first if b.objective == "softmax"]
    assert all(b.labels.shape == (4,) and b.patches.shape[0] == sum(h * w for h, w in b.grid) for b in soft)
    assert max(max(g) for b in soft for g in b.grid) == 5 and max(max(g) for b in nce for g in b.grid) == 3
    resumed = _batches(ds, tok, templates)
    head = [resumed.next_global_batch() for _ in range(4)]
    state = resumed.state_dict()
    again = _batches(ds, tok, templates)
    again.load_state_dict(state)
    tail = [again.next_global_batch() for _ in range(5)]
    for a, b in zip(first, head + tail):
        assert a.name == b.name and a.texts == b.texts and torch.equal(a.patches, b.patches)
    bare = _batches(ds, tok, []).next_global_batch()
    assert set(bare.texts) <= {"red", "green", "blue"}


def test_synthetic_labels_are_what_is_drawn():
    for index in range(40):
        label, image, scene = labelled_sample(0, index)
        color, shape = CLASS_NAMES[label].split(" ")
        drawn = read_scene(image)
        assert drawn and all(c == color and s == shape for c, s, _ in drawn), (index, drawn, CLASS_NAMES[label])
        assert len(drawn) == scene.groups[0].count
