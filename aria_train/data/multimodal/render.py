"""Sample renderer: a sample's JSON + images -> token ids, loss targets and image crops.

Token layout (IMG = `<fim_prefix>` + `<|img|>` x (crops x queries) + `<fim_suffix>`, EOD =
`<|endoftext|>`; each text piece is encoded separately, so piece boundaries are token
boundaries):

    caption      IMG [prompt] caption EOD                      loss: caption, EOD
    ocr_qa       IMG question+"\\n" answer EOD                  loss: answer, EOD
    interleaved  segments in order (text / IMG) EOD            loss: text segments (unless
                                                               "loss": false), EOD
    video        per frame "[mm:ss]" IMG, then caption EOD     loss: caption (or answer), EOD
                 (or question+"\\n" answer EOD)
    chat         ARIA's chat template (aria_train.data.chat) EOD  loss: assistant turns with their
                                                               <|im_end|>, EOD

`target[j]` says whether token j is predicted with loss (from token j-1); image markers, image
tokens, prompts, questions and timestamps never are. In a packed sequence labels[i] =
tokens[i+1] and loss_mask[i] = target[i+1].

Text never forges an image block: occurrences of the special pieces (`<|img|>`, `<fim_prefix>`,
...) in sample text are broken with a zero-width space before encoding, so they encode as plain
text.

Planning (plan()) reads only image headers (PIL's lazy open: format and size) because the token
count of an image depends on its size alone; pixels are decoded by load_crops() only for the
sequences a data-parallel rank actually trains on.

Resolution modes follow image_tokens.py, with sizes from ImageConfig (the tiny preset's 70/140 px
crops or ARIA's 490/980 px):
    medium      one crop, long side -> resolutions["medium"]
    high        one crop, long side -> resolutions["high"]
    ultra-high  a global view + tiles of tile_size px (ARIA's split grids), or with
                split="transformers" AriaImageProcessor's best-fit tiles (aria_train.data.image_split)
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from aria_train.data.chat import conversation_pieces
from aria_train.data.errors import DataError
from aria_train.data.image_split import split_grid, split_transformers
from aria_train.data.image_tokens import MIN_SIZE, PATCH_SIZE, SPLIT_RATIOS, ImageCrops, process_image, select_split
from aria_train.data.multimodal.errors import BadSample, one_line
from aria_train.data.multimodal.schema import timestamp, validate_sample
from aria_train.data.multimodal.layouts import RawSample
from aria_train.data.tokenizer import SPECIAL_TOKENS

try:
    from PIL import Image as PILImage
except ImportError:  # pragma: no cover
    PILImage = None

RESOLUTION_MODES = ("medium", "high", "ultra-high")
_ZWSP = "\u200b"


@dataclass
class ImageConfig:
    """How images become crops and image tokens.

    resolutions: crop side (px) of the single-crop modes; size_to_queries: crop side -> projector
    queries; tile_size: ultra-high tiles (and its global view); min_size: smallest short side of
    a crop (None = ARIA's 336 px scaled by resolutions["medium"] / 490)."""

    mode: str = "medium"
    resolutions: dict = field(default_factory=lambda: {"medium": 490, "high": 980})
    size_to_queries: dict = field(default_factory=lambda: {490: 128, 980: 256})
    tile_size: int = 490
    min_size: Optional[int] = None
    patch_size: int = PATCH_SIZE
    split_ratios: tuple = SPLIT_RATIOS
    split: str = "aria"  # ultra-high: aria (global view + closest-ratio tiles) | transformers (best fit)

    def __post_init__(self):
        self.size_to_queries = {int(k): int(v) for k, v in self.size_to_queries.items()}
        if self.mode not in RESOLUTION_MODES:
            raise DataError(f"image mode {self.mode!r}: expected one of {', '.join(RESOLUTION_MODES)}")
        if self.split not in ("aria", "transformers"):
            raise DataError(f"image split {self.split!r}: expected aria or transformers")
        for size in (self.crop_size, self.tile_size):
            if size not in self.size_to_queries:
                raise DataError(f"image crop size {size} px has no query count in {self.size_to_queries}")
            if size % self.patch_size:
                raise DataError(f"image crop size {size} px is not a multiple of the patch size {self.patch_size}")

    @classmethod
    def from_projector(cls, projector, patch_size: int = PATCH_SIZE, mode: str = "medium", **kw) -> "ImageConfig":
        """Sizes from a ProjectorConfig: its smallest square side is "medium" (and the tile
        size), its largest "high". Tiny preset {25: 4, 100: 8} -> 70 px (4 queries), 140 px (8)."""
        sides = sorted(projector.sides().items())
        size_to_queries = {side * patch_size: q for side, q in sides}
        medium, high = sides[0][0] * patch_size, sides[-1][0] * patch_size
        kw.setdefault("tile_size", medium)
        return cls(mode=mode, resolutions={"medium": medium, "high": high}, size_to_queries=size_to_queries,
                   patch_size=patch_size, **kw)

    @property
    def crop_size(self) -> int:
        return self.tile_size if self.mode == "ultra-high" else int(self.resolutions[self.mode])

    @property
    def effective_min_size(self) -> int:
        if self.min_size is not None:
            return int(self.min_size)
        return int(MIN_SIZE * int(self.resolutions["medium"]) / 490)

    @property
    def queries(self) -> int:
        return self.size_to_queries[self.crop_size]

    def num_crops(self, width: int, height: int) -> int:
        if self.mode != "ultra-high":
            return 1
        if self.split == "transformers":
            rows, cols = split_grid(width, height, self.tile_size, int(self.resolutions["medium"]), self.split_ratios)
            return rows * cols
        rows, cols = select_split(width, height, self.tile_size, self.split_ratios)
        return 1 if rows * cols == 1 else 1 + rows * cols

    def crops(self, image) -> ImageCrops:
        """A PIL image (or [3, H, W] tensor) -> its crops, as image_tokens.process_image does for
        ARIA's sizes (the single-crop modes run as a one-tile grid of the mode's size)."""
        if self.mode == "ultra-high" and self.split == "transformers":
            return split_transformers(image, self.tile_size, int(self.resolutions["medium"]), self.effective_min_size,
                                      self.patch_size, self.size_to_queries, self.split_ratios)
        ratios = self.split_ratios if self.mode == "ultra-high" else ((1, 1),)
        return process_image(image, "ultra-high", tile_size=self.crop_size, min_size=self.effective_min_size,
                             patch_size=self.patch_size, size_to_queries=self.size_to_queries, ratios=ratios)


@dataclass
class PlannedImage:
    start: int  # index of its <fim_prefix> in the sample's tokens
    end: int  # one past its <fim_suffix>
    index: int  # image index in the sample
    data: Optional[bytes]  # encoded image (None once released)
    size: tuple  # (width, height) from the header
    num_crops: int
    queries: int


@dataclass
class RenderedSample:
    tokens: np.ndarray  # int64 [L]
    target: np.ndarray  # bool [L]: token j is predicted with loss
    images: list = field(default_factory=list)  # PlannedImage, in token order
    shard: str = ""
    key: str = ""
    kind: str = "text"

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def is_text(self) -> bool:
        return not self.images

    def cut_allowed(self, cut: int) -> bool:
        """Keeping tokens [0, cut) does not cut an image block in two."""
        return all(not (img.start < cut < img.end) for img in self.images)

    def longest_prefix(self, limit: int) -> int:
        """Largest cut <= limit that does not fall inside an image block."""
        cut = min(limit, len(self.tokens))
        for img in self.images:
            if img.start < cut < img.end:
                return img.start  # blocks do not overlap: the first one hit is the only one
        return cut


class SampleRenderer:
    def __init__(self, tokenizer, image_cfg: Optional[ImageConfig] = None, add_eod: bool = True):
        if PILImage is None:  # pragma: no cover
            raise DataError("multimodal data needs pillow (pip install pillow)")
        self.tokenizer = tokenizer
        self.image_cfg = image_cfg or ImageConfig()
        self.add_eod = add_eod
        self.img, self.prefix, self.suffix = tokenizer.img, tokenizer.fim_prefix, tokenizer.fim_suffix
        self.eod = tokenizer.eod
        self._forbidden = np.array([self.img, self.prefix, self.suffix], dtype=np.int64)

    # -- text --------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        for piece in SPECIAL_TOKENS:
            if piece in text:
                text = text.replace(piece, piece[0] + _ZWSP + piece[1:])
        ids = self.tokenizer.encode(text)
        if np.isin(np.asarray(ids, dtype=np.int64), self._forbidden).any():  # pragma: no cover
            raise BadSample("text encodes to an image token")
        return ids

    # -- planning ------------------------------------------------------------------------------
    def _image_header(self, sample: RawSample, index: int) -> tuple[int, int]:
        try:
            with PILImage.open(io.BytesIO(sample.images[index])) as img:
                width, height = img.size
        except Exception as err:  # PIL raises many types for bad data
            raise BadSample(f"image {index}: {one_line(err) or type(err).__name__}")
        if width < 1 or height < 1:
            raise BadSample(f"image {index}: empty ({width}x{height})")
        return width, height

    def plan(self, sample: RawSample) -> RenderedSample:
        """Token ids, targets and image slots of a sample (image headers only). BadSample for a
        sample that breaks its schema or has an unreadable image."""
        kind = validate_sample(sample.meta, sample.images.keys())
        meta = sample.meta
        tokens: list[int] = []
        target: list[bool] = []
        images: list[PlannedImage] = []
        cfg = self.image_cfg

        def text(s: str, loss: bool) -> None:
            ids = self.encode_text(s)
            tokens.extend(ids)
            target.extend([loss] * len(ids))

        def image(index: int) -> None:
            width, height = self._image_header(sample, index)
            crops = cfg.num_crops(width, height)
            block = [self.prefix] + [self.img] * (crops * cfg.queries) + [self.suffix]
            images.append(PlannedImage(len(tokens), len(tokens) + len(block), index, sample.images[index],
                                       (width, height), crops, cfg.queries))
            tokens.extend(block)
            target.extend([False] * len(block))

        self._layout(kind, meta, text, image, tokens, target)
        if self.add_eod:
            tokens.append(self.eod)
            target.append(True)
        return RenderedSample(np.asarray(tokens, dtype=np.int64), np.asarray(target, dtype=bool), images,
                              sample.shard, sample.key, kind)

    def _layout(self, kind: str, meta: dict, text, image, tokens: list, target: list) -> None:
        """The token layout of each kind (module notes), through text(s, loss) and image(index)."""

        def answer_part() -> None:
            if "caption" in meta:
                text(meta["caption"], True)
            else:
                text(meta["question"] + "\n", False)
                text(meta["answer"], True)

        if kind == "caption":
            image(meta["image"])
            if meta.get("prompt"):
                text(meta["prompt"], False)
            text(meta["caption"], True)
        elif kind == "ocr_qa":
            image(meta["image"])
            answer_part()
        elif kind == "interleaved":
            for seg in meta["segments"]:
                if "image" in seg:
                    image(seg["image"])
                else:
                    text(seg["text"], seg.get("loss", True))
        elif kind == "chat":
            try:
                pieces = list(conversation_pieces(meta["messages"], self.tokenizer, "chat"))
            except DataError as err:
                raise BadSample(str(err))
            for piece in pieces:
                if piece.kind == "image":
                    image(piece.value)
                elif piece.kind == "text":
                    text(piece.value, piece.is_target)
                else:
                    tokens.extend(piece.value)
                    target.extend([piece.is_target] * len(piece.value))
        else:  # video
            for frame in meta["frames"]:
                text(timestamp(frame.get("time", 0.0)), False)
                image(frame["image"])
            answer_part()

    # -- pixels --------------------------------------------------------------------------------
    def load_crops(self, image: PlannedImage) -> ImageCrops:
        """Decode one planned image -> its crops; BadSample when the pixels are unreadable or do
        not match the header the plan was made from."""
        try:
            with PILImage.open(io.BytesIO(image.data)) as img:
                img.load()
                rgb = img.convert("RGB")
        except Exception as err:
            raise BadSample(f"image {image.index}: decode failed: {one_line(err) or type(err).__name__}")
        if rgb.size != tuple(image.size):  # pragma: no cover
            raise BadSample(f"image {image.index}: decoded size {rgb.size} differs from its header {image.size}")
        crops = self.image_cfg.crops(rgb)
        if crops.num_crops != image.num_crops or crops.queries != image.queries:  # pragma: no cover
            raise DataError(f"image {image.index}: {crops.num_crops} crops x {crops.queries} queries, planned "
                            f"{image.num_crops} x {image.queries}")
        return crops

    def blank_crops(self, image: PlannedImage) -> ImageCrops:
        """Black stand-in (all -1 after normalisation) with the planned crops, for an image whose
        pixels failed to decode after its tokens were planned."""
        return self.image_cfg.crops(PILImage.new("RGB", tuple(image.size)))

    def render(self, sample: RawSample) -> dict:
        """One sample on its own (tests, inspection): tokens, labels, loss_mask (length L-1),
        crops, grid, patches [T, 3*p*p]."""
        import torch

        from aria_train.nn.image_patches import pack_images

        r = self.plan(sample)
        crops = [c for img in r.images for c in self.load_crops(img).crops]
        grid, patches = [], None
        if crops:
            patches, grid = pack_images(crops, self.image_cfg.patch_size)
        return {
            "tokens": torch.from_numpy(r.tokens[:-1].copy()),
            "labels": torch.from_numpy(r.tokens[1:].copy()),
            "loss_mask": torch.from_numpy(r.target[1:].astype(np.float32)),
            "patches": patches,
            "grid": grid,
            "rendered": r,
        }
