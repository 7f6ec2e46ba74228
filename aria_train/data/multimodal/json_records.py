"""JSON and JSONL files of records (LLaVA conversations, messages, OBELICS documents, captions,
ARIA's own kinds with "images" paths) used as they are, with the images in a folder.

A `.jsonl` file holds one record per line (blank lines skipped); a `.json` file holds an array of
records (LLaVA's llava_v1_5_mix665k.json) or one record. Image paths are relative to the image
root (default: the file's folder); absolute paths are used as they are; `data:image/...;base64,`
URLs are decoded; http(s) URLs are refused (download them first, e.g. with img2dataset).

Each record is located by its byte span in the file, so a rank reads (and parses) only its own
records: spans come from the length index, or from one scan of the file.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Optional

from aria_train.data.errors import DataError
from aria_train.data.multimodal.layouts import RawSample, ReadError, sample_from_record

JSON_SUFFIXES = (".json", ".jsonl")


def is_json_unit(path: str) -> bool:
    return str(path).lower().endswith(JSON_SUFFIXES)


def record_spans(path: str) -> list[tuple[int, int]]:
    """(start, end) byte offsets of the records of a JSON / JSONL file."""
    data = Path(path).read_bytes()
    if str(path).lower().endswith(".jsonl"):
        spans, start = [], 0
        while start < len(data):
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end
            if data[start:end].strip():
                spans.append((start, end))
            start = end + 1
        return spans
    return _array_spans(path, data)


def _array_spans(path: str, data: bytes) -> list[tuple[int, int]]:
    """Spans of the records of a JSON array (or of a single JSON object) as byte offsets."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 ({err})")
    ascii_only = data.isascii()
    byte_pos, char_pos = 0, 0

    def to_bytes(index: int) -> int:  # character offset -> byte offset, walking forward only
        nonlocal byte_pos, char_pos
        if ascii_only:
            return index
        byte_pos += len(text[char_pos:index].encode("utf-8"))
        char_pos = index
        return byte_pos

    decoder, spans = json.JSONDecoder(), []
    pos = _skip(text, 0)
    if pos < len(text) and text[pos] != "[":
        return [(to_bytes(pos), to_bytes(len(text.rstrip())))]
    pos = _skip(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        try:
            _, end = decoder.raw_decode(text, pos)
        except ValueError as err:
            raise DataError(f"{path}: malformed JSON array at character {pos}: {err}")
        spans.append((to_bytes(pos), to_bytes(end)))
        pos = _skip(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip(text, pos + 1)
    return spans


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


class ImageFolder:
    """Reads the images JSON records name, relative to a root folder."""

    def __init__(self, root: str):
        self.root = Path(root)

    def __call__(self, ref: str) -> bytes:
        if ref.startswith("data:"):
            head, _, payload = ref.partition(",")
            if not head.endswith(";base64"):
                raise ReadError("image data URL is not base64")
            try:
                return base64.b64decode(payload, validate=True)
            except ValueError as err:
                raise ReadError(f"image data URL: {err}")
        if ref.startswith(("http://", "https://")):
            raise ReadError(f"image {ref[:80]}: remote URLs are not fetched (download the images first)")
        path = Path(ref) if os.path.isabs(ref) else self.root / ref
        try:
            return path.read_bytes()
        except OSError as err:
            raise ReadError(f"image {path}: {err.strerror or err}")


def read_record(path: str, span: tuple[int, int], position: int, images: ImageFolder,
                file=None) -> RawSample:
    """The record at `span` of a JSON(L) file -> RawSample (key "#position")."""
    start, end = span
    if file is None:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
    else:
        file.seek(start)
        data = file.read(end - start)
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ReadError(f"malformed JSON: {err}")
    return sample_from_record(path, f"#{position}", record, images)


def default_image_root(path: str, image_root: Optional[str]) -> str:
    return str(Path(image_root) if image_root else Path(path).resolve().parent)
