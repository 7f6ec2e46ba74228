"""The layouts users have, read as they are: WebDataset/img2dataset caption shards written by the
webdataset library, LLaVA conversation JSON, chat "messages" JSONL, OBELICS documents. For each,
a realistic record and the exact tokens and loss mask of its rendered sample."""

import io
import json
import tarfile

import pytest
import torch
import webdataset as wds
from PIL import Image

from aria_train.data.multimodal import BadSamples, ShardSource, read_shard
from aria_train.data.multimodal.errors import BadSample
from aria_train.data.multimodal.json_records import ImageFolder, read_record, record_spans
from aria_train.data.multimodal.layouts import ReadError, sample_from_record
from aria_train.data.multimodal.tar_io import tar_groups


def image_bytes(fmt="JPEG", size=(70, 70), color=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def block(tok, n=4):
    return [tok.fim_prefix] + [tok.img] * n + [tok.fim_suffix]


def check(renderer, raw, expected_tokens, target_positions):
    """Exact tokens, and loss_mask[i] == 1 exactly where token i+1 is a target."""
    out = renderer.render(raw)
    r = out["rendered"]
    assert r.tokens.tolist() == expected_tokens
    mask = torch.zeros(len(expected_tokens) - 1)
    for j in target_positions:
        mask[j - 1] = 1
    assert torch.equal(out["loss_mask"], mask)
    return out


def chat_turn(tok, role, body):
    return [tok.im_start] + tok.encode(f"{role}\n") + body + [tok.im_end] + tok.encode("\n")


def test_member_grouping_matches_the_webdataset_library(tmp_path):
    path = str(tmp_path / "mixed-000000.tar")
    with wds.TarWriter(path) as sink:
        sink.write({"__key__": "000000012", "jpg": image_bytes(), "txt": "a red square", "json": {"status": "success"}})
        sink.write({"__key__": "img.001", "jpg": image_bytes(), "txt": "dotted key"})  # key "img", suffix "001.jpg"
        sink.write({"__key__": "img.002", "jpg": image_bytes(), "txt": "merges with img.001"})
        sink.write({"__key__": "dir.v1/s1", "png": image_bytes("PNG"), "json": {"caption": "dot in the folder"}})
        sink.write({"__key__": "ours", "0.png": image_bytes("PNG"), "1.JPG": image_bytes(), "json": {"kind": "x"}})
    with tarfile.open(path, "a") as t:  # webdataset's metadata members and a name without a suffix
        for name in ("__index__", "README"):
            info = tarfile.TarInfo(name)
            info.size = 1
            t.addfile(info, io.BytesIO(b"x"))
    theirs = [(s["__key__"], sorted(k for k in s if not k.startswith("__")))
              for s in wds.WebDataset(path, shardshuffle=False)]
    with tarfile.open(path) as t:
        ours = [(key, sorted(suffix for suffix, _ in group)) for key, group in tar_groups(t, pytest.fail)]
    assert ours == theirs
    assert [key for key, _ in ours] == ["000000012", "img", "dir.v1/s1", "ours"]
    bad = BadSamples()
    read = [(s.key, s.fmt) for _, s in read_shard(path, bad)]
    assert read == [("000000012", "caption"), ("dir.v1/s1", "caption"), ("ours", "aria")]
    ((_, key, reason),) = bad.records  # the two dotted keys merged, as webdataset merges them
    assert key == "img" and "keys that agree up to their first '.' are one sample" in reason


@pytest.fixture()
def img2dataset_shard(tmp_path):
    """A shard in img2dataset's output layout, written by webdataset: KEY.jpg, KEY.txt, KEY.json."""
    path = str(tmp_path / "00000.tar")
    with wds.TarWriter(path) as sink:
        sink.write({"__key__": "000000003", "jpg": image_bytes(), "txt": "a red square on a white wall",
                    "json": {"url": "http://example.com/a.jpg", "key": "000000003", "status": "success",
                             "caption": "a red square on a white wall", "width": 70, "height": 70,
                             "original_width": 640, "original_height": 640, "exif": "{}"}})
        sink.write({"__key__": "laion.v2.17", "webp": image_bytes("WEBP"), "json": {"caption": "  only in the json "}})
    return path


def test_webdataset_caption_tokens_and_mask(tok, renderer, img2dataset_shard):
    samples = [s for _, s in read_shard(img2dataset_shard)]
    assert [(s.key, s.fmt) for s in samples] == [("000000003", "caption"), ("laion", "caption")]
    caption = tok.encode("a red square on a white wall")
    check(renderer, samples[0], block(tok) + caption + [tok.eod], range(6, 6 + len(caption) + 1))
    caption = tok.encode("only in the json")  # json "caption" field, surrounding spaces dropped
    check(renderer, samples[1], block(tok) + caption + [tok.eod], range(6, 6 + len(caption) + 1))


LLAVA_RECORD = {
    "id": "000000033471",
    "image": "coco/train2017/000000033471.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features an advertisement."},
    ],
}


