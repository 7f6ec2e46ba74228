"""Stage 0's stream of batches: each step the schedule (schedule.py) picks a (dataset, objective)
pair and that pair's stream gives its next global batch, of which this rank reads its share.

A pair's stream walks its dataset's training samples epoch by epoch, epoch e in a permutation
seeded by (train seed, pair, e); a global batch is the next `batch_size` samples of the walk
(running on into the next epoch), and rank r of W takes positions [r*b, (r+1)*b) of it, b =
batch_size / W. So the global batch does not depend on the world size, and the state (the
schedule, and each pair's epoch, position and steps) is a few integers: resume is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from aria_train.data.encoder.dataset import EncoderDataset, ImageReader
from aria_train.data.encoder.prompts import PromptRenderer
from aria_train.data.encoder.schedule import PairSchedule
from aria_train.data.errors import DataError
from aria_train.nn.image_patches import pack_images


@dataclass
class PairSpec:
    name: str  # "dataset/objective"
    objective: str  # nce | softmax
    dataset: EncoderDataset
    batch_size: int  # global
    reader: ImageReader


@dataclass
class EncoderBatch:
    """This rank's share (b samples) of one pair's global batch."""

    pair: int
    name: str
    dataset: str
    objective: str
    global_size: int
    patches: torch.Tensor  # [T, 3*p*p] the b images' patches, packed
    grid: list  # [(h, w)] per image
    weights: torch.Tensor  # [b] float32: 1, or 0 for an image that did not decode
    labels: Optional[torch.Tensor] = None  # [b] int64 (softmax)
    text_tokens: Optional[torch.Tensor] = None  # [sum of lengths] int64, packed (nce)
    text_lengths: list = field(default_factory=list)  # [b]
    texts: list = field(default_factory=list)  # [b] the texts (nce)


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, list[int]]:
    """Texts -> (ids [T] packed, lengths [n]); each cut to max_length, an empty text is one EOS."""
    pieces = [(tokenizer.encode(t) if t else [])[:max_length] or [tokenizer.eos] for t in texts]
    return torch.tensor([i for p in pieces for i in p], dtype=torch.int64), [len(p) for p in pieces]


class PairStream:
    def __init__(self, pair: int, size: int, batch_size: int, seed: int, rank: int, world: int):
        if batch_size % world:
            raise DataError(f"pair batch size {batch_size} does not split over {world} ranks")
        self.pair, self.size, self.batch_size, self.seed = pair, size, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.position = 0, 0
        self._order = (-1, None)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, self.pair, epoch]).permutation(self.size))
        return self._order[1]

    def next_share(self) -> list[tuple[int, int, int]]:
        """(epoch, position, training-sample index) of this rank's share of the next global batch."""
        per_rank = self.batch_size // self.world
        lo = self.rank * per_rank
        out = []
        for k in range(self.batch_size):
            if lo <= k < lo + per_rank:
                out.append((self.epoch, self.position, int(self._permutation(self.epoch)[self.position])))
            self.position += 1
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class PairBatches:
    """The training data of stage 0 (a Stateful part of the checkpoint)."""

    def __init__(self, specs: list[PairSpec], schedule: PairSchedule, tokenizer, prompts: PromptRenderer,
                 text_max_length: int, seed: int, rank: int = 0, world: int = 1):
        self.specs, self.schedule, self.tokenizer, self.prompts = specs, schedule, tokenizer, prompts
        self.text_max_length = text_max_length
        self.streams = [PairStream(p, len(s.dataset.train_ids), s.batch_size, seed, rank, world)
                        for p, s in enumerate(specs)]
        self.steps = [0] * len(specs)  # optimizer steps taken on each pair

    def next_global_batch(self) -> EncoderBatch:
        pair = self.schedule.next()
        self.steps[pair] += 1
        spec = self.specs[pair]
        share = self.streams[pair].next_share()
        crops, weights, labels, texts = [], [], [], []
        for epoch, position, index in share:
            unit, local = (int(v) for v in spec.dataset.train_ids[index])
            crop, weight = spec.reader.crop(spec.dataset, unit, local)
            _, label, caption = spec.dataset.sample(unit, local)
            crops.append(crop)
            weights.append(weight)
            labels.append(label if label is not None else -1)
            if spec.objective == "nce":
                texts.append(caption if spec.dataset.kind == "image_text" else
                             self.prompts.render(spec.dataset.class_names[label], pair, epoch, position))
        patches, grid = pack_images(crops, spec.reader.patch_size)
        batch = EncoderBatch(pair, spec.name, spec.dataset.name, spec.objective, spec.batch_size,
                             patches.float().contiguous(), [tuple(g) for g in grid],
                             torch.tensor(weights, dtype=torch.float32))
        if spec.objective == "softmax":
            batch.labels = torch.tensor(labels, dtype=torch.int64)
        else:
            batch.text_tokens, batch.text_lengths = encode_texts(self.tokenizer, texts, self.text_max_length)
            batch.texts = texts
        return batch

    def state_dict(self) -> dict:
        return {"schedule": self.schedule.state_dict(), "streams": [s.state_dict() for s in self.streams],
                "steps": list(self.steps), "pairs": [s.name for s in self.specs]}

    def load_state_dict(self, state: dict) -> None:
        if "schedule" not in state:
            raise DataError("the checkpoint holds no stage-0 data position (schedule and pair streams); "
                            "it was not written by a stage-0 run")
        if list(state["pairs"]) != [s.name for s in self.specs]:
            raise DataError(f"the checkpoint trained the pairs {state['pairs']}, this run has "
                            f"{[s.name for s in self.specs]}; resume with the same encoder.pairs")
        self.schedule.load_state_dict(state["schedule"])
        for stream, saved in zip(self.streams, state["streams"]):
            stream.load_state_dict(saved)
        self.steps = [int(n) for n in state["steps"]]
