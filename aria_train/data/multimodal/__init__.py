"""Multimodal data for stages 2-4: tar shards and JSON files of samples in the layouts users have
(ARIA's own, WebDataset/img2dataset captions, LLaVA, chat messages, OBELICS), a renderer to ARIA's
token layout, per-shard length indexes, a synthetic "pixels matter" generator, and the packed,
DP-split, resumable language + multimodal stream with its bad-data guard.

    layouts.py      webdataset's member grouping; the layouts and their mapping to ARIA's kinds
    schema.py       the JSON schemas of ARIA's kinds: caption, ocr_qa (doc_qa), interleaved, video, chat
    tar_io.py       reading tar shards: read_shard (sequential), MemberReader (by offset)
    json_records.py JSON / JSONL files of records with an image folder
    shards.py       ShardWriter (ARIA's own layout, + length index)
    index.py        the per-shard length index (UNIT.mmidx); index_build.py builds it
    sources.py      ShardSource (cursor: epoch, shard, sample), list_shards
    render.py       ImageConfig (resolution mode, crop sizes), SampleRenderer (tokens, targets, crops)
    planner.py      draws and packing from lengths alone
    mixture.py      LanguageSource (language.py), MultimodalMixture (plan + read one rank's share)
    mm_batches.py   MultimodalMicroBatchIterator
    guard.py        BadDataGuard: stop when a source is mostly bad
    synthetic.py    drawn shapes with captions only the pixels tell; write_synthetic_shards
    errors.py       BadSamples: skip-and-count or DataError (on_bad_sample: skip | error)
"""

from aria_train.data.multimodal.errors import BadSample, BadSamples
from aria_train.data.multimodal.guard import BadDataGuard
from aria_train.data.multimodal.index_build import build_index, ensure_indexes
from aria_train.data.multimodal.language import LanguageSource
from aria_train.data.multimodal.layouts import FORMATS, RawSample
from aria_train.data.multimodal.mixture import MultimodalMixture, PackedSequence
from aria_train.data.multimodal.mm_batches import MultimodalMicroBatchIterator
from aria_train.data.multimodal.render import ImageConfig, RenderedSample, SampleRenderer
from aria_train.data.multimodal.schema import KINDS, timestamp, validate_sample
from aria_train.data.multimodal.shards import ShardWriter
from aria_train.data.multimodal.sources import ShardSource, list_shards
from aria_train.data.multimodal.synthetic import count_shapes, read_scene, synthetic_sample, write_synthetic_shards
from aria_train.data.multimodal.tar_io import read_shard

__all__ = [
    "BadDataGuard",
    "BadSample",
    "BadSamples",
    "FORMATS",
    "ImageConfig",
    "KINDS",
    "LanguageSource",
    "MultimodalMicroBatchIterator",
    "MultimodalMixture",
    "PackedSequence",
    "RawSample",
    "RenderedSample",
    "SampleRenderer",
    "ShardSource",
    "ShardWriter",
    "build_index",
    "count_shapes",
    "ensure_indexes",
    "list_shards",
    "read_scene",
    "read_shard",
    "synthetic_sample",
    "timestamp",
    "validate_sample",
    "write_synthetic_shards",
]
