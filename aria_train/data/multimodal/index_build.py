"""Building length indexes (index.py): read every sample of a unit once, render its tokens,
read its image headers and decode its pixels, and write what packing needs.

ensure_indexes() is what a run calls first: every rank builds the missing or stale indexes of its
share of the units (unit i on rank i mod W), then the ranks exchange how it went (a barrier too),
so building scales with the ranks and a failure on any rank stops every rank with the same line.
Bad samples found here are not reported one by one: the index records them and the
training stream reports each as it reaches it.
"""

from __future__ import annotations

import io
import logging
from typing import Callable, Optional, Sequence

from aria_train.data.errors import DataError
from aria_train.data.multimodal.errors import BadSample, one_line
from aria_train.data.multimodal.index import (
    BAD,
    GOOD,
    INDEX_VERSION,
    UNREADABLE,
    expected_header,
    is_current,
    save_index,
    tokenizer_fingerprint,
)
from aria_train.data.multimodal.json_records import (ImageFolder, default_image_root, is_json_unit, read_record,
                                                     record_spans)
from aria_train.data.multimodal.layouts import ReadError
from aria_train.data.multimodal.tar_io import _Truncated, group_sample, open_tar, tar_groups

LOG = logging.getLogger("aria_train.data.multimodal")


class _Columns:
    def __init__(self, keyed: bool):
        self.c = {"keys": [] if keyed else None, "status": [], "reasons": [], "formats": [], "pixel_errors": {},
                  "text_tokens": [], "img_ptr": [0], "img_before": [], "img_size": [], "loc_ptr": [0],
                  "loc_name": [], "loc_start": [], "loc_size": [], "damage": ""}

    def add(self, key: str, locations: list, status: int, reason: str = "", fmt: str = "", rendered=None,
            eod: int = 0, pixel_error: str = "") -> None:
        c = self.c
        if c["keys"] is not None:
            c["keys"].append(key)
        c["status"].append(status)
        c["reasons"].append(one_line(reason) if reason else "")
        c["formats"].append(fmt)
        if pixel_error:
            c["pixel_errors"][str(len(c["status"]) - 1)] = one_line(pixel_error)
        text, blocks = 0, 0
        if rendered is not None:
            for img in rendered.images:
                c["img_before"].append(img.start - blocks)
                c["img_size"].extend([int(img.size[0]), int(img.size[1])])
                blocks += img.end - img.start
            text = len(rendered.tokens) - blocks - eod
        c["text_tokens"].append(text)
        c["img_ptr"].append(len(c["img_before"]))
        for name, start, size in locations:
            c["loc_name"].append(name)
            c["loc_start"].append(int(start))
            c["loc_size"].append(int(size))
        c["loc_ptr"].append(len(c["loc_name"]))


def _pixel_error(rendered) -> str:
    """The first image of a planned sample whose pixels do not decode ("" when all do)."""
    from PIL import Image

    done = set()
    for img in rendered.images:
        if img.index in done:
            continue
        done.add(img.index)
        try:
            with Image.open(io.BytesIO(img.data)) as opened:
                opened.load()
                opened.convert("RGB")
        except Exception as err:  # PIL raises many types for bad data
            return f"image {img.index}: decode failed: {one_line(err) or type(err).__name__}"
    return ""


def _index_one(cols: _Columns, renderer, key: str, locations: list, load: Callable) -> None:
    try:
        raw = load()
    except ReadError as err:
        cols.add(key, locations, UNREADABLE, str(err))
        return
    except BadSample as err:  # a layout that cannot work (placeholder counts, ...)
        cols.add(key, locations, BAD, str(err))
        return
    try:
        rendered = renderer.plan(raw)
    except BadSample as err:
        cols.add(key, locations, BAD, str(err), raw.fmt)
        return
    eod = 1 if renderer.add_eod else 0
    cols.add(key, locations, GOOD, "", raw.fmt, rendered, eod, _pixel_error(rendered))


