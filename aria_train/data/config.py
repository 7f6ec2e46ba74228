"""Configuration of the data a run reads (`data.*`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aria_train.config import ConfigError, require_positive


@dataclass
class DataConfig:
    # Megatron blend: ["0.7", "path/prefix_a", "0.3", "path/prefix_b"] or a single prefix.
    # Empty = the demo corpus, generated offline on first use under cache_dir.
    data_path: list[str] = field(default_factory=list)
    split: str = "969,30,1"  # train,valid,test weights as Megatron-LM writes them
    tokenizer_model: str = ""  # empty = the demo sentencepiece model shipped in the repo
    seq_length: int = 128
    cache_dir: str = "data_cache"
    # Stages 2-4: multimodal shards, "weight dir weight dir ..." (empty = the synthetic demo
    # shards, generated offline under cache_dir), mixed with the language data above.
    mm_data_path: list[str] = field(default_factory=list)
    language_weight: float = 0.3  # share of draws that take a language document
    image_mode: Literal["medium", "high", "ultra-high"] = "medium"
    on_bad_sample: Literal["skip", "error"] = "skip"  # skip (and count) | error
    synthetic_samples: int = 4000  # size of the generated demo shards
    synthetic_kind: str = ""  # "" = the stage-2 mix of kinds; "chat" = conversations (stage 4)
    # shuffled: Megatron's GPTDataset (documents shuffled, packed across sequence boundaries).
    # clustered: data_path is one prefix written by tools/cluster_pack.py; each sample is one
    # group of similar documents, groups shuffled (aria_train/data/curation/clustered_dataset.py).
    packing: Literal["shuffled", "clustered"] = "shuffled"
    # Documents packed into one sequence (aria_train.data.documents): attend only within their own
    # document (document-causal attention) / restart position ids at each document. Language data
    # ends a document at its eod token, the multimodal packer at each sample. Stage 4 turns both
    # on (one conversation must not read the previous one).
    reset_attention_mask: bool = False
    reset_position_ids: bool = False
    # Global batches loaded, packed and decoded this many steps ahead in a background worker
    # process, pinned for the copy to the GPU (aria_train.data.prefetch); 0 = on the training thread.
    prefetch: int = 2

    def validate(self) -> "DataConfig":
        if not 0.0 <= self.language_weight <= 1.0:
            raise ConfigError(f"data.language_weight={self.language_weight} must be within [0, 1]")
        if len(self.mm_data_path) % 2 != 0:
            raise ConfigError("data.mm_data_path must alternate weight and shard directory")
        require_positive(self, "data", "seq_length")
        if self.prefetch < 0:
            raise ConfigError(f"data.prefetch={self.prefetch} must be >= 0 (0 = load on the training thread)")
        return self
