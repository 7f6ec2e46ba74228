"""The per-shard length index: what packing needs to know about every sample, without reading it.

Next to each shard (or JSON file) `UNIT`, the file `UNIT.mmidx` records, for every key group /
record in stored order:
- where its bytes are (tar members: suffix, offset, size; JSON records: the byte span);
- its layout (layouts.FORMATS) and whether it is usable: good, unreadable (skipped by its source
  without costing a mixture draw) or bad (schema, layout, unreadable image header: costs a draw),
  with the one-line reason;
- for a good sample, its text token count (without the EOD) and, per image block in token order,
  the text tokens before it in the sample and the image's size; and whether its pixels decode.
Token counts depend on the tokenizer and image-token counts on the image settings; the index
keeps the tokenizer-dependent counts (with the tokenizer's hash) and the image sizes, so one
index serves every resolution mode.

The file is two lines of JSON: a header (format, version, the unit's name and fingerprint, the
tokenizer hash, the image root of JSON units, the sample count) and the columns. It is written
under a temporary name and renamed. An index whose header does not match (another tokenizer, a
changed unit, an older version) is stale and is rebuilt, like a missing one: on first use, by
every rank for its share of the units (ensure_indexes), or ahead of time with
`python tools/build_mm_shards.py index SHARDS...`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from aria_train.data.errors import DataError

INDEX_SUFFIX = ".mmidx"
INDEX_FORMAT = "aria-train-mm-index"
INDEX_VERSION = 1  # bump when rendering, layout recognition or this file changes
GOOD, UNREADABLE, BAD = 0, 1, 2
_EDGE = 1 << 16  # bytes hashed at each end of a unit for its fingerprint


def index_path(unit: str) -> str:
    return str(unit) + INDEX_SUFFIX


def unit_fingerprint(unit: str) -> str:
    """Size plus a hash of the first and last 64 KiB: cheap, and changes when the file does
    (a copy keeps it, unlike a modification time)."""
    size = os.path.getsize(unit)
    digest = hashlib.sha256()
    with open(unit, "rb") as f:
        digest.update(f.read(_EDGE))
        if size > _EDGE:
            f.seek(max(_EDGE, size - _EDGE))
            digest.update(f.read(_EDGE))
    return f"{size}:{digest.hexdigest()[:32]}"


def tokenizer_fingerprint(tokenizer) -> str:
    return str(tokenizer.unique_identifiers["model_sha256"])


def expected_header(unit: str, tokenizer_hash: str, image_root: Optional[str]) -> dict:
    return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "unit": os.path.basename(unit),
            "fingerprint": unit_fingerprint(unit), "tokenizer": tokenizer_hash, "image_root": image_root}


def read_header(unit: str) -> Optional[dict]:
    try:
        with open(index_path(unit), "rb") as f:
            return json.loads(f.readline())
    except (OSError, ValueError):
        return None


def is_current(unit: str, tokenizer_hash: str, image_root: Optional[str]) -> bool:
    header = read_header(unit)
    if header is None:
        return False
    wanted = expected_header(unit, tokenizer_hash, image_root)
    return all(header.get(k) == v for k, v in wanted.items())


@dataclass
class UnitIndex:
    unit: str
    keys: Optional[list]  # tar keys; None for JSON units (key "#position")
    status: list  # [n]: GOOD | UNREADABLE | BAD
    reasons: list  # [n] "" when good
    formats: list  # [n] layout names ("" when unknown)
    pixel_errors: dict  # position -> reason: good samples whose pixels do not decode
    text_tokens: np.ndarray  # int64 [n]
    img_ptr: np.ndarray  # int64 [n+1]: sample i's image blocks are [img_ptr[i], img_ptr[i+1])
    img_before: np.ndarray  # int64 [m]: text tokens before the block, in its sample
    img_size: np.ndarray  # int64 [m, 2]: (width, height)
    loc_ptr: np.ndarray  # int64 [n+1]: sample i's byte ranges are [loc_ptr[i], loc_ptr[i+1])
    loc_name: list  # [r] tar member suffix ("" for a JSON record span)
    loc_start: np.ndarray  # int64 [r]
    loc_size: np.ndarray  # int64 [r]
    damage: str  # a damaged or unreadable unit ("" when whole)

    def __len__(self) -> int:
        return len(self.status)

    def key(self, i: int) -> str:
        return self.keys[i] if self.keys is not None else f"#{i}"

    def locations(self, i: int) -> list[tuple[str, int, int]]:
        lo, hi = int(self.loc_ptr[i]), int(self.loc_ptr[i + 1])
        return [(self.loc_name[j], int(self.loc_start[j]), int(self.loc_size[j])) for j in range(lo, hi)]

    def sample_layout(self, image_cfg) -> "SampleLayout":
        """Token lengths of every sample and image block under image_cfg (cached per config)."""
        last = self.__dict__.get("_last_layout")
        if last is not None and last[0] is image_cfg:  # the planner asks for one config, per sample
            return last[1]
        cache = self.__dict__.setdefault("_layouts", {})
        sig = (image_cfg.mode, image_cfg.crop_size, image_cfg.queries, image_cfg.tile_size, image_cfg.split,
               tuple(image_cfg.split_ratios), tuple(sorted(image_cfg.resolutions.items())))
        if sig not in cache:
            cache[sig] = SampleLayout.of(self, image_cfg)
        self._last_layout = (image_cfg, cache[sig])
        return cache[sig]


@dataclass
class SampleLayout:
    block_len: np.ndarray  # int64 [m]: 2 + crops * queries
    lengths: list  # [n] ints: text + image blocks (no EOD); a list: the planner reads one at a time

    @classmethod
    def of(cls, index: UnitIndex, image_cfg) -> "SampleLayout":
        if image_cfg.mode == "ultra-high":
            crops = np.asarray([image_cfg.num_crops(int(w), int(h)) for w, h in index.img_size], dtype=np.int64)
        else:
            crops = np.ones(len(index.img_size), dtype=np.int64)
        block_len = 2 + crops * int(image_cfg.queries)
        total = np.concatenate([[0], np.cumsum(block_len)])
        per_sample = total[index.img_ptr[1:]] - total[index.img_ptr[:-1]]
        return cls(block_len, (index.text_tokens + per_sample).astype(np.int64).tolist())

    def blocks(self, index: UnitIndex, i: int) -> tuple:
        """((start, end), ...) of sample i's image blocks in its tokens."""
        out, before_blocks = [], 0
        for k in range(int(index.img_ptr[i]), int(index.img_ptr[i + 1])):
            start = int(index.img_before[k]) + before_blocks
            out.append((start, start + int(self.block_len[k])))
            before_blocks += int(self.block_len[k])
        return tuple(out)


