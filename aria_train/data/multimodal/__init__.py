"""Multimodal data for stages 2-4: tar shards of samples (JSON + images), a renderer to ARIA's
token layout, a synthetic "pixels matter" generator, and the packed, DP-split, resumable
language + multimodal stream.

    shards.py     ShardWriter, read_shard, ShardSource (cursor: epoch, shard, sample)
    schema.py     the JSON schemas of the kinds: caption, ocr_qa (doc_qa), interleaved, video
    render.py     ImageConfig (resolution mode, crop sizes), SampleRenderer (tokens, targets, crops)
    mixture.py    LanguageSource, MultimodalMixture (mix + pack)
    micro_batches.py  MultimodalMicroBatchIterator (a rank's micro-batches of the mixture)
    synthetic.py  drawn shapes with captions only the pixels tell; write_synthetic_shards
    errors.py     BadSamples: skip-and-count or DataError (on_bad_sample: skip | error)
"""

from aria_train.data.multimodal.errors import BadSample, BadSamples
from aria_train.data.multimodal.micro_batches import MultimodalMicroBatchIterator
from aria_train.data.multimodal.mixture import LanguageSource, MultimodalMixture, PackedSequence
from aria_train.data.multimodal.render import ImageConfig, RenderedSample, SampleRenderer
from aria_train.data.multimodal.schema import KINDS, timestamp, validate_sample
from aria_train.data.multimodal.shards import RawSample, ShardSource, ShardWriter, list_shards, read_shard
from aria_train.data.multimodal.synthetic import count_shapes, read_scene, synthetic_sample, write_synthetic_shards

__all__ = [
    "BadSample",
    "BadSamples",
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
    "count_shapes",
    "list_shards",
    "read_scene",
    "read_shard",
    "synthetic_sample",
    "timestamp",
    "validate_sample",
    "write_synthetic_shards",
]