@pytest.fixture()
def llava_json(tmp_path):
    (tmp_path / "images" / "coco" / "train2017").mkdir(parents=True)
    (tmp_path / "images" / "coco" / "train2017" / "000000033471.jpg").write_bytes(image_bytes())
    for name in ("a.png", "b.png"):
        (tmp_path / "images" / name).write_bytes(image_bytes("PNG", (70, 35)))
    two = {"id": "pair", "image": ["a.png", "b.png"],
           "conversations": [{"from": "human", "value": "Left: <image> right: <image>\nSame?"},
                             {"from": "gpt", "value": "No."}]}
    text_only = {"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
    path = tmp_path / "llava_mix.json"
    path.write_text(json.dumps([LLAVA_RECORD, two, text_only], indent=2))
    return path


def test_llava_conversation_tokens_and_mask(tok, renderer, llava_json):
    spans = record_spans(str(llava_json))
    assert len(spans) == 3
    images = ImageFolder(str(llava_json.parent / "images"))
    raw = read_record(str(llava_json), spans[0], 0, images)
    assert raw.fmt == "llava" and raw.meta["kind"] == "chat" and raw.key == "#0"
    turns = LLAVA_RECORD["conversations"]
    user1 = chat_turn(tok, "user", block(tok) + tok.encode("\nWhat are the colors of the bus in the image?"))
    answer1 = tok.encode(turns[1]["value"])
    gpt1 = chat_turn(tok, "assistant", answer1)
    user2 = chat_turn(tok, "user", tok.encode(turns[2]["value"]))
    answer2 = tok.encode(turns[3]["value"])
    expected = user1 + gpt1 + user2 + chat_turn(tok, "assistant", answer2) + [tok.eod]
    start1 = len(user1) + 1 + len(tok.encode("assistant\n"))
    start2 = len(user1) + len(gpt1) + len(user2) + 1 + len(tok.encode("assistant\n"))
    targets = [*range(start1, start1 + len(answer1) + 1), *range(start2, start2 + len(answer2) + 1), len(expected) - 1]
    check(renderer, raw, expected, targets)

    pair = read_record(str(llava_json), spans[1], 1, images)  # two placeholders: two blocks in place
    body = tok.encode("Left: ") + block(tok) + tok.encode(" right: ") + block(tok) + tok.encode("\nSame?")
    assert renderer.plan(pair).tokens.tolist()[: len(chat_turn(tok, "user", body))] == chat_turn(tok, "user", body)
    assert [img.size for img in renderer.plan(pair).images] == [(70, 35), (70, 35)]
    assert read_record(str(llava_json), spans[2], 2, images).images == {}


def test_llava_placeholders_and_images_must_agree(tmp_path):
    load = ImageFolder(str(tmp_path))
    (tmp_path / "x.jpg").write_bytes(image_bytes())
    no_placeholder = {"image": "x.jpg", "conversations": [{"from": "human", "value": "Describe."},
                                                          {"from": "gpt", "value": "A red square."}]}
    raw = sample_from_record("f.json", "#0", no_placeholder, load)  # LLaVA's convention: image first
    assert raw.meta["messages"][0]["content"][0] == {"type": "image", "image": 0}
    two = dict(no_placeholder, conversations=[{"from": "human", "value": "<image><image>?"},
                                              {"from": "gpt", "value": "x"}])
    with pytest.raises(BadSample, match="llava: 2 image slot"):
        sample_from_record("f.json", "#1", two, load)
    with pytest.raises(ReadError, match="remote URLs"):
        sample_from_record("f.json", "#2", dict(no_placeholder, image="https://example.com/x.jpg"), load)
    with pytest.raises(ReadError, match="missing.jpg"):
        sample_from_record("f.json", "#3", dict(no_placeholder, image="missing.jpg"), load)


def test_llava_inside_a_shard(tok, renderer, tmp_path):
    path = str(tmp_path / "llava-000000.tar")
    with wds.TarWriter(path) as sink:
        sink.write({"__key__": "s0", "jpg": image_bytes(), "json": {"image": "ignored/inside/shards.jpg", "conversations": [
            {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]}})
    (raw,) = [s for _, s in read_shard(path)]
    answer = tok.encode("Red.")
    expected = (chat_turn(tok, "user", block(tok) + tok.encode("\nColour?")) + chat_turn(tok, "assistant", answer)
                + [tok.eod])
    start = len(chat_turn(tok, "user", block(tok) + tok.encode("\nColour?"))) + 1 + len(tok.encode("assistant\n"))
    check(renderer, raw, expected, [*range(start, start + len(answer) + 1), len(expected) - 1])


def test_messages_jsonl_tokens_and_mask(tok, renderer, tmp_path):
    """The format of the released Aria fine-tuning code: image parts take "images" in order."""
    (tmp_path / "image_folder").mkdir()
    (tmp_path / "image_folder" / "cat.jpg").write_bytes(image_bytes())
    record = {"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What's in this image?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat sitting on a windowsill."}]},
    ], "images": ["image_folder/cat.jpg"]}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(record) + "\n\n")  # blank lines are skipped
    source = ShardSource(str(path), shuffle_shards=False)
    raw, cursor = source.read()
    assert raw.fmt == "messages" and cursor == {"epoch": 0, "shard": 0, "sample": 0}
    answer = tok.encode("A cat sitting on a windowsill.")
    system = chat_turn(tok, "system", tok.encode("Answer briefly."))
    user = chat_turn(tok, "user", block(tok) + tok.encode("What's in this image?"))
    expected = system + user + chat_turn(tok, "assistant", answer) + [tok.eod]
    start = len(system) + len(user) + 1 + len(tok.encode("assistant\n"))
    check(renderer, raw, expected, [*range(start, start + len(answer) + 1), len(expected) - 1])


