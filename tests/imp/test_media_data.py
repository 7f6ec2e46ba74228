"""Clips and audio in shards (IMP's options): the members each layout takes (.wav, .flac,
.npy, frame images), what a micro-batch carries for them (tubelets, spectrogram patches,
waveform frames, the media order), and bad media: a corrupt audio member is a counted bad
sample, media the run cannot use are counted bad samples, FLAC without soundfile stops with one
line naming the member."""

import io
import json
import sys
import tarfile
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from aria_train.data.errors import DataError
from aria_train.data.multimodal import ImageConfig, MultimodalMicroBatchIterator, MultimodalMixture, ShardSource, ShardWriter
from aria_train.data.multimodal.index import BLOCK_KINDS, load_index, tokenizer_fingerprint
from aria_train.data.multimodal.index_build import build_index
from aria_train.data.multimodal.media import MediaSettings, decode_audio, resample
from aria_train.data.tokenizer import load_tokenizer
from aria_train.model.vision_config import vision_preset
from aria_train.nn.audio_features import AudioFeatureSpec
from aria_train.nn.image_patches import patchify_video

SR = 16_000


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("")


def _image_cfg(audio="spectrogram", tubelets=True):
    media = MediaSettings(tubelet_frames=4 if tubelets else 0, max_frames=16,
                          audio=AudioFeatureSpec(audio) if audio else None, audio_queries=3 if audio else 0)
    return ImageConfig.from_projector(vision_preset("tiny")[1], media=media)  # 70 px crops, 4 queries


def _wav(values, rate=SR, width=2, channels=1) -> bytes:
    values = np.asarray(values, dtype=np.float64).reshape(-1, channels)
    if width == 1:
        raw = np.clip(values * 128 + 128, 0, 255).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.clip(values * 2**23, -2**23, 2**23 - 1).astype("<i4").reshape(-1)
        raw = np.stack([ints & 255, (ints >> 8) & 255, (ints >> 16) & 255], axis=1).astype(np.uint8).tobytes()
    else:
        raw = np.clip(values * 2 ** (8 * width - 1), -2 ** (8 * width - 1), 2 ** (8 * width - 1) - 1).astype(
            f"<i{width}").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return buf.getvalue()


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _tone(hz, seconds, rate=SR):
    return 0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


def _png(rgb, size=70):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="PNG")
    return buf.getvalue()


def _items(directory, tok, image_cfg, keys, seq=64):
    """The first sequences of a single-epoch pass until every key was placed: (micro-batch of
    them, {key: (kind, encoder input, grid)}, the mixture)."""
    mix = MultimodalMixture([(1.0, ShardSource(str(directory), shuffle_shards=False))], seq, 0, tokenizer=tok,
                            image_cfg=image_cfg)
    seqs, found = [], {}
    while set(found) != set(keys):
        s = mix.next_sequence()
        seqs.append(s)
        items = iter(zip(s.media_order, _media_of(s)))
        for p in s.placed:
            for _ in p.sample.images:
                found.setdefault(p.sample.key, next(items))
    return MultimodalMicroBatchIterator.collate(seqs, mix.renderer), found, mix


def _media_of(seq):
    videos, audio, crops = iter(seq.videos), iter(seq.audio), iter(zip(seq.crops, seq.grid))
    return [next(videos) if k == "video" else next(audio) if k == "audio" else next(crops) for k in seq.media_order]


