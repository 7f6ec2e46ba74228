"""Synthetic "pixels matter" data: small drawn scenes whose captions can only be known by
looking (which shapes, which colours, how many, on which side).

A scene has one or two groups; a group is `count` (1-3) shapes of one kind (circle, square,
triangle) and one colour, all on one side (left or right half); two groups sit on opposite sides
and differ in shape or colour. Caption: "two red circles on the left and one blue square on the
right". Shapes are drawn without anti-aliasing on a flat background, in slots that never touch, so
counting the connected regions of a colour recovers the caption (what the tests do).

Everything is a pure function of (seed, index): the same arguments give the same images, JSON and
shard bytes. Default size 70 px: one 5x5-patch crop of the tiny vision preset (patch 14,
projector patch_to_query {25: 4, 100: 8}), which its "medium" mode (70 px) keeps without
resizing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from aria_train.data.errors import DataError

try:
    from PIL import Image, ImageDraw
except ImportError:  # pragma: no cover
    Image = ImageDraw = None

COLORS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
NUMBERS = {1: "one", 2: "two", 3: "three"}
SIDES = ("left", "right")
BACKGROUND = (245, 245, 245)
# slot centres as fractions of the side: two columns per half, three rows
_COLS = {"left": (0.14, 0.36), "right": (0.64, 0.86)}
_ROWS = (0.18, 0.5, 0.82)
_RADIUS = 0.09
KIND_WEIGHTS = {"caption": 0.7, "ocr_qa": 0.15, "interleaved": 0.1, "video": 0.05}


@dataclass
class Group:
    shape: str
    color: str
    count: int
    side: str
    slots: list  # [(cx, cy)] in pixels

    def phrase(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        return f"{NUMBERS[self.count]} {self.color} {noun} on the {self.side}"


@dataclass
class Scene:
    size: int
    groups: list

    def caption(self) -> str:
        return " and ".join(g.phrase() for g in self.groups)


def _plural(shape: str, count: int) -> str:
    return shape if count == 1 else shape + "s"


def make_scene(rng: np.random.Generator, size: int = 70) -> Scene:
    n_groups = 1 if rng.random() < 0.5 else 2
    first_side = SIDES[int(rng.integers(2))]
    groups, used = [], set()
    for g in range(n_groups):
        side = first_side if g == 0 else SIDES[1 - SIDES.index(first_side)]
        while True:
            shape, color = SHAPES[int(rng.integers(len(SHAPES)))], list(COLORS)[int(rng.integers(len(COLORS)))]
            if (shape, color) not in used:
                break
        used.add((shape, color))
        count = int(rng.integers(1, 4))
        cells = [(c, r) for c in _COLS[side] for r in _ROWS]
        chosen = sorted(rng.choice(len(cells), size=count, replace=False).tolist())
        slots = [(round(cells[i][0] * size), round(cells[i][1] * size)) for i in chosen]
        groups.append(Group(shape, color, count, side, slots))
    return Scene(size, groups)


def _draw_shape(draw, shape: str, cx: int, cy: int, r: int, fill) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        s = max(1, round(r * 0.85))
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def draw_scene(scene: Scene):
    if Image is None:  # pragma: no cover
        raise DataError("synthetic images need pillow")
    img = Image.new("RGB", (scene.size, scene.size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    r = max(2, round(_RADIUS * scene.size))
    for g in scene.groups:
        for cx, cy in g.slots:
            _draw_shape(draw, g.shape, cx, cy, r, COLORS[g.color])
    return img


def _video(rng: np.random.Generator, size: int, frames: int = 3) -> tuple[list, str]:
    shape, color = SHAPES[int(rng.integers(len(SHAPES)))], list(COLORS)[int(rng.integers(len(COLORS)))]
    rightward = bool(rng.integers(2))
    xs = np.linspace(0.18, 0.82, frames)
    if not rightward:
        xs = xs[::-1]
    cy = round(_ROWS[int(rng.integers(3))] * size)
    r = max(2, round(_RADIUS * size))
    images = []
    for x in xs:
        img = Image.new("RGB", (size, size), BACKGROUND)
        _draw_shape(ImageDraw.Draw(img), shape, round(x * size), cy, r, COLORS[color])
        images.append(img)
    direction = "from the left to the right" if rightward else "from the right to the left"
    return images, f"a {color} {shape} moves {direction}"


def _question(rng: np.random.Generator, scene: Scene) -> tuple[str, str]:
    g = scene.groups[int(rng.integers(len(scene.groups)))]
    q = int(rng.integers(3))
    if q == 0:
        return f"How many {g.color} {_plural(g.shape, 2)} are there?", NUMBERS[g.count]
    if q == 1:
        return f"What colour {'is the' if g.count == 1 else 'are the'} {_plural(g.shape, g.count)}?", g.color
    return f"Where {'is the' if g.count == 1 else 'are the'} {g.color} {_plural(g.shape, g.count)}?", f"on the {g.side}"


def synthetic_sample(seed: int, index: int, size: int = 70, kind: Optional[str] = None) -> tuple[dict, list, list]:
    """(JSON, images [PIL or (ext, bytes)], scenes) of synthetic sample `index`; kind None =
    drawn from KIND_WEIGHTS."""
    rng = np.random.default_rng([int(seed), int(index)])
    if kind is None:
        kinds = list(KIND_WEIGHTS)
        p = np.asarray([KIND_WEIGHTS[k] for k in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    if kind == "caption":
        scene = make_scene(rng, size)
        return {"kind": "caption", "image": 0, "caption": scene.caption()}, [draw_scene(scene)], [scene]
    if kind == "ocr_qa":
        scene = make_scene(rng, size)
        question, answer = _question(rng, scene)
        return ({"kind": "ocr_qa", "image": 0, "question": question, "answer": answer}, [draw_scene(scene)], [scene])
    if kind == "interleaved":
        scenes = [make_scene(rng, size) for _ in range(2)]
        segments = [{"text": "The first picture"}, {"image": 0}, {"text": f"shows {scenes[0].caption()}."},
                    {"text": "The second picture"}, {"image": 1}, {"text": f"shows {scenes[1].caption()}."}]
        return {"kind": "interleaved", "segments": segments}, [draw_scene(s) for s in scenes], scenes
    if kind == "video":
        frames, caption = _video(rng, size)
        meta = {"kind": "video", "frames": [{"image": i, "time": 2.0 * i} for i in range(len(frames))],
                "caption": caption}
        return meta, [("jpg", _jpeg(f)) for f in frames], []
    if kind == "chat":  # post-training: a two-turn conversation about one picture
        scene = make_scene(rng, size)
        question, answer = _question(rng, scene)
        messages = [
            {"role": "user", "content": [{"type": "image", "image": 0}, {"type": "text", "text": "Describe the picture."}]},
            {"role": "assistant", "content": f"It shows {scene.caption()}."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer.capitalize() + "."},
        ]
        return {"kind": "chat", "messages": messages}, [draw_scene(scene)], [scene]
    raise DataError(f"synthetic kind {kind!r}: expected one of {', '.join(KIND_WEIGHTS)}, chat")


def _jpeg(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_synthetic_shards(out_dir, num_samples: int, seed: int = 0, size: int = 70, samples_per_shard: int = 100,
                           kind: Optional[str] = None, prefix: str = "synthetic", tokenizer=None) -> list[str]:
    """Writes num_samples synthetic samples (keys syn_000000, ...) into shards, with their length
    indexes for `tokenizer` (default: the demo tokenizer); returns the shard paths."""
    from aria_train.data.multimodal.shards import ShardWriter
    from aria_train.data.tokenizer import load_tokenizer

    if num_samples < 1:
        raise DataError(f"synthetic samples {num_samples}: must be positive")
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer("")
    with ShardWriter(out_dir, samples_per_shard, prefix=prefix, tokenizer=tokenizer) as writer:
        for i in range(num_samples):
            meta, images, _ = synthetic_sample(seed, i, size, kind)
            writer.write(f"syn_{i:06d}", meta, images)
    return writer.shards


def _regions(mask: np.ndarray) -> list:
    """Connected regions (4-neighbourhood) of a boolean mask -> [(ys, xs) arrays]."""
    seen = np.zeros_like(mask)
    h, w = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, pixels = [(y0, x0)], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        ys, xs = np.asarray(pixels).T
        out.append((ys, xs))
    return out


def read_scene(image) -> list:
    """The shapes of a synthetic image read back from its pixels: [(colour, shape, side)], one per
    drawn shape. Shape from how much of its bounding box a region fills (square ~1, circle ~0.7,
    triangle ~0.5); side from its centre."""
    arr = np.asarray(image.convert("RGB"))
    half = arr.shape[1] / 2
    found = []
    for color, rgb in COLORS.items():
        mask = np.all(arr == np.asarray(rgb, dtype=arr.dtype), axis=-1)
        for ys, xs in _regions(mask):
            fill = len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
            shape = "square" if fill > 0.9 else "circle" if fill > 0.6 else "triangle"
            found.append((color, shape, "left" if xs.mean() < half else "right"))
    return sorted(found)


def count_shapes(image, color: str, side: Optional[str] = None, shape: Optional[str] = None) -> int:
    """Drawn shapes of a colour (optionally of one kind, in one half) read back from the pixels."""
    return sum(1 for c, sh, sd in read_scene(image)
               if c == color and (side is None or sd == side) and (shape is None or sh == shape))
