"""One stage-0 dataset: its usable samples (from the unit indexes of units.py), the held-out
split, class names, and reading a sample's image into a normalised crop.

Images become crops as stage 2's "medium" mode makes them (aria_train.data.image_tokens
.keep_ratio_crop): long side resized to `image_size`, short side kept in ratio (at least the
scaled minimum), padded to whole patches, pixels normalised as ARIA does. So the ViT sees in
stage 0 what it will see in stage 2.

An image whose bytes do not decode keeps its place as a black crop with weight 0 (no loss on its
row; a logged, counted bad sample), so every rank still holds its share of the batch.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from aria_train.data.encoder.units import UnitSamples
from aria_train.data.errors import DataError
from aria_train.data.image_tokens import keep_ratio_crop
from aria_train.data.multimodal.errors import BadSamples, one_line
from aria_train.data.multimodal.tar_io import MemberReader

LOG = logging.getLogger("aria_train.data.encoder")
HELD_OUT_SEED = 20230510  # the held-out split depends on the data alone, never on train.seed


def read_class_names(path: str) -> list[str]:
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except OSError as err:
        raise DataError(f"class names {path}: {err.strerror or err}")
    if not names or any(not n for n in names):
        raise DataError(f"class names {path}: expected one non-empty name per line (line i = class i)")
    return names


class EncoderDataset:
    def __init__(self, name: str, kind: str, units: list[UnitSamples], class_names: Optional[list[str]],
                 eval_samples: int = 0, max_bad_fraction: float = 0.05):
        self.name, self.kind, self.units = name, kind, units
        self.class_names = class_names
        usable, reasons, examples = self._usable()
        total = sum(len(u) for u in units)
        bad = total - len(usable)
        if total == 0 or bad > max_bad_fraction * total or len(usable) <= eval_samples:
            self._refuse(total, len(usable), reasons, examples, eval_samples, max_bad_fraction)
        self.bad_count, self.total = bad, total
        held = np.random.default_rng(HELD_OUT_SEED).permutation(len(usable))[:eval_samples]
        is_held = np.zeros(len(usable), dtype=bool)
        is_held[held] = True
        self.train_ids = usable[~is_held]  # [n, 2] (unit, position), stored order
        self.eval_ids = usable[np.sort(held)]

    def _usable(self) -> tuple[np.ndarray, Counter, dict]:
        """([n, 2] (unit, position) of the usable samples, unusable ones by reason, an example
        of each reason)."""
        classes = len(self.class_names) if self.class_names is not None else 0
        ids, reasons, examples = [], Counter(), {}
        for u, unit in enumerate(self.units):
            for i in range(len(unit)):
                reason = unit.reason[i]
                if not reason and self.kind == "labelled":
                    label = unit.label[i]
                    reason = ("no cls member" if label is None else
                              f"class {label} outside the {classes} class names" if label >= classes else "")
                if not reason and self.kind == "image_text" and not unit.text[i]:
                    reason = "no caption"
                if reason:
                    reasons[reason.split(":")[0]] += 1
                    examples.setdefault(reason.split(":")[0], f"{unit.unit}:{unit.keys[i]}: {reason}")
                else:
                    ids.append((u, i))
        return np.asarray(ids, dtype=np.int64).reshape(-1, 2), reasons, examples

    def _refuse(self, total: int, usable: int, reasons: Counter, examples: dict, eval_samples: int,
                max_bad: float) -> None:
        common = reasons.most_common(1)[0] if reasons else None
        detail = f"; most common: {common[0]} ({common[1]}), e.g. {examples[common[0]]}" if common else ""
        if total and total - usable > max_bad * total:
            raise DataError(f"encoder dataset {self.name}: {total - usable} of {total} samples are unusable as "
                            f"{self.kind} (data.max_bad_fraction={max_bad:g}){detail}")
        raise DataError(f"encoder dataset {self.name}: {usable} usable samples, not more than its "
                        f"eval_samples={eval_samples}{detail}")

    def sample(self, unit: int, position: int) -> tuple[str, Optional[int], Optional[str]]:
        """(where, label, caption) of a sample."""
        u = self.units[unit]
        return f"{u.unit}:{u.keys[position]}", u.label[position], u.text[position]


class ImageReader:
    """Sample images -> normalised crops [3, H, W] (H, W multiples of the patch size)."""

    def __init__(self, image_size: int, min_size: int, patch_size: int, bad: Optional[BadSamples] = None):
        if image_size % patch_size:
            raise DataError(f"encoder image_size {image_size} px is not a multiple of the patch size {patch_size}")
        self.image_size, self.min_size, self.patch_size = image_size, min_size, patch_size
        self.bad = bad if bad is not None else BadSamples("skip", LOG)
        self._members = MemberReader()

    def crop(self, dataset: EncoderDataset, unit: int, position: int) -> tuple[torch.Tensor, float]:
        """(crop, weight): weight 0 and a black crop when the image does not decode."""
        from PIL import Image

        u = dataset.units[unit]
        name, offset, size = u.image[position]
        try:
            data = self._members.read(u.unit, offset, size) if offset >= 0 else Path(name).read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                return keep_ratio_crop(image.convert("RGB"), self.image_size, self.min_size, self.patch_size), 1.0
        except Exception as err:  # PIL raises many types for bad data
            self.bad.report(u.unit, u.keys[position], f"image: {one_line(err) or type(err).__name__}")
            side = self.image_size
            return keep_ratio_crop(torch.zeros(3, side, side), side, self.min_size, self.patch_size), 0.0