def test_audio_members_become_spectrogram_patches(tmp_path, tok):
    writer = ShardWriter(tmp_path / "a", 100, tokenizer=tok)
    tone, stereo = _tone(440, 2.0), np.stack([_tone(880, 1.0), _tone(220, 1.0)], axis=1)
    writer.write("wav16", {"kind": "audio", "audio": 0, "caption": "a tone"}, [("wav", _wav(tone))])
    writer.write("wav24", {"kind": "audio", "audio": 0, "question": "Which?", "answer": "two"},
                 [("wav", _wav(stereo, width=3, channels=2))])
    writer.write("npy8k", {"kind": "audio", "audio": 0, "caption": "low rate", "sample_rate": 8000},
                 [("npy", _npy(_tone(440, 1.0, 8000).astype(np.float32)))])
    writer.close()
    cfg = _image_cfg()
    batch, found, mix = _items(tmp_path / "a", tok, cfg, ["wav16", "wav24", "npy8k"], seq=48)
    assert mix.bad.count == 0 and set(batch["media_order"]) == {"audio"}
    n = len(batch["media_order"])
    assert batch["audio_grid"] == [(8, 8)] * n and batch["audio_patches"].shape == (64 * n, 256)
    assert int(batch["is_visual"].sum()) == 3 * n  # audio.queries tokens per clip
    spec = cfg.media.audio
    quantised = lambda x, bits: np.clip(x * 2 ** (bits - 1), -2 ** (bits - 1), 2 ** (bits - 1) - 1).astype(
        np.int64) / 2 ** (bits - 1)  # noqa: E731  (what the WAV file holds)
    expected = {"wav16": spec.features(torch.from_numpy(quantised(tone, 16)).float()),
                "wav24": spec.features(torch.from_numpy(quantised(stereo, 24)).float()),
                "npy8k": spec.features(resample(torch.from_numpy(_tone(440, 1.0, 8000)).float()[:, None], 8000, SR))}
    for key, (kind, (patches, grid)) in found.items():
        assert kind == "audio" and grid == (8, 8)
        torch.testing.assert_close(patches, expected[key][0], rtol=1e-3, atol=1e-3, msg=key)


