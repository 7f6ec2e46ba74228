"""WebDataset-style tar shards of multimodal samples in ARIA's own layout (plain `tarfile`).

A shard `PREFIX-000000.tar` holds samples as consecutive members sharing a key: `KEY.json` (the
sample, schema.py) and `KEY.<i>.<ext>` (image i of the sample, any format PIL reads: png, jpg,
...). Keys contain no "." or "/". Members are written with fixed metadata (mtime 0, mode 0644, no
owner), so the same samples give byte-identical shards. Given a tokenizer, the writer also writes
each shard's length index (index.py) once the shard is complete.

Reading (any of the layouts in layouts.py) is in tar_io.py (read_shard) and sources.py
(ShardSource, list_shards); they are re-exported here.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Optional, Sequence, Union

from aria_train.data.errors import DataError
from aria_train.data.multimodal.layouts import RawSample
from aria_train.data.multimodal.sources import ShardSource, list_shards
from aria_train.data.multimodal.tar_io import read_shard

__all__ = ["RawSample", "ShardSource", "ShardWriter", "list_shards", "read_shard"]


def _encode_image(image) -> tuple[str, bytes]:
    """PIL image -> ("png", bytes); (ext, bytes) as is; a path -> (its suffix, its bytes)."""
    if isinstance(image, tuple) and len(image) == 2:
        ext, data = image
        return str(ext).lstrip(".").lower(), bytes(data)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        ext = path.suffix.lstrip(".").lower()
        if not ext:
            raise DataError(f"image {path}: no file extension to name its format")
        return ext, path.read_bytes()
    if hasattr(image, "save"):  # PIL image
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return "png", buf.getvalue()
    raise DataError(f"image of type {type(image).__name__}: expected a PIL image, (ext, bytes) or a path")


class ShardWriter:
    """Writes samples into shards of `samples_per_shard` samples each.

    with ShardWriter("out/", 1000) as w:
        w.write("key0", {"kind": "caption", "image": 0, "caption": "..."}, [pil_image])
    w.shards  # the shard paths written

    A shard is written as NAME.tar.tmp and renamed when complete, so readers never see half a shard.
    With a tokenizer, each complete shard's length index NAME.tar.mmidx is written next to it.
    """

    def __init__(self, out_dir: Union[str, os.PathLike], samples_per_shard: int = 1000, prefix: str = "shard",
                 tokenizer=None):
        if samples_per_shard < 1:
            raise DataError(f"samples_per_shard {samples_per_shard}: must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.prefix = prefix
        self.shards: list[str] = []
        self.num_samples = 0
        self._tar: Optional[tarfile.TarFile] = None
        self._in_shard = 0
        self._keys: set = set()
        self.tokenizer = tokenizer

    def _open(self) -> None:
        path = self.out_dir / f"{self.prefix}-{len(self.shards):06d}.tar"
        self._path = path
        self._tar = tarfile.open(str(path) + ".tmp", "w", format=tarfile.USTAR_FORMAT)
        self._in_shard = 0

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        os.replace(str(self._path) + ".tmp", self._path)
        self.shards.append(str(self._path))
        self._tar = None
        if self.tokenizer is not None:
            from aria_train.data.multimodal.index_build import build_index

            build_index(str(self._path), self.tokenizer)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, key: str, meta: dict, images: Sequence = ()) -> None:
        """One sample: its JSON object and its images (PIL images, (ext, bytes) pairs or paths),
        image i stored as KEY.i.EXT."""
        if not key or "." in key or "/" in key or key != key.strip():
            raise DataError(f"sample key {key!r}: must be non-empty, without '.', '/' or surrounding spaces")
        if key in self._keys:
            raise DataError(f"sample key {key!r}: written twice")
        if not isinstance(meta, dict):
            raise DataError(f"sample {key}: the JSON must be an object")
        encoded = [_encode_image(img) for img in images]
        if self._tar is None:
            self._open()
        self._keys.add(key)
        self._add(f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        for i, (ext, data) in enumerate(encoded):
            self._add(f"{key}.{i}.{ext}", data)
        self._in_shard += 1
        self.num_samples += 1
        if self._in_shard >= self.samples_per_shard:
            self._finish()

    def close(self) -> list[str]:
        self._finish()
        return self.shards

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:  # leave no half-written shard behind
            self._tar.close()
            os.unlink(str(self._path) + ".tmp")
            self._tar = None