def test_obelics_document_tokens_and_mask(tok, renderer, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "harbour.png").write_bytes(image_bytes("PNG"))
    record = {"texts": ["The old harbour", None, "Boats were moored along the quay.", "Most are gone now."],
              "images": [None, "imgs/harbour.png", None, None],
              "metadata": "[{\"document_url\": \"https://example.com/harbour\"}]", "general_metadata": "{}"}
    path = tmp_path / "obelics.jsonl"
    path.write_text(json.dumps(record) + "\n")
    raw, _ = ShardSource(str(path)).read()
    assert raw.fmt == "obelics" and raw.meta["kind"] == "interleaved"
    title = tok.encode("The old harbour")
    para1, para2 = tok.encode("Boats were moored along the quay.\n\n"), tok.encode("Most are gone now.")
    expected = title + block(tok) + para1 + para2 + [tok.eod]
    after = len(title) + 6
    check(renderer, raw, expected, [*range(1, len(title)), *range(after, len(expected))])


def test_obelics_and_messages_in_shards(tok, renderer, tmp_path):
    path = str(tmp_path / "docs-000000.tar")
    with wds.TarWriter(path) as sink:  # several images per sample: KEY.<i>.<ext>
        sink.write({"__key__": "d0", "0.png": image_bytes("PNG"), "1.png": image_bytes("PNG", (35, 70)),
                    "json": {"texts": [None, "between", None], "images": ["u0", None, "u1"]}})
        sink.write({"__key__": "m0", "0.jpg": image_bytes(), "json": {"messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Name it."}]},
            {"role": "assistant", "content": "A square."}]}})
    doc, chat = (s for _, s in read_shard(path))
    plan = renderer.plan(doc)
    assert plan.tokens.tolist() == block(tok) + tok.encode("between") + block(tok) + [tok.eod]
    assert [img.size for img in plan.images] == [(70, 70), (35, 70)]
    assert chat.fmt == "messages" and renderer.plan(chat).tokens.tolist()[:8] == [tok.im_start] + tok.encode(
        "user\n") + block(tok)[: 7 - len(tok.encode("user\n"))]
