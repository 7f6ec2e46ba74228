"""The sample layouts users have, read as they are, and how each maps onto ARIA's own kinds.

Tar members are grouped into samples exactly as the `webdataset` library groups them
(webdataset.tariterators): regular files only; names matching `__*__` (webdataset's metadata) are
skipped; a member's key is its path up to the first "." of its base name and the rest is its
suffix, lower-cased (`a/b.c/x.0.JPG` -> key `a/b.c/x`, suffix `0.jpg`); a name without such a
split (no "." in the base name, or a base name starting with ".") is skipped; consecutive
members with the same key form one sample, and a suffix seen twice in a sample is an error.
So a sample written by webdataset's TarWriter with `__key__` "img.001" has key "img" and
suffixes "001.jpg", "001.txt": a member's type is the last extension of its suffix.

Layouts (format names as in `data.mm_formats`), each with the ARIA kind it becomes:

    aria      KEY.json {"kind": ...} + KEY.<i>.<ext> (image i)      -> its own kind (schema.py)
    caption   KEY.jpg|jpeg|png|webp + KEY.txt, or a "caption"/"text" field in KEY.json
              (img2dataset / LAION / CC shards; JSON records {"image": path, "caption": ...})
                                                                    -> caption
    llava     {"image": path | [paths], "conversations": [{"from": "human", "value":
              "<image>\\n..."}, {"from": "gpt", "value": "..."}]}     -> chat; each `<image>`
              becomes an image block at its place (none in the text: the images open the first
              user turn, LLaVA's convention)
    messages  {"messages": [{"role": ..., "content": str | [{"type": "text", "text": ...},
              {"type": "image"}]}], "images": [paths]}              -> chat; image parts take
              the images in order (a part may name its own: "image"/"path"/"url"/"image_url")
    obelics   {"texts": ["...", null, ...], "images": [null, path, ...]}  -> interleaved;
              consecutive texts are joined by a blank line ("\\n\\n"), the layout's paragraphs

In a shard, the images of a sample are its image members: by index for `KEY.<i>.<ext>`, else in
member order; the paths a record names are not looked up there. In JSON / JSONL files the paths
are relative to the image root (json_records.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from aria_train.data.config import MM_FORMATS as FORMATS  # noqa: F401  (the names data.mm_formats takes)
from aria_train.data.multimodal.errors import BadSample

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm"})
LLAVA_PLACEHOLDER = "<image>"
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_WDS_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_WDS_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


@dataclass
class RawSample:
    shard: str
    key: str
    meta: dict  # ARIA's sample JSON (schema.py), converted from the sample's layout
    images: dict = field(default_factory=dict)  # index -> encoded bytes
    image_names: dict = field(default_factory=dict)  # index -> member name or file path
    fmt: str = "aria"  # the layout it was read from (FORMATS)

    @property
    def where(self) -> str:
        return f"{self.shard}:{self.key}"


class ReadError(BadSample):
    """A sample that cannot be read at all (damaged member, malformed JSON, no usable member):
    skipped by its source without costing a draw of the mixture."""


def split_member_name(name: str) -> tuple[Optional[str], Optional[str]]:
    """Tar member name -> (key, lower-cased suffix), or (None, None) for a member webdataset
    skips (metadata or no key/suffix split)."""
    if _WDS_META.match(name):
        return None, None
    match = _WDS_KEY.match(name)
    if not match:
        return None, None
    return match.group(1), match.group(2).lower()


def member_type(suffix: str) -> tuple[str, str]:
    """suffix -> (sub-key, type): "0.png" -> ("0", "png"), "jpg" -> ("", "jpg")."""
    sub, _, ext = suffix.rpartition(".")
    return sub, ext


@dataclass
class Converted:
    fmt: str
    meta: dict  # ARIA sample JSON
    refs: Optional[list] = None  # image i of meta: a path / URL (JSON records); None = members


def sample_from_members(shard: str, key: str, members: list) -> RawSample:
    """A shard's key group [(suffix, bytes, member name)] -> RawSample; ReadError when nothing
    usable can be made of it, BadSample when its layout is broken."""
    meta, text, images = None, None, []
    for suffix, data, name in members:
        sub, ext = member_type(suffix)
        if ext == "json":
            if meta is not None:
                raise ReadError("two JSON members")
            try:
                meta = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as err:
                raise ReadError(f"malformed JSON: {err}")
        elif ext == "txt":
            if text is not None:  # webdataset merges keys that agree up to their first "."
                raise BadSample(f"two txt members ({name}): keys that agree up to their first '.' are one sample")
            text = data.decode("utf-8", errors="replace")
        elif ext in IMAGE_EXTENSIONS or (sub.isdigit() and ext.isalnum()):  # KEY.<i>.<any ext>: ARIA's
            images.append((sub, data, name))
    if meta is None and text is None:
        raise ReadError("no JSON member")
    numbered = bool(images) and all(sub.isdigit() for sub, _, _ in images)
    if numbered:  # KEY.<i>.<ext>: image i (webdataset writes "10.jpg" before "2.jpg")
        images.sort(key=lambda item: int(item[0]))
        seen = [int(sub) for sub, _, _ in images]
        for a, b in zip(seen, seen[1:]):
            if a == b:
                raise ReadError(f"image {a} stored twice")
    converted = convert(meta, text, len(images))
    if converted.fmt == "aria" and numbered:
        indices = [int(sub) for sub, _, _ in images]  # ARIA's JSON names images by these indices
    else:
        indices = list(range(len(images)))
    return RawSample(shard, key, converted.meta, {i: data for i, (_, data, _) in zip(indices, images)},
                     {i: name for i, (_, _, name) in zip(indices, images)}, converted.fmt)


def sample_from_record(source: str, key: str, record, load_image: Callable[[str], bytes]) -> RawSample:
    """A JSON record (LLaVA / messages / OBELICS / caption / ARIA with "images" paths) ->
    RawSample, its images read by load_image(path) (ReadError when one cannot be read)."""
    if not isinstance(record, dict):
        raise ReadError("the record is not a JSON object")
    converted = convert(record, None, None)
    refs = converted.refs
    if refs is None:  # ARIA's own kinds name their images in "images"
        refs = record.get("images", [])
        if not isinstance(refs, list):
            raise BadSample("'images' is not a list of paths")
    images, names = {}, {}
    for i, ref in enumerate(refs):
        if not isinstance(ref, str) or not ref:
            raise BadSample(f"image {i}: {ref!r} is not a path")
        images[i], names[i] = load_image(ref), ref
    return RawSample(source, key, converted.meta, images, names, converted.fmt)


def convert(meta, text: Optional[str], members: Optional[int]) -> Converted:
    """Recognise a sample's layout. members: the number of image members of a shard sample, or
    None for a JSON record (its images are the paths it names)."""
    try:
        return _convert(meta, text, members)
    except (TypeError, AttributeError, KeyError) as err:  # a field of an unexpected JSON type
        raise BadSample(f"malformed record: {type(err).__name__}: {err}")


def _convert(meta, text: Optional[str], members: Optional[int]) -> Converted:
    if isinstance(meta, dict):
        if "kind" in meta:
            return Converted("aria", meta)
        if "conversations" in meta:
            return _llava(meta, members)
        if "messages" in meta:
            return _messages(meta, members)
        if "texts" in meta and "images" in meta:
            return _obelics(meta, members)
    caption = text if text is not None else _field(meta, "caption", "text")
    if caption is not None:
        return _caption(meta, caption, members)
    return Converted("aria", meta if isinstance(meta, dict) else {})  # the schema says what is wrong


def _field(meta, *names) -> Optional[str]:
    if isinstance(meta, dict):
        for name in names:
            if isinstance(meta.get(name), str):
                return meta[name]
    return None


def _image_refs(meta, count: int, members: Optional[int], layout: str, refs: Optional[list] = None) -> Optional[list]:
    """The images' references for `count` image slots: shard members (None) or paths."""
    if members is not None:
        if members != count:
            raise BadSample(f"{layout}: {count} image slot(s), {members} image member(s) in the sample")
        return None
    refs = refs if refs is not None else []
    if len(refs) != count:
        raise BadSample(f"{layout}: {count} image slot(s), {len(refs)} image path(s) in the record")
    return refs


