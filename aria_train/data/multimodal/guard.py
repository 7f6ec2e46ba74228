"""The bad-data guard: a run whose multimodal source is mostly broken stops, instead of training
on what is left (a multimodal stage on text alone, say).

Per source, every sample read counts as good or bad (unreadable, broken layout or schema, an image
that does not decode, a layout not in data.mm_formats, a damaged shard). The run stops with one
DataError line when
- the source's last `window` reads are all in, and more than `max_fraction` of them are bad; or
- its first `first_reads` reads (100) are all bad.
The line names the source, the fraction, the most common reason and one example (shard:key):

    data: source cc3m: 21.0% of its last 1000 samples are bad (data.max_bad_fraction=0.05); most
    common: image N: cannot identify image file (208 of them), e.g. /data/cc3m/00012.tar:000120045

The guard runs in the packing plan, which every rank computes identically from the length
indexes, so every rank raises at the same draw of the same global batch: the trainer stops
before the next optimizer step and saves nothing (the last checkpoint stays the latest).
"""

from __future__ import annotations

import re
from collections import Counter, deque

from aria_train.data.errors import DataError

FIRST_READS = 100


def reason_class(reason: str) -> str:
    """What a reason has in common with its kind: numbers, addresses and object reprs dropped."""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "", reason)
    text = re.sub(r"0x[0-9a-fA-F]+", "0x", text)
    text = re.sub(r"\d+", "N", text)
    return " ".join(text.split())[:120]


class _SourceWindow:
    def __init__(self, window: int):
        self.reads = 0
        self.good = 0
        self.window = deque(maxlen=window)  # None (good) or (reason class, example) per read
        self.bad_in_window = 0
        self.classes: Counter = Counter()

    def push(self, bad) -> None:
        if len(self.window) == self.window.maxlen:
            old = self.window[0]
            if old is not None:
                self.bad_in_window -= 1
                self.classes[old[0]] -= 1
        self.window.append(bad)
        self.reads += 1
        if bad is None:
            self.good += 1
        else:
            self.bad_in_window += 1
            self.classes[bad[0]] += 1

    def most_common(self) -> tuple[str, int, str]:
        cls, count = self.classes.most_common(1)[0]
        example = next(b[1] for b in reversed(self.window) if b is not None and b[0] == cls)
        return cls, count, example


class BadDataGuard:
    def __init__(self, max_fraction: float = 0.05, window: int = 1000, first_reads: int = FIRST_READS):
        if not 0.0 <= max_fraction <= 1.0:
            raise DataError(f"data.max_bad_fraction={max_fraction} must be within [0, 1]")
        if window < 1:
            raise DataError(f"data.bad_sample_window={window} must be positive")
        self.max_fraction = float(max_fraction)
        self.window = int(window)
        self.first_reads = int(first_reads)
        self.sources: dict[str, _SourceWindow] = {}

    def _source(self, name: str) -> _SourceWindow:
        if name not in self.sources:
            self.sources[name] = _SourceWindow(self.window)
        return self.sources[name]

    def good(self, source: str) -> None:
        self._source(source).push(None)

    def bad(self, source: str, where: str, reason: str) -> None:
        """Counts a bad read; DataError when the source crosses the line."""
        s = self._source(source)
        s.push((reason_class(reason), f"{where}: {reason}"))
        if s.reads == self.first_reads and s.good == 0:
            cls, count, example = s.most_common()
            raise DataError(f"data: source {source}: its first {s.reads} samples are all bad; most common: {cls} "
                            f"({count} of them), e.g. {example}")
        full = len(s.window) == self.window
        if full and s.bad_in_window > self.max_fraction * self.window:
            cls, count, example = s.most_common()
            raise DataError(f"data: source {source}: {100.0 * s.bad_in_window / self.window:.1f}% of its last "
                            f"{self.window} samples are bad (data.max_bad_fraction={self.max_fraction:g}); most "
                            f"common: {cls} ({count} of them), e.g. {example}")

    # -- state: the windows, so a resumed run stops exactly where an uninterrupted one would ------
    def state_dict(self) -> dict:
        return {name: {"reads": s.reads, "good": s.good,
                       "window": [None if b is None else list(b) for b in s.window]}
                for name, s in self.sources.items()}

    def load_state_dict(self, state: dict) -> None:
        self.sources = {}
        for name, saved in (state or {}).items():
            s = self._source(name)
            for item in saved.get("window", [])[-self.window:]:
                s.push(None if item is None else tuple(item))
            s.reads, s.good = int(saved["reads"]), int(saved["good"])
