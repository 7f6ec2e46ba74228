"""Planning and loading the media blocks of `clip` and `audio` samples (schema.py), for the
renderer (render.py). Headers only at planning (the length index stores the kind and size of
every block); decoding at materialisation, on the rank that trains on the sample.

A clip's block has the queries of one crop of the resolution mode (its frames are resized as a
single crop each); an audio clip's block has audio.queries (MediaSettings.audio_queries; 1 when
planning without settings, as the index does: lengths are recomputed from the kinds).
"""

from __future__ import annotations

import io


from aria_train.data.multimodal.errors import BadSample, one_line
from aria_train.data.multimodal.media import (PlannedImage, audio_features, audio_header, clip_tensor,
                                              decode_video_array, extension, video_shape)
from aria_train.nn.audio_features import AudioFeatureSpec
from aria_train.nn.image_patches import patchify_video

try:
    from PIL import Image as PILImage
except ImportError:  # pragma: no cover
    PILImage = None


def _frame_size(data: bytes, what: str) -> tuple[int, int]:
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception as err:  # PIL raises many types for bad data
        raise BadSample(f"{what}: {one_line(err) or type(err).__name__}")
    return width, height


def plan_media(kind: str, sample, meta: dict, cfg):
    """The PlannedImage of a clip's or an audio sample's block (start/end set by the caller)."""
    if kind == "audio":
        index = meta["audio"]
        name = sample.image_names.get(index, "")
        rate = meta.get("sample_rate") or (cfg.media.audio.sample_rate if cfg.media.audio else 16_000)
        size = audio_header(sample.images[index], name, f"audio {index}", rate)
        return PlannedImage(0, 0, index, sample.images[index], size, 1, max(cfg.media.audio_queries, 1), "audio",
                            name)
    if "video" in meta:
        index = meta["video"]
        name = sample.image_names.get(index, "")
        if extension(name) != "npy":
            raise BadSample(f"schema: clip video {index} ({name}) is not a .npy array")
        frames, width, height = video_shape(sample.images[index], f"clip video {index}")
        return PlannedImage(0, 0, index, sample.images[index], (width, height), 1, cfg.queries, "clip", name)
    sizes = {_frame_size(sample.images[i], f"clip frame {i}") for i in meta["frames"]}
    if len(sizes) != 1:
        raise BadSample(f"clip frames differ in size: {sorted(sizes)}")
    frames = tuple(sample.images[i] for i in meta["frames"])
    return PlannedImage(0, 0, meta["frames"][0], None, sizes.pop(), 1, cfg.queries, "clip",
                        sample.image_names.get(meta["frames"][0], ""), frames)


def decode_frames(item, what: str) -> list:
    """A clip's frames: PIL images, or [3, H, W] uint8 tensors of a .npy video."""
    if item.frames:
        out = []
        for i, data in enumerate(item.frames):
            try:
                with PILImage.open(io.BytesIO(data)) as img:
                    img.load()
                    out.append(img.convert("RGB"))
            except Exception as err:
                raise BadSample(f"{what} frame {i}: decode failed: {one_line(err) or type(err).__name__}")
        return out
    return decode_video_array(item.data, what)


def load_media(item, cfg, blank: bool = False) -> tuple:
    """-> (encoder input [n, dim], grid): a clip's tubelets and (t, h, w), an audio clip's
    patches / frames and (h, w). blank: black frames or silence of the planned size."""
    settings = cfg.media
    what = f"{item.kind} {item.index}"
    if item.kind == "audio":
        spec: AudioFeatureSpec = settings.audio
        return audio_features(None if blank else item.data, item.name, what, spec, int(item.size[1]))
    width, height = item.size
    if blank:
        frames = [PILImage.new("RGB", (width, height))] * max(1, len(item.frames))
    else:
        frames = decode_frames(item, what)
    crops = [cfg.frame_crop(frame) for frame in frames]
    video = clip_tensor(crops, settings)
    return patchify_video(video, settings.tubelet_frames, cfg.patch_size)


__all__ = ["decode_frames", "load_media", "plan_media"]
