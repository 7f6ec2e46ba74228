"""The stage-2 stream: language + multimodal sources mixed by weight, packed into sequences,
split across data-parallel ranks, resumable.

Mixing and reading. planner.py: draw j takes the next document of source k = choose(j), a pure
function of (seed, j) (mix_by="samples"). With mix_by="tokens" the weights are token shares
instead: draw j goes to the source whose tokens drawn so far are furthest below its share
(smallest tokens_k / weight_k, ties to the first), so sources of long and short samples still
deliver a paper's per-kind token budgets; the per-source token counts are part of the state.
Sources are read in their own order (LanguageSource: index 0, 1, ...;
ShardSource: seeded unit order per epoch, see sources.py); samples the length index marks bad are
reported (skip+count or DataError) and counted by the bad-data guard.

Packing. A sequence has S = seq_length token slots plus one label slot (labels = tokens shifted
by one, as Megatron's GPTDataset):
- a text document fills the remaining space and, if longer, continues in the next sequence (its
  next token is also the label of the last slot, Megatron's one-token overlap);
- a multimodal sample goes in whole when it fits the remaining space; otherwise the sequence is
  closed (padded: pad tokens, no loss) and the sample starts the next sequence;
- a multimodal sample longer than S (on an empty sequence) is, with too_long="truncate"
  (default), cut at the longest prefix <= S tokens that does not end inside an image block (text
  boundary), the rest dropped and the sequence closed; if that prefix is empty (an image block
  alone exceeds S), or with too_long="skip", the sample is skipped. Both are counted in stats.
No image block is ever cut in two, and image tokens never sit in the label slot.

Data parallelism. Packing needs token counts only, and the length indexes hold them (text tokens
and image sizes per sample), so every rank plans the whole global batch from the indexes alone
and reads, tokenizes and decodes only the samples of its own sequences: global batch k (G
sequences) covers packed sequences [c, c+G) (c = consumed_samples), rank r of W owns
[c + r*G/W, c + (r+1)*G/W) as G/(W*mbs) micro-batches, the rule of MicroBatchIterator.
Concatenating the ranks' micro-batches rank-major gives the single-rank stream, for any W. An
image whose pixels do not decode (the index knows, so the guard counts it on every rank) keeps
its planned tokens: its owner reports it and uses a black image of the planned size with no loss
on its sample, so the token stream stays the same on every rank.

Resume. The state at a global-batch boundary is small: the draw counter j, each source's cursor,
the pending document (the one that did not fit: its source, its cursor and, for a text document
split across sequences, the token offset) and the guard's windows. load_state_dict() restores
them from the indexes without reading data, so a resumed run sees exactly the sequences of an
uninterrupted one. Given only consumed_samples, the iterator replays the plan from the start
(index lookups only).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from aria_train.data.errors import DataError
from aria_train.data.multimodal.errors import LOG, BadSample, BadSamples
from aria_train.data.multimodal.guard import BadDataGuard
from aria_train.data.multimodal.language import LanguageSource
from aria_train.data.multimodal.planner import PlanDoc, Planner, SequencePlan
from aria_train.data.multimodal.render import ImageConfig, RenderedSample, SampleRenderer
from aria_train.data.multimodal.sources import ShardSource

TOO_LONG_POLICIES = ("truncate", "skip")
MIX_BY = ("samples", "tokens")
_CACHED_DOCS = 8


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
    queries: Optional[list] = None  # per media item (crop, clip, audio clip), in token order
    videos: list = field(default_factory=list)  # materialized clips: (tubelets [n, 3*f*p*p], (t, h, w))
    audio: list = field(default_factory=list)  # materialized audio clips: (patches [n, dim], (h, w))
    media_order: list = field(default_factory=list)  # "image" | "video" | "audio" per item, in token order

    @property
    def images(self) -> list:
        return [img for p in self.placed for img in p.sample.images if img.end <= p.length]


def _check_sources(sources: Sequence) -> list:
    if not sources:
        raise DataError("multimodal mixture: no sources")
    weights = []
    for item in sources:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError("multimodal mixture: sources must be (weight, source) pairs")
        weights.append(float(item[0]))
        if not isinstance(item[1], (LanguageSource, ShardSource)):
            raise DataError(f"multimodal mixture: unknown source type {type(item[1]).__name__}")
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise DataError(f"multimodal mixture: weights {weights} must be >= 0 with a positive sum")
    return weights


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise DataError(f"{name}={value!r}: expected one of {', '.join(choices)}")


class MultimodalMixture:
    """sources: [(weight, LanguageSource | ShardSource)]; a pure function of the seed and the
    sources' data (see the module notes). formats: the layouts to accept (None = all);
    max_bad_fraction / bad_sample_window: the bad-data guard (guard.py)."""

    def __init__(self, sources: Sequence[tuple], seq_length: int, seed: int, tokenizer=None,
                 image_cfg: Optional[ImageConfig] = None, renderer: Optional[SampleRenderer] = None,
                 on_bad_sample: str = "skip", too_long: str = "truncate", logger: Optional[logging.Logger] = None,
                 max_consecutive_skips: int = 1000, formats: Optional[Sequence[str]] = None,
                 max_bad_fraction: float = 0.05, bad_sample_window: int = 1000, mix_by: str = "samples",
                 log_bad: tuple[int, bool] = (10, True)):  # BadSamples' (log_first, log_shared)
        weights = _check_sources(sources)
        if int(seq_length) < 2:
            raise DataError(f"multimodal mixture: seq_length {seq_length} must be >= 2")
        _check_choice("too_long", too_long, TOO_LONG_POLICIES)
        _check_choice("mix_by", mix_by, MIX_BY)
        if renderer is None:
            if tokenizer is None:
                raise DataError("multimodal mixture: give a tokenizer or a renderer")
            renderer = SampleRenderer(tokenizer, image_cfg)
        self.renderer = renderer
        self.tokenizer = renderer.tokenizer
        self.sources = [s for _, s in sources]
        self.weights = np.asarray(weights) / sum(weights)
        self.seq_length = int(seq_length)
        self.seed = int(seed)
        self.logger = logger or LOG
        # One counter for every source: replaces the shard sources' own.
        self.bad = BadSamples(on_bad_sample, self.logger, log_first=log_bad[0], log_shared=log_bad[1])
        for src in self.sources:
            if isinstance(src, ShardSource):
                src.bad = self.bad
                src.use_index(self.tokenizer)
        self.guard = BadDataGuard(max_bad_fraction, bad_sample_window)
        self.planner = Planner(self.sources, self.weights, self.seq_length, self.seed, renderer.image_cfg,
                               renderer.add_eod, self.bad, self.guard, formats, too_long, max_consecutive_skips,
                               self.logger, mix_by)
        self.stats = self.planner.stats
        try:
            self.pad = self.tokenizer.pad
        except DataError:
            self.pad = self.tokenizer.eod
        self.unk = self.tokenizer.unk if self.tokenizer.unk >= 0 else self.pad
        self._docs: OrderedDict = OrderedDict()  # recently read documents (a text one spans sequences)
        self._initial = self.state_dict()

    @property
    def _sequences(self) -> int:
        return self.planner.sequences

    def choose(self, draw: int) -> int:
        return self.planner.choose(draw)

    def next_plan(self) -> SequencePlan:
        return self.planner.next_plan()

    def next_sequence(self, materialize: bool = True) -> PackedSequence:
        """The next sequence, its tokens read (and its pixels decoded with materialize)."""
        return self.render(self.next_plan(), materialize)

    def skip(self, n: int) -> None:
        """Advance n sequences without reading anything (index lookups only)."""
        for _ in range(n):
            self.next_plan()

    # -- reading one rank's sequences ------------------------------------------------------------
    def _content(self, doc: PlanDoc) -> tuple:
        """(tokens, target, RenderedSample) of a planned document, read on this rank."""
        cache_key = (doc.source, tuple(sorted(doc.cursor.items())))
        if cache_key in self._docs:
            self._docs.move_to_end(cache_key)
            return self._docs[cache_key]
        src = self.sources[doc.source]
        if doc.is_text:
            tokens, target = src.document(doc.cursor["index"])
            forged = tokens == self.renderer.img
            if forged.any():  # a corpus must not place image tokens without images
                self.stats["forged_image_tokens"] += int(forged.sum())
                tokens = np.where(forged, self.unk, tokens)
            rendered = RenderedSample(tokens, target, [], src.name, str(doc.cursor["index"]), "text")
        else:
            try:
                rendered = self.renderer.plan(src.load(doc.unit, doc.record))
            except BadSample as err:
                raise DataError(f"{doc.shard}:{doc.key} no longer reads as its length index says ({err}); "
                                f"rebuild the index: python tools/build_mm_shards.py index {doc.shard}")
        if len(rendered) != doc.length:
            raise DataError(f"{doc.shard}:{doc.key} has {len(rendered)} tokens, its length index says "
                            f"{doc.length}; rebuild the index: python tools/build_mm_shards.py index {doc.shard}")
        self._docs[cache_key] = (rendered.tokens, rendered.target, rendered)
        while len(self._docs) > _CACHED_DOCS:
            self._docs.popitem(last=False)
        return self._docs[cache_key]

    def render(self, plan: SequencePlan, materialize: bool = True) -> PackedSequence:
        """The tokens of a planned sequence (read on this rank), and its crops with materialize."""
        S = self.seq_length
        tokens = np.full(S + 1, self.pad, dtype=np.int64)
        target = np.zeros(S + 1, dtype=bool)
        starts = np.zeros(S + 1, dtype=bool)  # document boundaries (data.reset_attention_mask)
        placed = []
        used = 0
        for seg in plan.segments:
            doc_tokens, doc_target, rendered = self._content(seg.doc)
            lo, hi = seg.doc_offset, seg.doc_offset + seg.take
            tokens[seg.dest : seg.dest + seg.take] = doc_tokens[lo:hi]
            target[seg.dest : seg.dest + seg.take] = doc_target[lo:hi]
            starts[seg.dest] = True  # every placed piece (document, sample) starts a document
            used = max(used, seg.dest + seg.take)
            if not seg.doc.is_text:
                placed.append(PlacedSample(seg.dest, seg.take, rendered, truncated=seg.truncated))
        starts[used] = used < S  # the padding is a piece of its own
        if plan.label is not None:
            doc, position = plan.label
            doc_tokens, doc_target, _ = self._content(doc)
            tokens[S], target[S] = doc_tokens[position], doc_target[position]
        seq = PackedSequence(plan.index, tokens, target, placed, starts)
        if materialize:
            self._materialize(seq)
        return seq

    def _materialize(self, seq: PackedSequence) -> None:
        crops, grid, queries = [], [], []
        for p in seq.placed:
            for img in p.sample.images:
                if img.end > p.length:
                    continue  # dropped by truncation
                if img.kind != "image":  # a clip or an audio clip (IMP's options): one item
                    (seq.videos if img.kind == "clip" else seq.audio).append(self._load_media(seq, p, img))
                    queries.append(img.queries)
                    seq.media_order.append("video" if img.kind == "clip" else "audio")
                    continue
                try:
                    out = self.renderer.load_crops(img)
                except BadSample as err:
                    self.bad.report(p.sample.shard, p.sample.key, str(err), shared=False)  # raises in error mode
                    out = self.renderer.blank_crops(img)
                    seq.target[p.offset : p.offset + p.length] = False  # no loss on this sample
                crops.extend(out.crops)
                grid.extend(out.grid)
                queries.extend([out.queries] * out.num_crops)
                seq.media_order.extend(["image"] * out.num_crops)
        seq.crops, seq.grid, seq.queries = crops, grid, queries

    def _load_media(self, seq: PackedSequence, placed: PlacedSample, item) -> tuple:
        """A clip's tubelets or an audio clip's patches; silence / black frames without loss when
        its samples do not decode (counted as bad, like an image)."""
        try:
            return self.renderer.load_media(item)
        except BadSample as err:
            self.bad.report(placed.sample.shard, placed.sample.key, str(err))  # raises in error mode
            seq.target[placed.offset : placed.offset + placed.length] = False
            return self.renderer.load_media(item, blank=True)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        p = self.planner
        return {
            "seed": self.seed,
            "seq_length": self.seq_length,
            "source_names": [s.name for s in self.sources],
            "sequences": p.sequences,
            "draws": p.draws,
            "tokens": list(p.tokens),
            "sources": [s.state_dict() for s in self.sources],
            "pending": p.pending_state(),
            "bad_samples": self.bad.state_dict(),
            "guard": self.guard.state_dict(),
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
        self.bad.load_state_dict(state.get("bad_samples", {}))
        self.guard.load_state_dict(state.get("guard", {}))
        self.planner.restore_pending(state.get("pending"))  # after the guard: a now-bad one counts
        for src, s in zip(self.sources, sources):
            src.load_state_dict(s)
        self.planner.draws, self.planner.sequences = draws, sequences
        self.planner.tokens = [int(t) for t in state.get("tokens", [0] * len(self.sources))]
        stats = state.get("stats")
        if stats:
            self.stats.update({k: (list(v) if isinstance(v, list) else v) for k, v in stats.items()})

    def reset(self) -> None:
        """Back to the start of the stream."""
        self.load_state_dict(self._initial)
