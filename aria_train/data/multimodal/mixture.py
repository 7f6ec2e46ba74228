"""The stage-2 stream: language + multimodal sources mixed by weight, packed into sequences,
split across data-parallel ranks, resumable.

Mixing. Draw j of the stream (j = 0, 1, ...) takes the next document of source k, where k is
drawn from the weights by a generator seeded with (seed, j): the choice is a pure function of
(seed, j). Each source is read in its own order (LanguageSource: index 0, 1, ... of its dataset,
wrapping; ShardSource: seeded shard order per epoch, samples in stored order). A multimodal sample
that is bad (schema, unreadable image header) is reported (skip+count or DataError) and the next
draw is taken; nothing else is skipped.

Packing. A sequence has S = seq_length token slots plus one label slot (labels = tokens shifted
by one, as Megatron's GPTDataset):
- a text document fills the remaining space and, if longer, continues in the next sequence (its
  next token is also the label of the last slot, Megatron's one-token overlap);
- a multimodal sample goes in whole when it fits the remaining space; otherwise the sequence is
  closed (padded: pad tokens, no loss) and the sample starts the next sequence;
- a multimodal sample longer than S (on an empty sequence) is, with too_long="truncate"
  (default), cut at the longest prefix <= S tokens that does not end inside an image block (text
  boundary), the rest dropped and the sequence closed; if that prefix is empty (an image block
  alone exceeds S), or with too_long="skip", the sample is skipped. Both are counted in stats().
No image block is ever cut in two, and image tokens never sit in the label slot.

Data parallelism. Packing depends on token counts only, which need image sizes but no pixels, so
every rank packs the whole global batch (JSON, tokenizer, image headers) and decodes pixels only
for its own sequences: global batch k (G sequences) covers packed sequences [c, c+G) (c =
consumed_samples), rank r of W owns [c + r*G/W, c + (r+1)*G/W) as G/(W*mbs) micro-batches, the
rule of MicroBatchIterator. Concatenating the ranks' micro-batches rank-major gives the
single-rank stream, for any W. An image whose header read but whose pixels do not decode is found
only by the owning rank: it is reported there and (skip mode) replaced by a black image of the
planned size with no loss on its sample, so the token stream stays the same on every rank.

Resume. The state at a global-batch boundary is small: the draw counter j, each source's cursor,
and the pending document (the one that did not fit: its source, its own cursor and, for a text
document split across sequences, the token offset). load_state_dict() seeks the sources (tar
headers only) and re-reads the pending document, so a resumed run sees exactly the sequences of
an uninterrupted one. Given only consumed_samples (no mixture state), the iterator replays the
stream from the start without decoding pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from aria_train.data.errors import DataError
from aria_train.data.multimodal.errors import LOG, BadSample, BadSamples
from aria_train.data.multimodal.render import ImageConfig, RenderedSample, SampleRenderer
from aria_train.data.multimodal.shards import ShardSource

TOO_LONG_POLICIES = ("truncate", "skip")


class LanguageSource:
    """Documents from a dataset of token sequences: dataset[i] is a 1-D sequence of token ids
    (a list, numpy array or tensor, e.g. megatron's IndexedDataset), or a GPTDataset sample dict
    (tokens + labels: the chunk is tokens followed by labels[-1]; loss_mask is kept). Read in
    index order 0, 1, ..., wrapping around (GPTDataset has shuffled already). cursor = {"index"}."""

    kind = "language"

    def __init__(self, dataset, name: str = "language", append_eod: Optional[int] = None):
        if dataset is None or len(dataset) == 0:
            raise DataError(f"language source {name}: the dataset is empty")
        self.dataset = dataset
        self.name = name
        self.append_eod = append_eod
        self._index = 0

    def read(self) -> tuple[np.ndarray, np.ndarray, dict]:
        """(tokens int64 [L], target bool [L], cursor of this document)."""
        cursor = {"index": self._index}
        item = self.dataset[self._index % len(self.dataset)]
        self._index += 1
        if isinstance(item, dict):
            tokens = np.asarray(torch.as_tensor(item["tokens"]).cpu(), dtype=np.int64)
            target = np.ones(len(tokens), dtype=bool)
            if "labels" in item:
                labels = np.asarray(torch.as_tensor(item["labels"]).cpu(), dtype=np.int64)
                tokens = np.concatenate([tokens, labels[-1:]])
                target = np.ones(len(tokens), dtype=bool)
                if "loss_mask" in item:
                    target[1:] = np.asarray(torch.as_tensor(item["loss_mask"]).cpu()) > 0
        else:
            tokens = np.asarray(torch.as_tensor(item).cpu() if isinstance(item, torch.Tensor) else item, dtype=np.int64)
            tokens = tokens.reshape(-1)
            target = np.ones(len(tokens), dtype=bool)
        if self.append_eod is not None and (len(tokens) == 0 or tokens[-1] != self.append_eod):
            tokens = np.append(tokens, np.int64(self.append_eod))
            target = np.append(target, True)
        return tokens, target, cursor

    def state_dict(self) -> dict:
        return {"index": self._index}

    def load_state_dict(self, state: dict) -> None:
        try:
            index = int(state["index"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"language source {self.name} state {state!r}: expected an 'index'")
        if index < 0:
            raise DataError(f"language source {self.name} state: index {index} is negative")
        self._index = index


@dataclass
class PlacedSample:
    offset: int  # first slot in the sequence
    length: int  # tokens placed
    sample: RenderedSample
    truncated: bool = False


@dataclass
class PackedSequence:
    index: int  # global packed-sequence index
    tokens: np.ndarray  # int64 [S+1] (the last slot is a label only)
    target: np.ndarray  # bool [S+1]
    placed: list = field(default_factory=list)  # PlacedSample of the multimodal samples, in order
    starts: Optional[np.ndarray] = None  # bool [S+1]: a packed piece (document, sample, padding) starts here
    crops: Optional[list] = None  # materialized: [3, H, W] crops in token order
    grid: Optional[list] = None
    queries: Optional[list] = None  # per crop

    @property
    def images(self) -> list:
        return [img for p in self.placed for img in p.sample.images if img.end <= p.length]


class MultimodalMixture:
    """sources: [(weight, LanguageSource | ShardSource)]; a pure function of the seed and the
    sources' data (see the module notes)."""

    def __init__(
        self,
        sources: Sequence[tuple],
        seq_length: int,
        seed: int,
        tokenizer=None,
        image_cfg: Optional[ImageConfig] = None,
        renderer: Optional[SampleRenderer] = None,
        on_bad_sample: str = "skip",
        too_long: str = "truncate",
        logger: Optional[logging.Logger] = None,
        max_consecutive_skips: int = 1000,
    ):
        if not sources:
            raise DataError("multimodal mixture: no sources")
        weights = []
        for item in sources:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise DataError("multimodal mixture: sources must be (weight, source) pairs")
            weights.append(float(item[0]))
        if any(not w >= 0 for w in weights) or sum(weights) <= 0:
            raise DataError(f"multimodal mixture: weights {weights} must be >= 0 with a positive sum")
        if int(seq_length) < 2:
            raise DataError(f"multimodal mixture: seq_length {seq_length} must be >= 2")
        if too_long not in TOO_LONG_POLICIES:
            raise DataError(f"too_long={too_long!r}: expected one of {', '.join(TOO_LONG_POLICIES)}")
        if renderer is None:
            if tokenizer is None:
                raise DataError("multimodal mixture: give a tokenizer or a renderer")
            renderer = SampleRenderer(tokenizer, image_cfg)
        self.renderer = renderer
        self.tokenizer = renderer.tokenizer
        self.sources = [s for _, s in sources]
        self.weights = np.asarray(weights) / sum(weights)
        self._cum = np.cumsum(self.weights)
        self.seq_length = int(seq_length)
        self.seed = int(seed)
        self.too_long = too_long
        self.logger = logger or LOG
        self.max_consecutive_skips = max_consecutive_skips
        self.bad = BadSamples(on_bad_sample, self.logger)  # shared: replaces the shard sources' own
        for src in self.sources:
            if isinstance(src, ShardSource):
                src.bad = self.bad
            elif not isinstance(src, LanguageSource):
                raise DataError(f"multimodal mixture: unknown source type {type(src).__name__}")
        try:
            self.pad = self.tokenizer.pad
        except DataError:
            self.pad = self.tokenizer.eod
        self.unk = self.tokenizer.unk if self.tokenizer.unk >= 0 else self.pad
        self.stats = {"sequences": 0, "draws": 0, "docs": [0] * len(self.sources), "truncated": 0,
                      "too_long_skipped": 0, "pad_tokens": 0, "forged_image_tokens": 0}
        self._draws = 0
        self._sequences = 0
        self._pending = None  # [doc, offset, source index, cursor of the doc]
        self._initial = self.state_dict()

    # -- drawing -------------------------------------------------------------------------------
    def choose(self, draw: int) -> int:
        """Source of draw `draw`: a pure function of (seed, draw)."""
        u = np.random.default_rng([self.seed, draw]).random()
        return min(int(np.searchsorted(self._cum, u, side="right")), len(self.sources) - 1)

    def _read(self, k: int) -> tuple[RenderedSample, dict]:
        src = self.sources[k]
        if isinstance(src, LanguageSource):
            tokens, target, cursor = src.read()
            forged = tokens == self.renderer.img
            if forged.any():  # a corpus must not place image tokens without images
                self.stats["forged_image_tokens"] += int(forged.sum())
                tokens = np.where(forged, self.unk, tokens)
            return RenderedSample(tokens, target, [], src.name, str(cursor["index"]), "text"), cursor
        raw, cursor = src.read()
        try:
            return self.renderer.plan(raw), cursor
        except BadSample as err:
            self.bad.report(raw.shard, raw.key, str(err))
            return None, cursor

    def _draw(self) -> list:
        for _ in range(self.max_consecutive_skips):
            j = self._draws
            self._draws += 1
            k = self.choose(j)
            doc, cursor = self._read(k)
            if doc is None or len(doc) == 0:
                continue
            self.stats["docs"][k] += 1
            return [doc, 0, k, cursor]
        raise DataError(f"multimodal mixture: {self.max_consecutive_skips} draws in a row gave no usable sample")

    # -- packing -------------------------------------------------------------------------------
    def next_sequence(self, materialize: bool = True) -> PackedSequence:
        S = self.seq_length
        tokens = np.full(S + 1, self.pad, dtype=np.int64)
        target = np.zeros(S + 1, dtype=bool)
        starts = np.zeros(S + 1, dtype=bool)  # document boundaries (data.reset_attention_mask)
        placed: list[PlacedSample] = []
        used = skipped = 0
        while used < S:
            if self._pending is None:
                self._pending = self._draw()
            doc, off, k, _ = self._pending
            space = S - used
            n = len(doc)
            starts[used] = True  # whatever is placed next starts here (a closing break unsets nothing)
            if doc.is_text:
                take = min(n - off, space)
                tokens[used : used + take] = doc.tokens[off : off + take]
                target[used : used + take] = doc.target[off : off + take]
                used += take
                if off + take < n:  # continues in the next sequence; its next token is the last label
                    tokens[S], target[S] = doc.tokens[off + take], doc.target[off + take]
                    self._pending[1] = off + take
                    break
                self._pending = None
                continue
            if n <= space:
                tokens[used : used + n], target[used : used + n] = doc.tokens, doc.target
                placed.append(PlacedSample(used, n, doc))
                used += n
                self._pending = None
                continue
            if used > 0:
                break  # the sample starts the next sequence (the padding starts here)
            self._pending = None  # longer than a whole sequence
            cut = doc.longest_prefix(S) if self.too_long == "truncate" else 0
            if cut == 0:
                skipped += 1
                if skipped > self.max_consecutive_skips:
                    raise DataError(f"multimodal mixture: {skipped} samples in a row longer than seq_length {S}")
                self.stats["too_long_skipped"] += 1
                self.logger.info(f"multimodal sample {doc.shard}:{doc.key} skipped: {n} tokens > seq_length {S}")
                continue
            tokens[:cut], target[:cut] = doc.tokens[:cut], doc.target[:cut]
            placed.append(PlacedSample(0, cut, doc, truncated=True))
            self.stats["truncated"] += 1
            used = cut
            break  # what follows a truncated sample would be predicted from a cut text: close
        self.stats["pad_tokens"] += S - used
        starts[used] = used < S  # the padding is a piece of its own
        seq = PackedSequence(self._sequences, tokens, target, placed, starts)
        self._sequences += 1
        self.stats["sequences"] = self._sequences
        self.stats["draws"] = self._draws
        if materialize:
            self._materialize(seq)
        return seq

    def _materialize(self, seq: PackedSequence) -> None:
        crops, grid, queries = [], [], []
        for p in seq.placed:
            for img in p.sample.images:
                if img.end > p.length:
                    continue  # dropped by truncation
                try:
                    out = self.renderer.load_crops(img)
                except BadSample as err:
                    self.bad.report(p.sample.shard, p.sample.key, str(err))  # raises in error mode
                    out = self.renderer.blank_crops(img)
                    seq.target[p.offset : p.offset + p.length] = False  # no loss on this sample
                crops.extend(out.crops)
                grid.extend(out.grid)
                queries.extend([out.queries] * out.num_crops)
        seq.crops, seq.grid, seq.queries = crops, grid, queries

    def skip(self, n: int) -> None:
        """Advance n sequences without decoding pixels."""
        for _ in range(n):
            self.next_sequence(materialize=False)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        pending = None
        if self._pending is not None:
            _, off, k, cursor = self._pending
            pending = {"source": k, "cursor": dict(cursor), "offset": int(off)}
        return {
            "seed": self.seed,
            "seq_length": self.seq_length,
            "source_names": [s.name for s in self.sources],
            "sequences": self._sequences,
            "draws": self._draws,
            "sources": [s.state_dict() for s in self.sources],
            "pending": pending,
            "bad_samples": self.bad.state_dict(),
            "stats": {k: (list(v) if isinstance(v, list) else v) for k, v in self.stats.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            names, seed, seq_length = state["source_names"], int(state["seed"]), int(state["seq_length"])
            sources, draws, sequences = state["sources"], int(state["draws"]), int(state["sequences"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"multimodal mixture state: missing or bad entry {err}")
        if list(names) != [s.name for s in self.sources] or len(sources) != len(self.sources):
            raise DataError(f"multimodal mixture state: saved for sources {list(names)}, "
                            f"this run has {[s.name for s in self.sources]}")
        if seed != self.seed or seq_length != self.seq_length:
            raise DataError(f"multimodal mixture state: saved with seed {seed} and seq_length {seq_length}, "
                            f"this run has {self.seed} and {self.seq_length}")
        self._pending = None
        pending = state.get("pending")
        if pending is not None:
            k = int(pending["source"])
            src = self.sources[k]
            src.load_state_dict(pending["cursor"])
            doc, cursor = self._read(k)
            if doc is None:
                raise DataError(f"multimodal mixture state: the pending sample of {src.name} no longer renders")
            self._pending = [doc, int(pending["offset"]), k, cursor]
        for src, s in zip(self.sources, sources):
            src.load_state_dict(s)
        self._draws, self._sequences = draws, sequences
        self.bad.load_state_dict(state.get("bad_samples", {}))
        stats = state.get("stats")
        if stats:
            self.stats.update({k: (list(v) if isinstance(v, list) else v) for k, v in stats.items()})

    def reset(self) -> None:
        """Back to the start of the stream."""
        self.load_state_dict(self._initial)
