"""Stage 0's sample index: where each sample's image is, and its label or caption, per unit (a
tar shard or a JSON / JSONL file), so that every rank draws from the whole dataset and reads
only its own samples' image bytes.

Units are the folders, globs and files stage 2 reads (aria_train.data.multimodal.sources
.list_shards). A tar shard's members are grouped into samples as webdataset groups them
(layouts.py), and a sample is
    labelled     KEY.<image ext> + KEY.cls (the class index as text, webdataset's convention)
    image-text   any layout stage 2 reads that converts to a caption: KEY.jpg + KEY.txt, a
                 "caption"/"text" field in KEY.json, or ARIA's own {"kind": "caption"} + KEY.0.png
(a sample may be both). JSON / JSONL records: {"image": path, "caption": ...} (paths relative to
the file's folder). Anything else (conversations, interleaved documents, a missing image) is an
unusable sample with its reason.

Next to each unit `UNIT.encidx` (two JSON lines: header with the unit's fingerprint, then the
columns) is written on first use: each rank builds its share of the missing or stale ones
(unit i on rank i mod W), then all ranks load them all (small: no pixels).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Optional

from aria_train.data.errors import DataError
from aria_train.data.multimodal.errors import BadSample, one_line
from aria_train.data.multimodal.index import unit_fingerprint
from aria_train.data.multimodal.json_records import is_json_unit, record_spans
from aria_train.data.multimodal.layouts import convert, member_type, sample_from_members
from aria_train.data.multimodal.tar_io import open_tar, tar_groups

INDEX_SUFFIX = ".encidx"
INDEX_FORMAT = "aria-train-encoder-index"
INDEX_VERSION = 1


@dataclass
class UnitSamples:
    """The samples of one unit, in stored order."""

    unit: str
    keys: list  # [n] sample keys ("#position" for JSON records)
    image: list  # [n] (member name, offset, size) in a tar, or (path, -1, -1); None when missing
    label: list  # [n] class index, or None
    text: list  # [n] caption, or None
    reason: list  # [n] why the sample is unusable for any objective ("" when it has an image)

    def __len__(self) -> int:
        return len(self.keys)


def index_path(unit: str) -> str:
    return str(unit) + INDEX_SUFFIX


def _header(unit: str) -> dict:
    return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "unit": os.path.basename(unit),
            "fingerprint": unit_fingerprint(unit)}


def _read(unit: str) -> Optional[tuple[dict, dict]]:
    try:
        with open(index_path(unit), "rb") as f:
            return json.loads(f.readline()), json.loads(f.readline())
    except (OSError, ValueError):
        return None


def load_unit(unit: str) -> UnitSamples:
    """The unit's samples from its index; DataError when the index is missing or stale."""
    read = _read(unit)
    if read is None or read[0] != _header(unit):
        raise DataError(f"{unit}: no current stage-0 sample index {index_path(unit)} (the folder must be writable, "
                        f"or index it ahead with the same version)")
    c = read[1]
    return UnitSamples(unit, c["keys"], [tuple(i) if i else None for i in c["image"]], c["label"], c["text"],
                       c["reason"])


def build_unit(unit: str) -> UnitSamples:
    """Reads a unit's labels and captions (never its image bytes) and writes UNIT.encidx."""
    header = _header(unit)  # before reading: a unit changed mid-way is stale
    samples = _json_samples(unit) if is_json_unit(unit) else _tar_samples(unit)
    columns = {"keys": samples.keys, "image": samples.image, "label": samples.label, "text": samples.text,
               "reason": samples.reason}
    path, tmp = index_path(unit), f"{index_path(unit)}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(header, sort_keys=True) + "\n" + json.dumps(columns, separators=(",", ":")) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise DataError(f"{unit}: cannot write its stage-0 sample index {path} ({err.strerror or err})")
    return samples


def ensure_units(units: list, rank: int = 0, world: int = 1,
                 gather: Optional[Callable[[str], list]] = None) -> None:
    """Builds this rank's share of the missing or stale indexes; then every rank learns whether
    all succeeded (gather: every rank's message, and a barrier) and raises the same line if not."""
    failure = ""
    try:
        for i, unit in enumerate(units):
            if i % world == rank and (_read(unit) or ({},))[0] != _header(unit):
                build_unit(unit)
    except (DataError, OSError) as err:
        failure = str(err)
    failures = [f for f in (gather(failure) if gather is not None else [failure]) if f]
    if failures:
        raise DataError(failures[0])


