"""The packing plan of the multimodal stream: which document pieces go where in each sequence,
computed from lengths alone (the length indexes of the shards, the lengths of language
documents), so every rank can afford to plan the whole global batch and read only its share.

Draw j of the stream takes the next document of source k = choose(j), a pure function of
(seed, j) (mix_by="samples"), or, with mix_by="tokens", of the tokens drawn so far per source
(the source furthest below its token share). A shard source's next sample is looked up in its index: unreadable samples (and
damaged shards) are reported and skipped within the draw, bad ones (schema, layout, an unreadable
image header, a layout not in `formats`) are reported and cost the draw. Every sample counts for
the bad-data guard (guard.py). The packing rules are the module notes of mixture.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from aria_train.data.errors import DataError
from aria_train.data.multimodal.draws import SourceChoices
from aria_train.data.multimodal.guard import BadDataGuard
from aria_train.data.multimodal.index import BAD, GOOD, UNREADABLE
from aria_train.data.multimodal.language import LanguageSource

_UNREADABLE = object()  # _mm_doc: skipped within the draw

@dataclass(slots=True)
class PlanDoc:
    source: int
    cursor: dict  # the source's cursor of this document
    length: int  # tokens, EOD included
    is_text: bool
    unit: int = -1  # multimodal: the unit and stored position of the sample
    record: int = -1
    shard: str = ""
    key: str = ""


@dataclass(slots=True)
class Segment:
    doc: PlanDoc
    doc_offset: int  # first token of the document placed
    dest: int  # its slot in the sequence
    take: int  # tokens placed
    truncated: bool = False


@dataclass
class SequencePlan:
    index: int  # global packed-sequence index
    segments: list = field(default_factory=list)
    label: Optional[tuple] = None  # (doc, position): the token in the label slot S, if any
    used: int = 0


class Planner:
    def __init__(self, sources: Sequence, weights: np.ndarray, seq_length: int, seed: int, image_cfg, add_eod: bool,
                 bad, guard: BadDataGuard, formats: Optional[Sequence[str]] = None, too_long: str = "truncate",
                 max_consecutive_skips: int = 1000, logger: Optional[logging.Logger] = None,
                 mix_by: str = "samples"):
        self.sources = list(sources)
        self._is_text = [isinstance(s, LanguageSource) for s in self.sources]
        self._cum = np.cumsum(weights)
        self._choices = SourceChoices(seed, self._cum)
        self._weights = np.asarray(weights, dtype=float)
        self.mix_by = mix_by
        self.tokens = [0] * len(self.sources)  # tokens drawn per source (mix_by="tokens" chooses by them)
        self.seq_length = int(seq_length)
        self.seed = int(seed)
        self.image_cfg = image_cfg
        self.eod = 1 if add_eod else 0
        self.bad = bad
        self.guard = guard
        self.formats = None if formats is None else tuple(formats)
        self.too_long = too_long
        self.max_consecutive_skips = max_consecutive_skips
        self.logger = logger
        self.stats = {"sequences": 0, "draws": 0, "docs": [0] * len(self.sources), "truncated": 0,
                      "too_long_skipped": 0, "pad_tokens": 0, "forged_image_tokens": 0}
        self.draws = 0
        self.sequences = 0
        self.pending = None  # [PlanDoc, offset]

    # -- drawing -------------------------------------------------------------------------------
    def choose(self, draw: int) -> int:
        """Source of draw `draw`: a pure function of (seed, draw), u = default_rng([seed, draw])
        .random() against the cumulative weights (draws.py computes it in blocks); with
        mix_by="tokens", the source whose drawn tokens are furthest below its weight."""
        if self.mix_by == "tokens":
            ratios = [t / w if w > 0 else np.inf for t, w in zip(self.tokens, self._weights)]
            return int(np.argmin(ratios))
        return self._choices(draw)

    def _reject(self, k: int, shard: str, key: str, reason: str, kind: str = "bad sample") -> None:
        self.bad.report(shard, key, reason, kind=kind)  # raises in on_bad_sample="error" mode
        self.guard.bad(self.sources[k].name, f"{shard}:{key}" if key else shard, reason)

    def _mm_doc(self, k: int, entry) -> Optional[PlanDoc]:
        """PlanDoc of a usable index entry; None (reported) when it is bad; _UNREADABLE when it
        cannot be read (the draw goes on to the next sample)."""
        src = self.sources[k]
        path, idx = src.paths[entry.unit], src.index(entry.unit)
        r = entry.record
        key, status = idx.key(r), idx.status[r]
        if status == UNREADABLE:
            self._reject(k, path, key, idx.reasons[r])
            return _UNREADABLE
        if status == BAD:
            self._reject(k, path, key, idx.reasons[r])
            return None
        if self.formats is not None and idx.formats[r] not in self.formats:
            self._reject(k, path, key, f"layout {idx.formats[r]} is not in data.mm_formats [{', '.join(self.formats)}]")
            return None
        if r in idx.pixel_errors:  # still packed: its owner trains on a black stand-in without loss
            self.guard.bad(src.name, f"{path}:{key}", idx.pixel_errors[r])
        else:
            self.guard.good(src.name)
        length = idx.sample_layout(self.image_cfg).lengths[r] + self.eod
        return PlanDoc(k, entry.cursor, length, False, entry.unit, r, path, key)

    def _read(self, k: int) -> Optional[PlanDoc]:
        src = self.sources[k]
        if self._is_text[k]:
            index = src.next_index()
            return PlanDoc(k, {"index": index}, src.length(index), True, shard=src.name, key=str(index))
        while True:
            entry = src.next_entry()
            if entry.damage:
                self._reject(k, src.paths[entry.unit], "", entry.damage, kind="bad shard")
                continue
            doc = self._mm_doc(k, entry)
            if doc is not _UNREADABLE:
                return doc

    def _draw(self) -> list:
        for _ in range(self.max_consecutive_skips):
            j = self.draws
            self.draws += 1
            k = self.choose(j)
            doc = self._read(k)
            if doc is None or doc.length == 0:
                continue
            self.stats["docs"][k] += 1
            self.tokens[k] += doc.length
            return [doc, 0]
        raise DataError(f"multimodal mixture: {self.max_consecutive_skips} draws in a row gave no usable sample")

    # -- packing -------------------------------------------------------------------------------
    def blocks(self, doc: PlanDoc) -> tuple:
        src = self.sources[doc.source]
        idx = src.index(doc.unit)
        return idx.sample_layout(self.image_cfg).blocks(idx, doc.record)

    def _longest_prefix(self, doc: PlanDoc, limit: int) -> int:
        """Largest cut <= limit that does not fall inside an image block."""
        cut = min(limit, doc.length)
        for start, end in self.blocks(doc):
            if start < cut < end:
                return start
        return cut

    def next_plan(self) -> SequencePlan:
        S = self.seq_length
        plan = SequencePlan(self.sequences)
        used = skipped = 0
        while used < S:
            if self.pending is None:
                self.pending = self._draw()
            doc, off = self.pending
            space, n = S - used, doc.length
            if doc.is_text:
                take = min(n - off, space)
                plan.segments.append(Segment(doc, off, used, take))
                used += take
                if off + take < n:  # continues in the next sequence; its next token is the last label
                    plan.label = (doc, off + take)
                    self.pending[1] = off + take
                    break
                self.pending = None
                continue
            if n <= space:
                plan.segments.append(Segment(doc, 0, used, n))
                used += n
                self.pending = None
                continue
            if used > 0:
                break  # the sample starts the next sequence
            self.pending = None  # longer than a whole sequence
            cut = self._longest_prefix(doc, S) if self.too_long == "truncate" else 0
            if cut == 0:
                skipped += 1
                if skipped > self.max_consecutive_skips:
                    raise DataError(f"multimodal mixture: {skipped} samples in a row longer than seq_length {S}")
                self.stats["too_long_skipped"] += 1
                if self.logger is not None:
                    self.logger.info(f"multimodal sample {doc.shard}:{doc.key} skipped: {n} tokens > seq_length {S}")
                continue
            plan.segments.append(Segment(doc, 0, 0, cut, truncated=True))
            self.stats["truncated"] += 1
            used = cut
            break  # what follows a truncated sample would be predicted from a cut text: close
        self.stats["pad_tokens"] += S - used
        plan.used = used
        self.sequences += 1
        self.stats["sequences"] = self.sequences
        self.stats["draws"] = self.draws
        return plan

    # -- state ---------------------------------------------------------------------------------
    def pending_state(self) -> Optional[dict]:
        if self.pending is None:
            return None
        doc, off = self.pending
        return {"source": doc.source, "cursor": dict(doc.cursor), "offset": int(off)}

    def restore_pending(self, pending: Optional[dict]) -> None:
        self.pending = None
        if pending is None:
            return
        k = int(pending["source"])
        src = self.sources[k]
        if isinstance(src, LanguageSource):
            index = int(pending["cursor"]["index"])
            doc = PlanDoc(k, {"index": index}, src.length(index), True, shard=src.name, key=str(index))
        else:
            src.load_state_dict(pending["cursor"])  # the entry at the cursor (read from its index)
            entry = src.entry_at(pending["cursor"])
            idx, r = src.index(entry.unit), entry.record
            fmt_ok = self.formats is None or idx.formats[r] in self.formats
            if idx.status[r] != GOOD or not fmt_ok:  # the data changed since the checkpoint
                reason = idx.reasons[r] or f"layout {idx.formats[r]} is not in data.mm_formats"
                self._reject(k, src.paths[entry.unit], idx.key(r), f"{reason} (pending at the checkpoint)")
                return
            length = idx.sample_layout(self.image_cfg).lengths[r] + self.eod
            doc = PlanDoc(k, entry.cursor, length, False, entry.unit, r, src.paths[entry.unit], idx.key(r))
        self.pending = [doc, int(pending["offset"])]
