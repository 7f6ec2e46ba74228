"""Build shards from a JSONL description of samples.

Each line is one sample: its JSON (schema.py) plus "images", a list of image file paths (image i
of the sample is images[i]; relative paths are relative to image_root, default the JSONL file's
folder), and optionally "key" (default: the line number, "s000000012"). So a folder of images
with a JSONL next to it, or a JSONL of absolute image paths, both work:

    {"kind": "caption", "images": ["cat.jpg"], "image": 0, "caption": "a cat on a mat"}
    {"kind": "interleaved", "images": ["a.png", "b.png"], "segments": [{"text": "..."}, {"image": 0}, ...]}

Lines that are not JSON, break their kind's schema, or name a missing or unreadable image are
skipped and counted (one log line each) or stop the build (on_bad_sample="error"). With a seed,
samples are shuffled before they are written (shard readers keep the stored order).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from aria_train.data.errors import DataError
from aria_train.data.multimodal.errors import BadSample, BadSamples
from aria_train.data.multimodal.schema import validate_sample
from aria_train.data.multimodal.shards import ShardWriter


def build_shards_from_jsonl(
    jsonl: str,
    out_dir: str,
    samples_per_shard: int = 1000,
    image_root: Optional[str] = None,
    seed: Optional[int] = None,
    on_bad_sample: str = "skip",
    prefix: str = "shard",
    check_images: bool = True,
    tokenizer=None,
) -> dict:
    """-> {"shards": [...], "samples": n, "bad_samples": n, "kinds": {kind: n}}; each shard's
    length index is written for `tokenizer` (default: the demo tokenizer)."""
    path = Path(jsonl)
    if not path.is_file():
        raise DataError(f"jsonl {jsonl}: file not found")
    root = Path(image_root) if image_root else path.parent
    bad = BadSamples(on_bad_sample)
    lines = path.read_text(encoding="utf-8").splitlines()
    order = list(range(len(lines)))
    if seed is not None:
        order = np.random.default_rng(int(seed)).permutation(len(lines)).tolist()
    kinds: dict = {}
    if tokenizer is None:
        from aria_train.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer("")
    with ShardWriter(out_dir, samples_per_shard, prefix=prefix, tokenizer=tokenizer) as writer:
        for n in order:
            line = lines[n].strip()
            if not line:
                continue
            key = f"s{n:09d}"
            try:
                key, meta, kind, images = _sample_of_line(line, key, root, check_images)
                writer.write(key, meta, images)
                kinds[kind] = kinds.get(kind, 0) + 1
            except BadSample as err:
                bad.report(f"{jsonl}:{n + 1}", key, str(err))
            except DataError as err:  # duplicate key and such
                bad.report(f"{jsonl}:{n + 1}", key, str(err))
    return {"shards": writer.shards, "samples": writer.num_samples, "bad_samples": bad.count, "kinds": kinds}


def _sample_of_line(line: str, key: str, root: Path, check_images: bool) -> tuple:
    """One JSONL line -> (key, sample JSON, kind, [(ext, bytes)]); BadSample when it cannot be."""
    from PIL import Image

    try:
        meta = json.loads(line)
    except ValueError as err:
        raise BadSample(f"malformed JSON: {err}")
    if not isinstance(meta, dict):
        raise BadSample("the line is not a JSON object")
    key = str(meta.pop("key", key))
    if not key or "." in key or "/" in key:
        raise BadSample(f"key {key!r} has '.' or '/'")
    paths = meta.pop("images", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise BadSample("'images' is not a list of paths")
    kind = validate_sample(meta, set(range(len(paths))))
    images = []
    for i, p in enumerate(paths):
        file = Path(p) if os.path.isabs(p) else root / p
        if not file.is_file():
            raise BadSample(f"image {i}: {file} not found")
        data = file.read_bytes()
        if check_images:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.verify()
            except Exception as err:
                raise BadSample(f"image {i}: {file.name}: {err}")
        images.append((file.suffix.lstrip(".").lower() or "bin", data))
    return key, meta, kind, images
