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
    # sentencepiece: tokenizer_model is a .model file; huggingface: a local transformers tokenizer
    # directory (AutoTokenizer, offline), e.g. the one shipped with a released Aria checkpoint
    tokenizer_type: Literal["sentencepiece", "huggingface"] = "sentencepiece"
    seq_length: int = 128
    cache_dir: str = "data_cache"
    # Stages 2-4: multimodal shards, "weight dir weight dir ..." (empty = the synthetic demo
    # shards, generated offline under cache_dir), mixed with the language data above.
    mm_data_path: list[str] = field(default_factory=list)
    language_weight: float = 0.3  # share of draws that take a language document
    image_mode: Literal["medium", "high", "ultra-high"] = "medium"
    # How ultra-high splits an image (aria_train.data.image_split). aria (default): the original
    # ARIA code the released weights were trained with -- a global view plus tiles of the grid
    # closest in aspect ratio, stretched to it. transformers: AriaImageProcessor(split_image=True)
    # as users of the released weights run it -- the best-fitting grid, aspect ratio kept, padded,
    # no global view. Medium and high are the same in both.
    image_split: Literal["aria", "transformers"] = "aria"
    # What the mixture weights (language_weight, mm_data_path) measure: samples (each draw picks
    # a source by weight) or tokens (each draw goes to the source furthest below its token share,
    # so a paper's per-kind token budgets can be the weights as they are).
    mix_by: Literal["samples", "tokens"] = "samples"
    on_bad_sample: Literal["skip", "error"] = "skip"  # skip (and count) | error
    synthetic_samples: int = 4000  # size of the generated demo shards
    synthetic_kind: str = ""  # "" = the stage-2 mix of kinds; "chat" = conversations (stage 4)
    # shuffled: Megatron's GPTDataset (documents shuffled, packed across sequence boundaries).
    # clustered: data_path is one prefix written by tools/cluster_pack.py; each sample is one
    # group of similar documents, groups shuffled (aria_train/data/curation/clustered_dataset.py).
    packing: Literal["shuffled", "clustered"] = "shuffled"

    def validate(self) -> "DataConfig":
        if not 0.0 <= self.language_weight <= 1.0:
            raise ConfigError(f"data.language_weight={self.language_weight} must be within [0, 1]")
        if len(self.mm_data_path) % 2 != 0:
            raise ConfigError("data.mm_data_path must alternate weight and shard directory")
        require_positive(self, "data", "seq_length")
        if self.tokenizer_type == "huggingface" and not self.tokenizer_model:
            raise ConfigError("data.tokenizer_type=huggingface needs data.tokenizer_model (a tokenizer directory)")
        return self
