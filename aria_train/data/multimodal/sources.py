"""ShardSource: an endless, resumable stream of samples from tar shards or JSON / JSONL files.

Epoch e visits the units (shards / files) in a seeded permutation (or in order with
shuffle_shards=False); a shard's samples come in stored order (its writer shuffled them), a JSON
file's records in a permutation seeded by (seed, epoch, file), since such files are often sorted
by their origin. cursor = {"epoch", "shard" (position in the epoch's unit order), "sample"
(position in the unit's read order)} of the next sample.

Two ways to walk the same cursor:
- read(): the next readable sample, read sequentially (tools, inspection; no index needed);
- next_entry() / load(): what the training stream uses. next_entry() answers from the units'
  length indexes (index.py) without touching the data, and load() then reads one sample's bytes
  by their offsets; so packing on every rank costs index lookups, and a rank reads only the
  samples it trains on.
"""

from __future__ import annotations

import glob
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from aria_train.data.errors import DataError
from aria_train.data.multimodal.errors import BadSample, BadSamples
from aria_train.data.multimodal.index import UnitIndex, load_index, tokenizer_fingerprint
from aria_train.data.multimodal.index_build import ensure_indexes, image_root_of
from aria_train.data.multimodal.json_records import ImageFolder, JSON_SUFFIXES, is_json_unit, read_record, record_spans
from aria_train.data.multimodal.layouts import RawSample, sample_from_members
from aria_train.data.multimodal.tar_io import MemberReader, read_shard, wanted

_CACHED_INDEXES = 4


def list_shards(shards: Union[str, os.PathLike, Sequence]) -> list[str]:
    """A directory (its *.tar, sorted, or else its *.json / *.jsonl), a glob pattern, a file, or
    a list of any of them."""
    if isinstance(shards, (str, os.PathLike)):
        text = str(shards)
        if os.path.isdir(text):
            found = sorted(glob.glob(os.path.join(text, "*.tar")))
            if not found:
                found = sorted(p for s in JSON_SUFFIXES for p in glob.glob(os.path.join(text, "*" + s)))
        elif any(c in text for c in "*?["):
            found = sorted(glob.glob(text))
        else:
            found = [text]
        if not found:
            raise DataError(f"shards {text}: no .tar shard (nor .json / .jsonl file) found")
        return found
    out = []
    for item in shards:
        out.extend(list_shards(item))
    if not out:
        raise DataError("shards: empty list")
    return out


@dataclass
class Entry:
    """One step of next_entry(): a sample's place, or the end of a damaged unit."""

    unit: int  # position in ShardSource.paths
    record: int  # position in the unit's stored order (-1 for a damage report)
    cursor: dict
    damage: str = ""


