"""Writing labelled image shards in webdataset's convention (`KEY.png` + `KEY.cls`, the class
index as text) with `classes.txt` beside them (line i = the name of class i), and the synthetic
demo datasets of stage 0 (labelled shapes-and-colours scenes; caption shards as stage 2 reads).
Members carry fixed metadata (mtime 0, mode 0644), so the same samples give identical bytes.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Iterable, Sequence

from aria_train.data.errors import DataError

CLASSES_FILE = "classes.txt"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_labelled_shards(out_dir, samples: Iterable[tuple[str, object, int]], class_names: Sequence[str],
                          samples_per_shard: int = 500, prefix: str = "labelled") -> list[str]:
    """samples: (key, PIL image, class index). Each shard is written as NAME.tar.tmp and renamed
    when complete. Returns the shard paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CLASSES_FILE).write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
    shards, tar, count = [], None, 0

    def close() -> None:
        tar.close()
        os.replace(shards[-1] + ".tmp", shards[-1])

    for key, image, label in samples:
        if "." in key or "/" in key:
            raise DataError(f"sample key {key!r} must not contain '.' or '/'")
        if not 0 <= int(label) < len(class_names):
            raise DataError(f"sample {key}: class {label} outside the {len(class_names)} class names")
        if tar is None or count == samples_per_shard:
            if tar is not None:
                close()
            shards.append(str(out / f"{prefix}-{len(shards):06d}.tar"))
            tar, count = tarfile.open(shards[-1] + ".tmp", "w", format=tarfile.USTAR_FORMAT), 0
        _add(tar, f"{key}.png", _png(image))
        _add(tar, f"{key}.cls", str(int(label)).encode())
        count += 1
    if tar is not None:
        close()
    return shards


def write_synthetic_labelled(out_dir, num_samples: int, seed: int = 0, size: int = 70,
                             samples_per_shard: int = 500) -> list[str]:
    """The labelled demo: num_samples scenes of one colour and shape each (12 classes)."""
    from aria_train.data.multimodal.synthetic import CLASS_NAMES, labelled_sample

    def samples():
        for i in range(num_samples):
            label, image, _ = labelled_sample(seed, i, size)
            yield f"cls_{i:06d}", image, label

    return write_labelled_shards(out_dir, samples(), CLASS_NAMES, samples_per_shard, prefix="shapes")


def write_synthetic_captions(out_dir, num_samples: int, seed: int = 0, size: int = 70,
                             samples_per_shard: int = 500) -> list[str]:
    """The image-text demo: captioned scenes ("two red circles on the left and ...") in ARIA's
    own shard layout, as stage 2's synthetic data."""
    from aria_train.data.multimodal.synthetic import write_synthetic_shards

    return write_synthetic_shards(out_dir, num_samples, seed=seed, size=size, samples_per_shard=samples_per_shard,
                                  kind="caption", prefix="captions")
