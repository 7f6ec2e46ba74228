"""Bad multimodal samples in the logs: one line each (shard:key and reason, no object reprs), the
first 10 only, then a summary line per log interval; logged once per run, not once per rank or
per validation pass. `build_mm_shards.py inspect` decodes every image and counts the bad ones."""

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from aria_train.data.multimodal import BadSamples, MultimodalMixture, ShardSource

ROOT = Path(__file__).resolve().parents[2]


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _shard(path: Path, count: int, corrupt: dict) -> str:
    """`count` caption samples s000..; corrupt maps an index to the bytes of its image."""
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            for name, data in ((f"s{i:03d}.json", json.dumps({"kind": "caption", "image": 0,
                                                               "caption": f"picture {i}"}).encode()),
                               (f"s{i:03d}.0.png", corrupt.get(i, _png(i)))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


CORRUPT = {3: b"not an image", 7: b"\x89PNG garbage", 11: b"", 15: _png(15)[:300], 19: _png(19)[:500],
           23: b"GIF89a broken"}  # 4 unreadable headers + 2 that only fail to decode (truncated pixels)


def test_one_line_per_bad_sample_with_shard_key_and_reason(tmp_path, renderer, caplog):
    shard = _shard(tmp_path / "bad-000000.tar", 30, CORRUPT)
    mix = MultimodalMixture([(1.0, ShardSource(shard))], 64, 0, renderer=renderer)
    with caplog.at_level(logging.WARNING, logger="aria_train.data.multimodal"):
        for _ in range(40):
            mix.next_sequence()
    lines = [r.getMessage() for r in caplog.records]
    keys = sorted(line.split(":")[1].split()[0] for line in lines)
    assert keys == ["s003", "s007", "s011", "s015", "s019", "s023"]
    assert all(line.startswith(f"bad sample {shard}:s0") and " skipped: image 0: " in line for line in lines)
    assert not any("0x" in line or "object at" in line for line in lines)


def test_rate_limited_to_a_summary_after_the_first_ten(caplog):
    bad = BadSamples(log_first=10)
    with caplog.at_level(logging.WARNING, logger="aria_train.data.multimodal"):
        for i in range(25):
            bad.report("s.tar", f"k{i}", "image 0: cannot identify image file <_io.BytesIO object at 0x7f00aa>")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10
    assert lines[0] == "bad sample s.tar:k0 skipped: image 0: cannot identify image file"
    assert lines[-1].endswith("(later ones are summarised)")
    assert bad.summary() == "bad samples: 15 more skipped, 25 in all (most frequent: image 0 x25)"
    assert bad.summary() is None
    bad.report("s.tar", "k25", "malformed JSON: Expecting value")
    assert bad.summary() == "bad samples: 1 more skipped, 26 in all (most frequent: image 0 x25, malformed JSON x1)"


def test_other_ranks_log_only_what_they_alone_see(caplog):
    bad = BadSamples(log_shared=False)  # a rank other than 0
    with caplog.at_level(logging.WARNING, logger="aria_train.data.multimodal"):
        bad.report("s.tar", "k1", "image 0: cannot identify image file")  # every rank sees headers
        bad.report("s.tar", "k2", "image 0: decode failed: truncated", shared=False)  # only this rank decodes
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad sample s.tar:k2 skipped: image 0: decode failed: truncated"]
    assert bad.count == 2 and bad.summary() is None


def test_two_ranks_log_each_bad_sample_once(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "bad-000000.tar", 30, CORRUPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "launch/run.py"), "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch/pretrain.py"), "--stage", "2", "--train-iters", "4", "--seq-length", "64",
           "--set", "train.micro_batch_size=2", "--global-batch-size", "8", "--set", "train.eval_interval=2",
           "--set", "train.eval_iters=2", "--set", f"data.mm_data_path=[1.0, '{shards}']",
           "--set", "data.language_weight=0.0", "--set", "checkpoint.init_from=", "--save", "",
           "--log-dir", tmp_path / "log"]
    result = subprocess.run(list(map(str, cmd)), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if " skipped: " in line]
    keys = [line.split(":")[1].split()[0] for line in lines]
    # Headers every rank reads (and reads again in the next epoch and in validation): logged once,
    # by rank 0. Pixels that only fail to decode: logged by the rank that decodes them.
    assert sorted(key for key in keys if key not in ("s015", "s019")) == ["s003", "s007", "s011", "s023"]
    assert len(lines) <= 8 and not any("0x" in line for line in lines)


def test_inspect_decodes_images_and_counts_the_bad_ones(tmp_path):
    corrupt = {1: b"junk", 4: _png(4)[:300], 5: _png(5)[:400], 8: b"\x89PNG\r\n", 9: _png(9)[:250]}
    _shard(tmp_path / "s-000000.tar", 12, corrupt)
    result = subprocess.run([sys.executable, str(ROOT / "tools/build_mm_shards.py"), "inspect", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["samples"], report["images"], report["bad_images"], report["bad_samples"]) == (12, 12, 5, 5)
    assert report["kinds"] == {"caption": 12}
    assert len([line for line in result.stderr.splitlines() if " skipped: image 0: " in line]) == 5
