"""Does a parallel layout fit a GPU, and if not, the smallest change that does.

A layout is what a run chooses about memory: world size, expert-parallel size, the decoder's and
the vision side's recompute modes, the micro-batch, and the frozen parameter groups. Its per-GPU
peak is

    persistent (aria_train.accounting.memory_per_rank: weights of every local parameter;
                gradients and ZeRO-1 optimizer shards of the trainable ones)
  + max(decoder activation peak (aria_train.accounting.activation_memory) + vision held,
        vision backward peak)                                     (plan.vision_memory)

with the vision side sized for the worst micro-batch: every token an image token.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Optional

from aria_train.accounting import ActivationEstimate, activation_memory, memory_per_rank
from aria_train.plan.counts import StageCounts
from aria_train.plan.vision_memory import VISION_MODES, VisionEstimate, vision_activation_memory, worst_case_images

GIB = 1024**3
DEVICE_BYTES = 80e9  # an 80 GB GPU (H100)
DECODER_MODES = ("none", "selective", "full")  # least recompute first
# Frozen groups tried, least frozen first, when no other change fits (fine-tuning on few GPUs).
FREEZE_OPTIONS = ((), ("routed_experts",), ("routed_experts", "vision"), ("decoder",), ("decoder", "vision"))


@dataclass(frozen=True)
class Layout:
    world: int
    ep: int
    decoder_mode: str
    vision_mode: str
    micro: int
    freeze: tuple = ()
    zero1: bool = True

    @classmethod
    def of(cls, cfg, world: int) -> "Layout":
        return cls(world, cfg.parallel.ep_size, cfg.model.activation_checkpointing,
                   cfg.vision.activation_checkpointing, cfg.train.micro_batch_size, tuple(cfg.train.freeze),
                   cfg.optimizer.zero1)

    def describe(self, multimodal: bool) -> str:
        vision = f", vision recompute {self.vision_mode}" if multimodal else ""
        frozen = ", ".join(self.freeze) if self.freeze else "none"
        sharding = "ZeRO-1" if self.zero1 and self.world > 1 else "optimizer state replicated"
        return (f"world {self.world}, ep-size {self.ep}, expert-data-parallel {self.world // self.ep}, {sharding}, "
                f"micro-batch {self.micro}, decoder recompute {self.decoder_mode}{vision}, frozen: {frozen}")

    def changes_from(self, other: "Layout") -> list[str]:
        """The command-line changes that turn `other` into this layout."""
        out = []
        if self.world != other.world:
            out.append(f"--world-size {self.world} (torchrun over {self.world} GPUs)")
        if self.ep != other.ep:
            out.append(f"--ep-size {self.ep}")
        if self.decoder_mode != other.decoder_mode:
            out.append(f"--set model.activation_checkpointing={self.decoder_mode}")
        if self.vision_mode != other.vision_mode:
            out.append(f"--set vision.activation_checkpointing={self.vision_mode}")
        if self.micro != other.micro:
            out.append(f"--micro-batch-size {self.micro}")
        if self.freeze != other.freeze:
            out.append(f"--set train.freeze=[{','.join(self.freeze)}]")
        return out


@dataclass
class LayoutMemory:
    layout: Layout
    weights: float  # bytes per GPU
    gradients: float
    optimizer: float
    decoder: ActivationEstimate
    vision: Optional[VisionEstimate]

    @property
    def persistent(self) -> float:
        return self.weights + self.gradients + self.optimizer

    @property
    def activations(self) -> float:
        if self.vision is None:
            return self.decoder.peak
        return max(self.decoder.peak + self.vision.held, self.vision.backward)

    @property
    def peak(self) -> float:
        return self.persistent + self.activations

    def fits(self, device_bytes: float = DEVICE_BYTES) -> bool:
        return self.peak <= device_bytes


def precision_of(cfg) -> str:
    """The precision layout a GPU run of `cfg` uses (train.precision auto = bf16 on CUDA)."""
    return cfg.train.resolved_precision("cuda")


def image_shape(cfg) -> tuple[int, int]:
    """(crop side in patches, queries per crop) of the stage's image mode: medium and
    ultra-high tiles are the projector's smallest square, high its largest."""
    sides = sorted(cfg.projector.sides().items())
    return sides[-1] if cfg.data.image_mode == "high" else sides[0]