class ShardSource:
    def __init__(self, shards, name: Optional[str] = None, seed: int = 0, shuffle_shards: bool = True,
                 bad: Optional[BadSamples] = None, image_root: Optional[str] = None, build_indexes: bool = True):
        self.paths = list_shards(shards)
        self._json = [is_json_unit(p) for p in self.paths]
        self.name = name or os.path.basename(os.path.dirname(self.paths[0]) or self.paths[0])
        self.seed = int(seed)
        self.shuffle_shards = shuffle_shards
        self.bad = bad if bad is not None else BadSamples()
        self.image_root = image_root
        self.build_indexes = build_indexes  # False: a run indexed every unit already (ensure_indexes)
        self.kind = "multimodal"
        self._cursor = {"epoch": 0, "shard": 0, "sample": 0}
        self._it = None
        self._tok_hash: Optional[str] = None
        self._indexes: OrderedDict = OrderedDict()
        self._sizes: dict = {}  # unit -> number of samples (index-free reading of JSON units)
        self._spans: dict = {}
        self._perms: dict = {}  # (unit, epoch) -> record permutation of a JSON unit
        self._epoch_order = (-1, [])
        self._reader = MemberReader()
        self._empty_units = 0  # units passed in a row without a sample

    # -- order ---------------------------------------------------------------------------------
    def _order(self, epoch: int) -> list[int]:
        if self._epoch_order[0] != epoch:
            order = list(range(len(self.paths)))
            if self.shuffle_shards:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(self.paths)).tolist()
            self._epoch_order = (epoch, order)
        return self._epoch_order[1]

    def _record(self, unit: int, epoch: int, position: int, size: int) -> int:
        """Stored position of the position-th sample read from a unit in an epoch."""
        if not self.shuffle_shards or not self._json[unit]:
            return position
        perm = self._perms.get((unit, epoch))
        if perm is None:
            if len(self._perms) >= _CACHED_INDEXES:
                self._perms.pop(next(iter(self._perms)))
            perm = self._perms[(unit, epoch)] = np.random.default_rng([self.seed, epoch, unit]).permutation(size)
        return int(perm[position])

    # -- the indexed stream (training) --------------------------------------------------------
    def use_index(self, tokenizer) -> None:
        """Read through length indexes made with this tokenizer (built here, in this process, if
        missing or stale, unless build_indexes=False)."""
        if self.build_indexes:
            ensure_indexes(self.paths, tokenizer, self.image_root)
        self._tok_hash = tokenizer_fingerprint(tokenizer)
        self._indexes.clear()

    def index(self, unit: int) -> UnitIndex:
        if self._indexes and next(reversed(self._indexes)) == unit:  # the unit being read
            return self._indexes[unit]
        if self._tok_hash is None:
            raise DataError(f"multimodal source {self.name}: use_index(tokenizer) before reading entries")
        idx = self._indexes.pop(unit, None)
        if idx is None:
            path = self.paths[unit]
            idx = load_index(path, self._tok_hash, image_root_of(path, self.image_root))
            while len(self._indexes) >= _CACHED_INDEXES:
                self._indexes.popitem(last=False)
        self._indexes[unit] = idx
        return idx

    def next_entry(self) -> Entry:
        """The sample at the cursor (good or not, from the index), or a damaged unit's report;
        advances the cursor. Bad samples are the caller's to count (the bad-data guard)."""
        while True:
            c = self._cursor
            unit = self._order(c["epoch"])[c["shard"]]
            idx = self.index(unit)
            if c["sample"] < len(idx):
                entry = Entry(unit, self._record(unit, c["epoch"], c["sample"], len(idx)), dict(c))
                c["sample"] += 1
                self._empty_units = 0
                return entry
            if idx.damage and c["sample"] == len(idx):  # reported once, after the unit's samples
                c["sample"] += 1
                self._empty_units = 0
                return Entry(unit, -1, dict(c), idx.damage)
            self._empty_units += 1
            if self._empty_units > len(self.paths):  # would loop forever
                raise DataError(f"multimodal source {self.name}: no sample in any of its {len(self.paths)} shards")
            c["shard"], c["sample"] = c["shard"] + 1, 0
            if c["shard"] == len(self.paths):
                c["epoch"], c["shard"] = c["epoch"] + 1, 0

    def entry_at(self, cursor: dict) -> Entry:
        """The entry a cursor (as next_entry returned it) points at, without moving."""
        unit = self._order(int(cursor["epoch"]))[int(cursor["shard"])]
        size = len(self.index(unit))
        return Entry(unit, self._record(unit, int(cursor["epoch"]), int(cursor["sample"]), size), dict(cursor))

    def load(self, unit: int, record: int) -> RawSample:
        """Read one sample by its index entry (BadSample when it no longer reads)."""
        idx, path = self.index(unit), self.paths[unit]
        locations = idx.locations(record)
        if is_json_unit(path):
            (_, start, size), = locations
            return read_record(path, (start, start + size), record, ImageFolder(image_root_of(path, self.image_root)))
        key = idx.key(record)
        members = [(suffix, self._reader.read(path, offset, size), f"{key}.{suffix}")
                   for suffix, offset, size in locations if wanted(suffix)]
        return sample_from_members(path, key, members)

    # -- sequential reading (no index) --------------------------------------------------------
    def read(self) -> tuple[RawSample, dict]:
        """The next readable sample and its own cursor (to re-read it: load_state_dict(cursor))."""
        empty_units = 0
        while True:
            if self._it is None:
                c = self._cursor
                unit = self._order(c["epoch"])[c["shard"]]
                self._it = self.unit_samples(unit, c["epoch"], c["sample"])
                self._found = False
            item = next(self._it, None)
            if item is not None:
                pos, sample = item
                self._found = True
                cursor = dict(self._cursor, sample=pos)
                self._cursor["sample"] = pos + 1
                return sample, cursor
            self._it = None
            empty_units = 0 if self._found else empty_units + 1
            if empty_units > len(self.paths):
                raise DataError(f"multimodal source {self.name}: no usable sample in any of its "
                                f"{len(self.paths)} shards")
            c = self._cursor
            c["shard"], c["sample"] = c["shard"] + 1, 0
            if c["shard"] == len(self.paths):
                c["epoch"], c["shard"] = c["epoch"] + 1, 0

    def unit_samples(self, unit: int, epoch: int = 0, start: int = 0):
        """(position, sample) of the readable samples of one unit, from position `start`."""
        path = self.paths[unit]
        if not is_json_unit(path):
            yield from read_shard(path, self.bad, start=start)
            return
        if path not in self._spans:
            self._spans[path] = record_spans(path)
        spans, images = self._spans[path], ImageFolder(image_root_of(path, self.image_root))
        for pos in range(start, len(spans)):
            record = self._record(unit, epoch, pos, len(spans))
            try:
                yield pos, read_record(path, spans[record], record, images)
            except BadSample as err:
                self.bad.report(path, f"#{record}", str(err))

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return dict(self._cursor)

    def load_state_dict(self, state: dict) -> None:
        try:
            cursor = {k: int(state[k]) for k in ("epoch", "shard", "sample")}
        except (KeyError, TypeError, ValueError):
            raise DataError(f"multimodal source {self.name} state {state!r}: expected epoch, shard, sample")
        if not 0 <= cursor["shard"] < len(self.paths) or cursor["sample"] < 0 or cursor["epoch"] < 0:
            raise DataError(f"multimodal source {self.name} state {cursor}: out of range for {len(self.paths)} shards")
        self._cursor = cursor
        self._it = None