def _caption(meta, caption: str, members: Optional[int]) -> Converted:
    refs = None
    if members is None:
        image = _field(meta, "image", "image_path", "file_name")
        images = meta.get("images") if isinstance(meta, dict) else None
        refs = [image] if image else images if isinstance(images, list) else []
    refs = _image_refs(meta, 1, members, "caption", refs)
    return Converted("caption", {"kind": "caption", "image": 0, "caption": caption.strip()}, refs)


def _path_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value) if isinstance(value, list) else [value]


def _llava(meta: dict, members: Optional[int]) -> Converted:
    turns = meta["conversations"]
    if not isinstance(turns, list) or not turns:
        raise BadSample("llava: 'conversations' is not a non-empty list")
    paths = _path_list(meta.get("image"))
    count = members if members is not None else len(paths)
    messages, placed = [], 0
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise BadSample(f"llava: turn {i} has no 'value' text")
        role = LLAVA_ROLES.get(turn.get("from"))
        if role is None:
            raise BadSample(f"llava: turn {i} is from {turn.get('from')!r}, expected human or gpt")
        parts = []
        for j, piece in enumerate(turn["value"].split(LLAVA_PLACEHOLDER)):
            if j:
                parts.append({"type": "image", "image": placed})
                placed += 1
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": parts})
    if placed == 0 and count:  # LLaVA's convention: the images open the first user turn
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise BadSample("llava: images but no human turn to put them in")
        first["content"][:0] = [{"type": "image", "image": i} for i in range(count)]
        placed = count
    refs = _image_refs(meta, placed, members, "llava", paths)
    return Converted("llava", {"kind": "chat", "messages": messages}, refs)