def layout_memory(cfg, counts: StageCounts, layout: Layout) -> LayoutMemory:
    """Per-GPU bytes of `layout` for the stage `cfg` (a RunConfig) whose model `counts` describe."""
    zero1, precision, seq = layout.zero1, precision_of(cfg), cfg.data.seq_length
    weights = memory_per_rank(counts.all, layout.world, layout.ep, zero1=zero1, precision=precision).weights
    trained = memory_per_rank(counts.trainable(layout.freeze), layout.world, layout.ep, zero1=zero1,
                              precision=precision)
    decoder = activation_memory(cfg.model, seq, layout.micro, layout.decoder_mode, ep_size=layout.ep, precision=precision)
    vision = None
    if cfg.multimodal:
        side, queries = image_shape(cfg)
        crops, patches, image_tokens = worst_case_images(seq, layout.micro, side, queries)
        vision_cfg = replace(cfg.vision, activation_checkpointing=layout.vision_mode)
        vision = vision_activation_memory(vision_cfg, cfg.projector, cfg.model.hidden_size, patches, image_tokens,
                                          crops, layout.vision_mode, precision,
                                          counts.vision_trainable(layout.freeze))
    return LayoutMemory(layout, weights, trained.gradients, trained.optimizer, decoder, vision)


def _freeze_options(counts: StageCounts, base: Layout) -> list[tuple]:
    """FREEZE_OPTIONS that keep base's frozen groups, each training fewer parameters than the last."""
    options, seen = [], set()
    for option in FREEZE_OPTIONS:
        if not set(base.freeze) <= set(option):
            continue
        option = tuple(option) or base.freeze
        trainable = counts.trainable(option).total
        if trainable not in seen:
            seen.add(trainable)
            options.append(option)
    return options or [base.freeze]


def _candidates(cfg, counts: StageCounts, base: Layout, freeze: bool):
    """Layouts reachable from `base` by more expert parallelism, more recompute, a smaller
    micro-batch and (with `freeze`) more frozen groups, as (knobs changed, freeze rank, layout)."""
    experts = cfg.model.moe.num_experts
    eps = [e for e in range(base.ep, base.world + 1) if base.world % e == 0 and experts % e == 0]
    dec = DECODER_MODES[DECODER_MODES.index(base.decoder_mode):]
    vis = VISION_MODES[VISION_MODES.index(base.vision_mode):] if cfg.multimodal else (base.vision_mode,)
    micros = [m for m in range(base.micro, 0, -1) if cfg.train.global_batch_size % (m * base.world) == 0]
    freezes = _freeze_options(counts, base) if freeze else [base.freeze]
    for ep, d, v, m, (rank, f) in itertools.product(eps, dec, vis, micros, enumerate(freezes)):
        layout = Layout(base.world, ep, d, v, m, f, base.zero1)
        knobs = sum((ep != base.ep, d != base.decoder_mode, v != base.vision_mode, m != base.micro))
        yield knobs, rank, layout


def smallest_change(cfg, counts: StageCounts, base: Layout, device_bytes: float = DEVICE_BYTES,
                    freeze: bool = False) -> list[LayoutMemory]:
    """Fitting layouts near `base` at its world size, smallest change first: fewest frozen
    groups (frozen groups are tried only with `freeze`: a fine-tuning choice, not a pretraining
    one), then fewest knobs changed, then (in this order of preference) expert parallelism,
    decoder recompute, vision recompute, micro-batch. Empty when none fits."""
    found: dict[Layout, tuple] = {}
    for knobs, rank, layout in _candidates(cfg, counts, base, freeze):
        if layout == base or layout in found:
            continue
        order = (rank, knobs, layout.ep, DECODER_MODES.index(layout.decoder_mode),
                 VISION_MODES.index(layout.vision_mode), -layout.micro)
        found[layout] = order
    fitting = [layout_memory(cfg, counts, layout) for layout in sorted(found, key=found.get)]
    return [m for m in fitting if m.fits(device_bytes)]


def smallest_world(cfg, counts: StageCounts, base: Layout, device_bytes: float = DEVICE_BYTES,
                   limit: int = 1 << 16) -> Optional[LayoutMemory]:
    """The layout at the smallest world size (doublings of base.world, a multiple of the global
    batch's micro-batches) where base's other choices fit; None if none up to `limit` does."""
    world = base.world * 2
    while world <= limit:
        if cfg.train.global_batch_size % (base.micro * world) == 0:
            memory = layout_memory(cfg, counts, replace(base, world=world))
            if memory.fits(device_bytes):
                return memory
        world *= 2
    return None


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f}"


__all__ = ["DEVICE_BYTES", "Layout", "LayoutMemory", "gib", "layout_memory", "smallest_change", "smallest_world"]
