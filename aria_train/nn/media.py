"""What a micro-batch gives the encoder: image crops as 2-D patches (ARIA's), and with IMP's
options video tubelets and audio patches, plus the order of all these items in the text.

Each item becomes one block of `<|img|>` tokens in the text; the model fills the blocks in
row-major (batch, sequence) order with the projector's outputs of the items in `order`. The
data side (aria_train.data.multimodal) builds these tensors, the model side
(aria_train.model.multimodal) consumes them; both agree on the layouts here:

    patches        [T_i, C*p*p]    image crops, row-major patches (image_patches.patchify)
    grid           [(h, w)]        per crop
    video_patches  [T_v, C*f*p*p]  tubelets in (t, y, x) order, each flattened (c, dt, dy, dx)
                                   (image_patches.patchify_video), the order of a Conv3d weight
    video_grid     [(t, h, w)]     per video, in tubelets
    audio_patches  [T_a, n]        spectrogram patches (n = patch^2, (freq, time) row-major) or
                                   waveform frames (n = kernel samples)
    audio_grid     [(h, w)]        per clip: (frequency patches, time patches), or (1, frames)
    media_order    ["image" | "video" | "audio"] per item in token order; absent = all images
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

IMAGE, VIDEO, AUDIO = "image", "video", "audio"
MEDIA_KEYS = ("patches", "grid", "video_patches", "video_grid", "audio_patches", "audio_grid", "media_order")


@dataclass
class MediaBatch:
    patches: Optional[torch.Tensor] = None
    grid: list = field(default_factory=list)
    video_patches: Optional[torch.Tensor] = None
    video_grid: list = field(default_factory=list)
    audio_patches: Optional[torch.Tensor] = None
    audio_grid: list = field(default_factory=list)
    media_order: Optional[list] = None

    def __post_init__(self):
        self.grid = [tuple(int(v) for v in g) for g in (self.grid.tolist() if torch.is_tensor(self.grid) else self.grid or [])]
        self.video_grid = [tuple(int(v) for v in g) for g in self.video_grid or []]
        self.audio_grid = [tuple(int(v) for v in g) for g in self.audio_grid or []]

    @classmethod
    def from_batch(cls, batch: dict) -> "MediaBatch":
        return cls(**{key: batch[key] for key in MEDIA_KEYS if key in batch})

    @property
    def order(self) -> list[str]:
        """The kind of every item in token order."""
        if self.media_order is not None:
            return list(self.media_order)
        return [IMAGE] * len(self.grid) + [VIDEO] * len(self.video_grid) + [AUDIO] * len(self.audio_grid)

    def __len__(self) -> int:
        return len(self.grid) + len(self.video_grid) + len(self.audio_grid)

    def check(self) -> None:
        """ValueError when the order does not match the items."""
        order = self.order
        for kind, items in ((IMAGE, self.grid), (VIDEO, self.video_grid), (AUDIO, self.audio_grid)):
            if order.count(kind) != len(items):
                raise ValueError(f"media_order has {order.count(kind)} {kind} items, the batch {len(items)}")
        if len(order) != len(self):
            raise ValueError(f"media_order names kinds other than {IMAGE}, {VIDEO}, {AUDIO}: {sorted(set(order))}")

    def to(self, device, non_blocking: bool = False) -> "MediaBatch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return MediaBatch(move(self.patches), self.grid, move(self.video_patches), self.video_grid,
                          move(self.audio_patches), self.audio_grid, self.media_order)