def _part_ref(part: dict):
    """The image a messages part names itself, if any."""
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    for value in (part.get("image"), part.get("path"), part.get("url"), url):
        if isinstance(value, str) and value:
            return value
    return None


def _messages(meta: dict, members: Optional[int]) -> Converted:
    source = meta["messages"]
    if not isinstance(source, list) or not source:
        raise BadSample("messages: 'messages' is not a non-empty list")
    messages, own_refs = [], []
    for i, message in enumerate(source):
        if not isinstance(message, dict):
            raise BadSample(f"messages: message {i} is not an object")
        content = message.get("content")
        if content is None or isinstance(content, str):
            parts = content or ""
        elif isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    parts.append({"type": "text", "text": part.get("text") or ""})
                elif kind in ("image", "image_url"):
                    parts.append({"type": "image", "image": len(own_refs)})
                    own_refs.append(_part_ref(part))
                else:
                    raise BadSample(f"messages: message {i} has a part of type {kind!r} (text and image only)")
        else:
            raise BadSample(f"messages: message {i} content is neither a string nor a list of parts")
        messages.append({"role": message.get("role"), "content": parts})
    listed = meta.get("images", meta.get("image"))
    paths = _path_list(listed) if listed is not None else own_refs
    refs = _image_refs(meta, len(own_refs), members, "messages", paths)
    return Converted("messages", {"kind": "chat", "messages": messages}, refs)


def _obelics(meta: dict, members: Optional[int]) -> Converted:
    texts, images = meta["texts"], meta["images"]
    if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images):
        raise BadSample("obelics: 'texts' and 'images' must be lists of the same length")
    segments, paths = [], []
    for i, (text, image) in enumerate(zip(texts, images)):
        if text is not None and image is not None:
            raise BadSample(f"obelics: position {i} holds both a text and an image")
        if text is not None:
            if not isinstance(text, str):
                raise BadSample(f"obelics: text {i} is not a string")
            if segments and "text" in segments[-1]:
                segments[-1]["text"] += "\n\n"
            segments.append({"text": text})
        elif image is not None:
            segments.append({"image": len(paths)})
            paths.append(image)
    if not segments:
        raise BadSample("obelics: the document is empty")
    refs = _image_refs(meta, len(paths), members, "obelics", paths)
    return Converted("obelics", {"kind": "interleaved", "segments": segments}, refs)
