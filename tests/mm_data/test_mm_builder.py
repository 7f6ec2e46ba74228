"""JSONL (+ image folder) -> shards, and the command-line tool."""

import importlib.util
import json
from pathlib import Path

from PIL import Image

from aria_train.data.multimodal import read_shard
from aria_train.data.multimodal.builder import build_shards_from_jsonl

TOOL = Path(__file__).resolve().parents[2] / "tools" / "build_mm_shards.py"


def _tool():
    spec = importlib.util.spec_from_file_location("build_mm_shards", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jsonl_folder_to_shards(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "img" / "a.png")
    Image.new("RGB", (20, 30), (4, 5, 6)).save(tmp_path / "img" / "b.jpg")
    (tmp_path / "img" / "broken.png").write_bytes(b"nope")
    lines = [
        {"kind": "caption", "images": ["img/a.png"], "image": 0, "caption": "a", "key": "first"},
        {"kind": "interleaved", "images": ["img/a.png", str(tmp_path / "img" / "b.jpg")],
         "segments": [{"text": "x"}, {"image": 1}, {"image": 0}]},
        {"kind": "caption", "images": ["img/missing.png"], "image": 0, "caption": "gone"},
        {"kind": "caption", "images": ["img/broken.png"], "image": 0, "caption": "bad"},
        {"kind": "ocr_qa", "images": ["img/a.png"], "image": 0, "question": "q"},  # no answer
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\nnot json\n"
    (tmp_path / "s.jsonl").write_text(text)
    out = build_shards_from_jsonl(str(tmp_path / "s.jsonl"), str(tmp_path / "out"), samples_per_shard=1)
    assert out["samples"] == 2 and out["bad_samples"] == 4 and len(out["shards"]) == 2
    assert out["kinds"] == {"caption": 1, "interleaved": 1}
    samples = [s for p in out["shards"] for _, s in read_shard(p)]
    assert samples[0].key == "first" and samples[0].meta == {"kind": "caption", "image": 0, "caption": "a"}
    assert samples[1].key == "s000000001" and sorted(samples[1].image_names.values()) == [
        "s000000001.0.png", "s000000001.1.jpg"]
    assert samples[1].images[0] == (tmp_path / "img" / "a.png").read_bytes()


def test_tool_synthetic_and_inspect(tmp_path, capsys):
    tool = _tool()
    assert tool.main(["synthetic", "--out", str(tmp_path), "--num-samples", "6", "--samples-per-shard", "4"]) == 0
    assert len(list(tmp_path.glob("synthetic-*.tar"))) == 2
    capsys.readouterr()
    assert tool.main(["inspect", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 6 and report["bad_samples"] == 0
    assert tool.main(["jsonl", "--jsonl", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 1