class _Columns:
    def __init__(self, unit: str):
        self.samples = UnitSamples(unit, [], [], [], [], [])

    def add(self, key: str, image=None, label=None, text=None, reason: str = "") -> None:
        s = self.samples
        s.keys.append(key)
        s.image.append(list(image) if image else None)
        s.label.append(label)
        s.text.append(text)
        s.reason.append(one_line(reason) if reason else ("" if image else "no image"))


def _label(data: bytes) -> int:
    try:
        value = int(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        raise BadSample(f"cls member is not a class index: {data[:40]!r}")
    if value < 0:
        raise BadSample(f"cls member is a negative class index {value}")
    return value


def _tar_samples(unit: str) -> UnitSamples:
    cols = _Columns(unit)
    damage = lambda reason: cols.add("", reason=f"damaged shard: {reason}")  # noqa: E731
    tar = open_tar(unit, damage)
    if tar is None:
        return cols.samples
    with tar:
        for key, group in tar_groups(tar, damage):
            try:
                cols.add(key, *_tar_sample(tar, unit, key, group))
            except BadSample as err:
                cols.add(key, reason=str(err))
    return cols.samples


def _tar_sample(tar, unit: str, key: str, group: list) -> tuple:
    """(image (name, offset, size), label, caption) of one key group; only small members are read."""
    where = {info.name: (info.name, info.offset_data, info.size) for _, info in group}
    label, members = None, []
    for suffix, info in group:
        sub, ext = member_type(suffix)
        if ext == "cls":
            label = _label(tar.extractfile(info).read())
        elif ext in ("json", "txt"):
            members.append((suffix, tar.extractfile(info).read(), info.name))
        else:  # an image (or anything else): stage 2's layouts say; its bytes are not needed here
            members.append((suffix, b"", info.name))
    images = [(suffix, name) for suffix, _, name in members if member_type(suffix)[1] not in ("json", "txt")]
    if not any(member_type(s)[1] in ("json", "txt") for s, _, _ in members):  # KEY.jpg + KEY.cls alone
        if len(images) != 1:
            raise BadSample(f"{len(images)} image members and no json or txt member (expected one image)")
        return where[images[0][1]], label, None
    raw = sample_from_members(unit, key, members)
    if raw.meta.get("kind") != "caption":
        if label is not None and raw.images:
            return where[raw.image_names[min(raw.images)]], label, None
        raise BadSample(f"a {raw.fmt} sample ({raw.meta.get('kind')}), not an image with a caption or class")
    index = raw.meta.get("image", 0)
    if index not in raw.image_names:
        raise BadSample(f"caption sample names image {index}, which it lacks")
    return where[raw.image_names[index]], label, str(raw.meta.get("caption", "")).strip()


def _json_samples(unit: str) -> UnitSamples:
    cols = _Columns(unit)
    root = os.path.dirname(os.path.abspath(unit))
    with open(unit, "rb") as f:
        for position, (start, end) in enumerate(record_spans(unit)):
            f.seek(start)
            key = f"#{position}"
            try:
                record = json.loads(f.read(end - start).decode("utf-8"))
                converted = convert(record, None, None)
                if converted.meta.get("kind") != "caption" or not converted.refs:
                    raise BadSample(f"a {converted.fmt} record, not an image with a caption")
                ref = converted.refs[converted.meta.get("image", 0)]
                if not isinstance(ref, str) or ref.startswith(("http://", "https://", "data:")):
                    raise BadSample(f"image {str(ref)[:60]!r}: stage 0 reads image files only")
                path = ref if os.path.isabs(ref) else os.path.join(root, ref)
                cols.add(key, (path, -1, -1), None, str(converted.meta["caption"]).strip())
            except (UnicodeDecodeError, ValueError, BadSample) as err:
                cols.add(key, reason=str(err))
    return cols.samples