def save_index(unit: str, header: dict, columns: dict) -> None:
    path = index_path(unit)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(header, sort_keys=True) + "\n")
            f.write(json.dumps(columns, separators=(",", ":")) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise DataError(f"{unit}: cannot write its length index {path} ({err.strerror or err}); "
                        f"the folder must be writable")


def load_index(unit: str, tokenizer_hash: str, image_root: Optional[str]) -> UnitIndex:
    """The index of a unit; DataError when it is missing or stale."""
    path = index_path(unit)
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
            columns = json.loads(f.readline())
    except (OSError, ValueError) as err:
        raise DataError(f"{unit}: no usable length index {path} ({err}); "
                        f"build it with: python tools/build_mm_shards.py index {unit}")
    wanted = expected_header(unit, tokenizer_hash, image_root)
    stale = [k for k, v in wanted.items() if header.get(k) != v]
    if stale:
        raise DataError(f"{unit}: its length index {path} is stale ({', '.join(stale)} differ); "
                        f"rebuild it with: python tools/build_mm_shards.py index {unit}")
    return _from_columns(unit, columns)


def _from_columns(unit: str, c: dict) -> UnitIndex:
    def ints(name, shape=None):
        arr = np.asarray(c[name], dtype=np.int64)
        return arr.reshape(shape) if shape is not None else arr

    return UnitIndex(unit, c["keys"], list(c["status"]), c["reasons"], c["formats"],
                     {int(k): v for k, v in c["pixel_errors"].items()}, ints("text_tokens"), ints("img_ptr"),
                     ints("img_before"), ints("img_size", (-1, 2)), ints("loc_ptr"), c["loc_name"],
                     ints("loc_start"), ints("loc_size"), c["damage"])
