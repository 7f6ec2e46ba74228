"""JSON schemas of ARIA's multimodal sample kinds.

A sample is a JSON object (the `KEY.json` member of a shard) plus its images (`KEY.0.png`,
`KEY.1.jpg`, ... : member `KEY.<i>.<ext>` is image i). Images are referred to by index.

    caption      {"kind": "caption", "image": 0, "caption": "two red circles on the left",
                  "prompt": "optional text between the image and the caption (no loss)"}
    ocr_qa       {"kind": "ocr_qa", "image": 0, "question": "How many circles?", "answer": "two"}
                 ("doc_qa" is an alias: document / chart / OCR question answering)
    interleaved  {"kind": "interleaved", "segments": [{"text": "A photo:"}, {"image": 0},
                  {"text": "more text", "loss": true}]}           ("loss" defaults to true)
    video        {"kind": "video", "frames": [{"image": 0, "time": 0.0}, {"image": 1, "time": 2.5}],
                  "caption": "..."}            or, instead of "caption", "question" + "answer"
                 ("time" in seconds, rendered "[mm:ss]")
    chat         {"kind": "chat", "messages": [{"role": "user", "content": [{"type": "image", "image": 0},
                  {"type": "text", "text": "What is shown?"}]}, {"role": "assistant", "content": "..."}]}
                 (post-training; ARIA's chat template, loss on the assistant turns: aria_train.data.chat)

Unknown fields are ignored (kept for provenance). validate_sample() raises BadSample with a
one-line reason; the renderer (render.py) defines the token layout and the loss mask.
"""

from __future__ import annotations

from aria_train.data.multimodal.errors import BadSample

KINDS = ("caption", "ocr_qa", "doc_qa", "interleaved", "video", "chat")


def _text(meta: dict, name: str, required: bool = True) -> None:
    if name not in meta:
        if required:
            raise BadSample(f"schema: {meta.get('kind')} sample has no {name!r}")
        return
    if not isinstance(meta[name], str):
        raise BadSample(f"schema: {name!r} is not a string")


def _image_index(value, images, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadSample(f"schema: {where} image index {value!r} is not an integer")
    if value not in images:
        raise BadSample(f"schema: {where} image {value} is missing (the sample has images {sorted(images)})")


def validate_sample(meta, images) -> str:
    """Checks a sample's JSON against its kind's schema (images: the indices the sample has);
    returns the kind (aliases resolved)."""
    if not isinstance(meta, dict):
        raise BadSample("schema: the JSON is not an object")
    kind = meta.get("kind")
    if kind is None:
        fields = ", ".join(sorted(meta)) or "none"
        raise BadSample(f"layout not recognised: no 'kind', 'conversations', 'messages', 'texts'+'images' or "
                        f"image + caption (JSON fields: {fields})"[:300])
    if kind not in KINDS:
        raise BadSample(f"schema: kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "doc_qa":
        kind = "ocr_qa"
    if kind in ("caption", "ocr_qa"):
        if "image" not in meta:
            raise BadSample(f"schema: {kind} sample has no 'image'")
        _image_index(meta["image"], images, kind)
        if kind == "caption":
            _text(meta, "caption")
            _text(meta, "prompt", required=False)
        else:
            _text(meta, "question")
            _text(meta, "answer")
    elif kind == "interleaved":
        segments = meta.get("segments")
        if not isinstance(segments, list) or not segments:
            raise BadSample("schema: interleaved sample has no 'segments' list")
        for i, seg in enumerate(segments):
            if not isinstance(seg, dict) or ("text" in seg) == ("image" in seg):
                raise BadSample(f"schema: segment {i} must have exactly one of 'text' / 'image'")
            if "text" in seg and not isinstance(seg["text"], str):
                raise BadSample(f"schema: segment {i} text is not a string")
            if "image" in seg:
                _image_index(seg["image"], images, f"segment {i}")
            if not isinstance(seg.get("loss", True), bool):
                raise BadSample(f"schema: segment {i} 'loss' is not a boolean")
    elif kind == "chat":
        messages = meta.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadSample("schema: chat sample has no 'messages' list")
        for i, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            for part in content if isinstance(content, list) else []:
                if isinstance(part, dict) and part.get("type") == "image":
                    _image_index(part.get("image"), images, f"message {i}")
    else:
        _validate_video(meta, images)
    return kind


def _validate_video(meta: dict, images) -> None:
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise BadSample("schema: video sample has no 'frames' list")
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or "image" not in frame:
            raise BadSample(f"schema: frame {i} has no 'image'")
        _image_index(frame["image"], images, f"frame {i}")
        t = frame.get("time", 0.0)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            raise BadSample(f"schema: frame {i} time {t!r} is not a number of seconds >= 0")
    if "caption" in meta:
        _text(meta, "caption")
    else:
        _text(meta, "question")
        _text(meta, "answer")


def timestamp(seconds: float) -> str:
    """Video frame timestamp text: "[mm:ss]" (minutes may exceed 59)."""
    total = int(seconds)
    return f"[{total // 60:02d}:{total % 60:02d}]"