def test_webdataset_audio_shards_and_waveform_frames(tmp_path, tok):
    webdataset = pytest.importorskip("webdataset")
    soundfile = pytest.importorskip("soundfile")
    (tmp_path / "w").mkdir()
    flac = io.BytesIO()
    soundfile.write(flac, _tone(300, 0.5).astype(np.float32), SR, format="FLAC")
    with webdataset.TarWriter(str(tmp_path / "w" / "audio-000000.tar")) as sink:
        sink.write({"__key__": "clip0", "flac": flac.getvalue(), "txt": "a low hum"})
        sink.write({"__key__": "clip1", "wav": _wav(_tone(300, 2.0)), "txt": "a longer hum"})
    _, found, mix = _items(tmp_path / "w", tok, _image_cfg(audio="waveform"), ["clip0", "clip1"], seq=32)
    assert mix.bad.count == 0
    (kind0, (frames0, grid0)), (kind1, (frames1, grid1)) = found["clip0"], found["clip1"]
    assert kind0 == kind1 == "audio"
    assert grid0 == (1, 32) and frames0.shape == (32, 256)  # 0.5 s = 8000 samples: 32 frames (the last padded)
    assert grid1 == (1, 125) and frames1.shape == (125, 256)  # 2 s: 125 frames
    torch.testing.assert_close(frames0.reshape(-1)[: SR // 2], torch.from_numpy(_tone(300, 0.5)).float(),
                               atol=1e-4, rtol=0)
    long = AudioFeatureSpec("waveform").features(torch.randn(10 * SR))
    assert long[1] == (1, 256)  # at most 256 tokens


def test_clips_become_tubelets(tmp_path, tok):
    writer = ShardWriter(tmp_path / "c", 100, tokenizer=tok)
    colours = [(10 * i, 0, 0) for i in range(8)]
    writer.write("frames8", {"kind": "clip", "frames": list(range(8)), "caption": "red"},
                 [("png", _png(c)) for c in colours])
    video = np.random.default_rng(0).integers(0, 255, (20, 70, 70, 3), dtype=np.uint8)
    writer.write("npy20", {"kind": "clip", "video": 0, "caption": "noise"}, [("npy", _npy(video))])
    writer.write("frames5", {"kind": "clip", "frames": [0, 1, 2, 3, 4], "caption": "five"},
                 [("png", _png(c)) for c in colours[:5]])
    writer.close()
    batch, found, mix = _items(tmp_path / "c", tok, _image_cfg(), ["frames8", "npy20", "frames5"], seq=32)
    assert mix.bad.count == 0 and set(batch["media_order"]) == {"video"}
    n = len(batch["media_order"])
    assert batch["video_patches"].shape[0] == sum(t * h * w for t, h, w in batch["video_grid"])
    assert int(batch["is_visual"].sum()) == 4 * n  # a 5x5-patch crop: 4 queries per clip
    # 8 frames -> 2 tubelets of 4; 20 frames -> the first 16 (4 tubelets); 5 -> padded to 8 (2)
    assert {key: item[1][1] for key, item in found.items()} == {"frames8": (2, 5, 5), "npy20": (4, 5, 5),
                                                                 "frames5": (2, 5, 5)}
    assert found["npy20"][1][0].shape == (4 * 25, 3 * 4 * 14 * 14)
    frames = torch.from_numpy(video[:16]).permute(0, 3, 1, 2).float() / 255.0 * 2 - 1
    expected, _ = patchify_video(frames, 4, 14)
    torch.testing.assert_close(found["npy20"][1][0], expected)
    last = found["frames5"][1][0].view(2, 5, 5, 3, 4, 14, 14)[1]
    assert torch.all(last == last[:, :, :, :1])  # frames 5-7 repeat frame 4


def _corrupt_shard(path):
    truncated = _wav(_tone(440, 1.0))[:2000]  # the header says 1 s, the data holds less
    members = [
        ("good.json", json.dumps({"kind": "audio", "audio": 0, "caption": "fine"}).encode()),
        ("good.0.wav", _wav(_tone(440, 1.0))),
        ("junk.json", json.dumps({"kind": "audio", "audio": 0, "caption": "junk"}).encode()),
        ("junk.0.wav", b"RIFF\x00\x00\x00\x00WAVEnot audio at all"),
        ("cut.json", json.dumps({"kind": "audio", "audio": 0, "caption": "cut"}).encode()),
        ("cut.0.wav", truncated),
        ("img.json", json.dumps({"kind": "caption", "image": 0, "caption": "a picture"}).encode()),
        ("img.0.png", _png((0, 200, 0))),
    ]
    with tarfile.open(path, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return str(path)


def test_a_corrupt_audio_member_is_a_counted_bad_sample(tmp_path, tok):
    shard = _corrupt_shard(tmp_path / "bad-000000.tar")
    mix = MultimodalMixture([(1.0, ShardSource(shard, shuffle_shards=False))], 48, 0, tokenizer=tok,
                            image_cfg=_image_cfg())
    seqs = [mix.next_sequence() for _ in range(4)]
    reasons = {key: reason for _, key, reason in mix.bad.records}
    assert reasons["junk"].startswith("audio 0: not a readable WAV file")
    assert reasons["cut"].startswith("audio 0: decode failed: WAV data holds")
    assert mix.bad.count == len(mix.bad.records) >= 2
    window = mix.guard.sources[mix.sources[0].name]
    assert window.bad_in_window >= 2 and window.reads >= 4  # the bad-data guard counted them
    for s in seqs:  # the cut clip keeps its tokens, trains on silence, without loss
        for p in s.placed:
            if p.sample.key == "cut":
                assert not s.target[p.offset : p.offset + p.length].any()
    with pytest.raises(DataError, match="junk: audio 0: not a readable WAV file"):
        error_mix = MultimodalMixture([(1.0, ShardSource(shard, shuffle_shards=False))], 48, 0, tokenizer=tok,
                                      image_cfg=_image_cfg(), on_bad_sample="error")
        [error_mix.next_sequence() for _ in range(4)]


def test_media_the_run_cannot_use_are_counted_bad_samples(tmp_path, tok):
    writer = ShardWriter(tmp_path / "m", 100, tokenizer=tok)
    writer.write("clip", {"kind": "clip", "frames": [0, 1], "caption": "c"}, [("png", _png((9, 9, 9)))] * 2)
    writer.write("beep", {"kind": "audio", "audio": 0, "caption": "b"}, [("wav", _wav(_tone(500, 0.5)))])
    writer.write("pic", {"kind": "caption", "image": 0, "caption": "p"}, [("png", _png((1, 2, 3)))])
    writer.close()
    mix = MultimodalMixture([(1.0, ShardSource(str(tmp_path / "m"), shuffle_shards=False))], 32, 0, tokenizer=tok,
                            image_cfg=_image_cfg(audio=None, tubelets=False))
    [mix.next_sequence() for _ in range(3)]
    reasons = {key: reason for _, key, reason in mix.bad.records}
    assert reasons == {"clip": "clip: video clips need vision.patch=tubelet",
                       "beep": "audio: audio inputs are off (audio.input=none)"}


def test_flac_without_soundfile_stops_with_one_line_naming_the_member(tmp_path, tok, monkeypatch):
    members = [("k.json", json.dumps({"kind": "audio", "audio": 0, "caption": "x"}).encode()),
               ("k.0.flac", b"fLaC not really")]
    path = tmp_path / "flac-000000.tar"
    with tarfile.open(path, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    monkeypatch.setitem(sys.modules, "soundfile", None)  # as if it were not installed
    with pytest.raises(DataError) as err:
        build_index(str(path), tok)
    assert str(err.value).startswith("k.0.flac: FLAC audio needs the soundfile package") and "\n" not in str(err.value)


def test_index_records_media_kinds_and_block_lengths(tmp_path, tok):
    writer = ShardWriter(tmp_path / "i", 100)
    writer.write("a", {"kind": "audio", "audio": 0, "caption": "beep"}, [("wav", _wav(_tone(500, 0.5)))])
    writer.write("c", {"kind": "clip", "frames": [0, 1], "caption": "c"}, [("png", _png((9, 9, 9)))] * 2)
    writer.write("p", {"kind": "caption", "image": 0, "caption": "p"}, [("png", _png((1, 2, 3)))])
    [shard] = writer.close()
    build_index(shard, tok)
    index = load_index(shard, tokenizer_fingerprint(tok), None)
    assert [BLOCK_KINDS[k] for k in index.img_kind] == ["audio", "clip", "image"]
    assert index.img_size[0].tolist() == [SR // 2, SR]  # audio: (samples, rate)
    layout = index.sample_layout(_image_cfg())
    assert layout.block_len.tolist() == [2 + 3, 2 + 4, 2 + 4]  # audio.queries 3; a 70 px crop 4


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wav_sample_widths_decode(width):
    values = np.array([0.0, 0.5, -0.5, 0.25, -0.75])
    waveform, rate = decode_audio(_wav(values, 8000, width), "x.wav", "audio 0", SR)
    assert rate == 8000 and waveform.shape == (5, 1)
    torch.testing.assert_close(waveform[:, 0], torch.tensor(values, dtype=torch.float32), atol=1 / 120, rtol=0)
    assert resample(waveform, 8000, SR).shape == (10, 1)


@pytest.mark.parametrize("meta,reason", [
    ({"kind": "clip", "frames": [0], "video": 0, "caption": "x"}, "needs exactly one of 'frames'"),
    ({"kind": "clip", "frames": [], "caption": "x"}, "clip 'frames' is not a non-empty list"),
    ({"kind": "clip", "frames": [0, 3], "caption": "x"}, "clip frame 1 image 3 is missing"),
    ({"kind": "clip", "video": 0}, "clip sample has no 'question'"),
    ({"kind": "audio", "caption": "x"}, "audio sample has no 'audio'"),
    ({"kind": "audio", "audio": "0", "caption": "x"}, "audio media index '0' is not an integer"),
    ({"kind": "audio", "audio": 0, "caption": "x", "sample_rate": -1}, "sample_rate -1 is not a positive integer"),
])
def test_schema_of_clip_and_audio(meta, reason):
    from aria_train.data.multimodal import BadSample, validate_sample

    with pytest.raises(BadSample, match=reason.replace("(", r"\(").replace("'", "'")):
        validate_sample(meta, {0: b"", 1: b""})
    assert validate_sample({"kind": "audio", "audio": 1, "question": "q", "answer": "a"}, {0: b"", 1: b""}) == "audio"
