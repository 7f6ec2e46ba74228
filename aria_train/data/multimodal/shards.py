"""WebDataset-style tar shards of multimodal samples (plain `tarfile`).

A shard `PREFIX-000000.tar` holds samples as consecutive members sharing a key:
`KEY.json` (the sample, schema.py) and `KEY.<i>.<ext>` (image i of the sample, any format PIL
reads: png, jpg, ...). Keys contain no "." or "/". Members are written with fixed metadata
(mtime 0, mode 0644, no owner), so the same samples give byte-identical shards.

Reading is sequential with a cursor (epoch, shard position, sample position in the shard) that a
resumed run seeks to by reading tar headers only. Damage is reported through BadSamples (skip
and count, or DataError): malformed JSON, a sample without JSON, a truncated member, a tar that
ends without its end-of-archive blocks (truncated: the samples before the damage are still
read), a file that is not a tar at all.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from aria_train.data.errors import DataError
from aria_train.data.multimodal.errors import BadSamples

_IMAGE_SUFFIX = re.compile(r"^(\d+)\.([A-Za-z0-9]+)$")
_BLOCK = tarfile.BLOCKSIZE


@dataclass
class RawSample:
    shard: str
    key: str
    meta: dict
    images: dict = field(default_factory=dict)  # index -> encoded bytes
    image_names: dict = field(default_factory=dict)  # index -> member name

    @property
    def where(self) -> str:
        return f"{self.shard}:{self.key}"


def _split_name(name: str) -> tuple[str, str]:
    """member name -> (key, suffix): key up to the first '.' of the base name (webdataset's rule)."""
    head, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, suffix if dot else ""


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
    """

    def __init__(self, out_dir: Union[str, os.PathLike], samples_per_shard: int = 1000, prefix: str = "shard"):
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


def _end_is_clean(tar: tarfile.TarFile) -> bool:
    """After the last member: is there an end-of-archive (zero) block where the next header
    would start? A truncated tar ends early or in the middle of a header."""
    fileobj = tar.fileobj
    fileobj.seek(tar.offset)
    block = fileobj.read(_BLOCK)
    return len(block) == _BLOCK and block.count(0) == _BLOCK


def read_shard(path: str, bad: Optional[BadSamples] = None, start: int = 0) -> Iterator[tuple[int, RawSample]]:
    """Yields (position, sample) for the good samples of one shard, position counting every key
    group (good or bad) from 0; groups before `start` are skipped reading headers only. Bad
    samples and damage are reported to `bad` (default: skip and count in a fresh BadSamples)."""
    bad = bad if bad is not None else BadSamples()
    path = str(path)
    try:
        tar = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError, EOFError) as err:
        bad.report(path, "", f"not a readable tar: {err}", kind="bad shard")
        return
    with tar:
        position, key, members = 0, None, []

        def groups():
            nonlocal key, members
            while True:
                try:
                    info = tar.next()
                except (tarfile.TarError, OSError, EOFError) as err:
                    if members:
                        yield key, members
                    bad.report(path, "", f"truncated or damaged tar after key {key}: {err}", kind="bad shard")
                    return
                if info is None:
                    if members:
                        yield key, members
                    if not _end_is_clean(tar):
                        reason = f"truncated tar after key {key}: no end-of-archive blocks"
                        bad.report(path, "", reason, kind="bad shard")
                    return
                if not info.isfile():
                    continue
                k, suffix = _split_name(info.name)
                if k != key and members:
                    yield key, members
                    members = []
                key = k
                members.append((suffix, info))

        for group_key, group in groups():
            pos = position
            position += 1
            if pos < start:
                continue
            try:
                sample = _load_group(tar, path, group_key, group)
            except _Truncated as err:
                bad.report(path, group_key, f"truncated member: {err}")
                return
            except _Bad as err:
                bad.report(path, group_key, str(err))
                continue
            yield pos, sample


class _Bad(Exception):
    pass


class _Truncated(Exception):
    pass


def _load_group(tar: tarfile.TarFile, path: str, key: str, group: list) -> RawSample:
    meta, images, names = None, {}, {}
    for suffix, info in group:
        is_json = suffix == "json"
        match = _IMAGE_SUFFIX.match(suffix)
        if not is_json and not match:
            continue  # other members (txt, ...) are ignored
        try:
            data = tar.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise _Truncated(f"{info.name}: {err}")
        if len(data) != info.size:
            raise _Truncated(f"{info.name}: {len(data)} of {info.size} bytes")
        if is_json:
            try:
                meta = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as err:
                raise _Bad(f"malformed JSON: {err}")
        else:
            index = int(match.group(1))
            if index in images:
                raise _Bad(f"image {index} stored twice")
            images[index], names[index] = data, info.name
    if meta is None:
        raise _Bad("no JSON member")
    return RawSample(shard=path, key=key, meta=meta, images=images, image_names=names)


def list_shards(shards: Union[str, os.PathLike, Sequence]) -> list[str]:
    """A directory (its *.tar, sorted), a glob pattern, a shard path, or a list of any of them."""
    if isinstance(shards, (str, os.PathLike)):
        text = str(shards)
        if os.path.isdir(text):
            found = sorted(glob.glob(os.path.join(text, "*.tar")))
        elif any(c in text for c in "*?["):
            found = sorted(glob.glob(text))
        else:
            found = [text]
        if not found:
            raise DataError(f"shards {text}: no .tar shard found")
        return found
    out = []
    for item in shards:
        out.extend(list_shards(item))
    if not out:
        raise DataError("shards: empty list")
    return out


class ShardSource:
    """An endless stream of good samples from shards, with a resumable cursor.

    Epoch e reads the shards in a seeded permutation (or in order with shuffle_shards=False) and
    each shard's samples in stored order (the builder shuffles samples when it writes them).
    cursor = {"epoch", "shard" (position in the epoch's order), "sample" (key group in the
    shard)} of the next sample to read.
    """

    def __init__(
        self,
        shards,
        name: Optional[str] = None,
        seed: int = 0,
        shuffle_shards: bool = True,
        bad: Optional[BadSamples] = None,
    ):
        self.paths = list_shards(shards)
        self.name = name or os.path.basename(os.path.dirname(self.paths[0]) or self.paths[0])
        self.seed = int(seed)
        self.shuffle_shards = shuffle_shards
        self.bad = bad if bad is not None else BadSamples()
        self.kind = "multimodal"
        self._cursor = {"epoch": 0, "shard": 0, "sample": 0}
        self._it = None

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle_shards:
            return list(range(len(self.paths)))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.paths)).tolist()

    def read(self) -> tuple[RawSample, dict]:
        """The next good sample and its own cursor (to re-read it: load_state_dict(cursor))."""
        empty_shards = 0
        while True:
            if self._it is None:
                c = self._cursor
                path = self.paths[self._order(c["epoch"])[c["shard"]]]
                self._it = read_shard(path, self.bad, start=c["sample"])
                self._found = False
            item = next(self._it, None)
            if item is not None:
                pos, sample = item
                self._found = True
                cursor = dict(self._cursor, sample=pos)
                self._cursor["sample"] = pos + 1
                return sample, cursor
            self._it = None
            empty_shards = 0 if self._found else empty_shards + 1
            if empty_shards > len(self.paths):
                raise DataError(
                    f"multimodal source {self.name}: no usable sample in any of its {len(self.paths)} shards"
                )
            c = self._cursor
            c["shard"], c["sample"] = c["shard"] + 1, 0
            if c["shard"] == len(self.paths):
                c["epoch"], c["shard"] = c["epoch"] + 1, 0

    def state_dict(self) -> dict:
        return dict(self._cursor)

    def load_state_dict(self, state: dict) -> None:
        try:
            cursor = {k: int(state[k]) for k in ("epoch", "shard", "sample")}
        except (KeyError, TypeError, ValueError):
            raise DataError(f"multimodal source {self.name} state {state!r}: expected epoch, shard, sample")
        if not 0 <= cursor["shard"] < len(self.paths) or cursor["sample"] < 0 or cursor["epoch"] < 0:
            raise DataError(f"multimodal source {self.name} state {cursor}: out of range for {len(self.paths)} shards")
        self._cursor = cursor
        self._it = None