def _tar_columns(unit: str, renderer) -> dict:
    cols = _Columns(keyed=True)

    def damage(reason: str) -> None:
        cols.c["damage"] = one_line(reason)

    tar = open_tar(unit, damage)
    if tar is None:
        return cols.c
    with tar:
        for key, group in tar_groups(tar, damage):
            locations = [(suffix, info.offset_data, info.size) for suffix, info in group]
            try:
                _index_one(cols, renderer, key, locations, lambda: group_sample(tar, unit, key, group))
            except _Truncated as err:  # nothing after a truncated member can be read
                cols.add(key, locations, UNREADABLE, f"truncated member: {err}")
                cols.c["damage"] = one_line(f"truncated member in key {key}")
                break
    return cols.c


def _json_columns(unit: str, renderer, image_root: str) -> dict:
    cols = _Columns(keyed=False)
    images = ImageFolder(image_root)
    with open(unit, "rb") as f:
        for position, span in enumerate(record_spans(unit)):
            load = lambda: read_record(unit, span, position, images, f)  # noqa: E731
            _index_one(cols, renderer, f"#{position}", [("", span[0], span[1] - span[0])], load)
    return cols.c


def build_index(unit: str, tokenizer, image_root: Optional[str] = None) -> dict:
    """Reads every sample of a unit and writes UNIT.mmidx; returns a summary."""
    from aria_train.data.multimodal.render import ImageConfig, SampleRenderer

    renderer = SampleRenderer(tokenizer, ImageConfig())  # any image settings: sizes are stored
    root = default_image_root(unit, image_root) if is_json_unit(unit) else None
    header = expected_header(unit, tokenizer_fingerprint(tokenizer), root)  # before reading: a change mid-way is stale
    columns = _json_columns(unit, renderer, root) if is_json_unit(unit) else _tar_columns(unit, renderer)
    header["samples"] = len(columns["status"])
    save_index(unit, header, columns)
    status = columns["status"]
    return {"unit": unit, "samples": len(status), "good": status.count(GOOD), "version": INDEX_VERSION,
            "pixel_errors": len(columns["pixel_errors"]), "damage": columns["damage"]}


def index_job(job: tuple) -> dict:
    """build_index for a worker process: (unit, tokenizer model, tokenizer type, image root)."""
    from aria_train.data.tokenizer import load_tokenizer

    unit, tokenizer_model, tokenizer_type, image_root = job
    return build_index(unit, load_tokenizer(tokenizer_model, tokenizer_type), image_root)


def image_root_of(unit: str, image_root: Optional[str]) -> Optional[str]:
    return default_image_root(unit, image_root) if is_json_unit(unit) else None


def ensure_indexes(units: Sequence[str], tokenizer, image_root: Optional[str] = None, rank: int = 0,
                   world: int = 1, gather: Optional[Callable[[str], list]] = None,
                   logger: Optional[logging.Logger] = None) -> int:
    """Checks this rank's share of the units (unit i when i mod world == rank) and builds the
    missing or stale indexes, then learns from the other ranks (gather(message) -> every rank's
    message; it is also the barrier) whether all succeeded: every rank raises the same DataError
    line when any rank failed. A rank never reads the other ranks' units here (each index is
    checked again, against its unit, when training first uses it). Returns how many it built."""
    logger = logger or LOG
    tok_hash = tokenizer_fingerprint(tokenizer)
    built, failure = 0, ""
    try:
        for i, unit in enumerate(units):
            if i % world == rank and not is_current(unit, tok_hash, image_root_of(unit, image_root)):
                summary = build_index(unit, tokenizer, image_root)
                built += 1
                logger.info(f"data: indexed {unit}: {summary['good']} of {summary['samples']} samples usable")
    except DataError as err:
        failure = str(err)
    failures = [f for f in (gather(failure) if gather is not None else [failure]) if f]
    if failures:
        raise DataError(failures[0])
    return built
