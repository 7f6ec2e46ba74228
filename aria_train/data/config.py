"""Configuration of the data a run reads (`data.*`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from aria_train.config import ConfigError, require_positive

# The sample layouts data.mm_formats may name (aria_train.data.multimodal.layouts).
MM_FORMATS = ("aria", "caption", "llava", "messages", "obelics")
# data.tokenizer_type: our names and Megatron's (--tokenizer-type), each to the kind it loads.
TOKENIZER_TYPES = {"sentencepiece": "sentencepiece", "SentencePieceTokenizer": "sentencepiece",
                   "GPTSentencePieceTokenizer": "sentencepiece", "huggingface": "huggingface",
                   "HuggingFaceTokenizer": "huggingface"}


@dataclass
class DataConfig:
    # Megatron blend: ["0.7", "path/prefix_a", "0.3", "path/prefix_b"] or a single prefix.
    # Empty = the demo corpus, generated offline on first use under cache_dir.
    data_path: list[str] = field(default_factory=list)
    split: str = "969,30,1"  # train,valid,test weights as Megatron-LM writes them
    # sentencepiece (tokenizer_model = a .model file) | huggingface (tokenizer_model = a local
    # transformers tokenizer directory); Megatron's names are accepted too (TOKENIZER_TYPES).
    tokenizer_type: Literal["sentencepiece", "huggingface", "SentencePieceTokenizer",
                            "GPTSentencePieceTokenizer", "HuggingFaceTokenizer"] = "sentencepiece"
    tokenizer_model: str = ""  # empty = the demo sentencepiece model shipped in the repo
    seq_length: int = 128
    cache_dir: str = "data_cache"
    # Stages 2-4: multimodal shards, "weight dir weight dir ..." (empty = the synthetic demo
    # shards, generated offline under cache_dir), mixed with the language data above.
    mm_data_path: list[str] = field(default_factory=list)
    # The sample layouts mm_data_path may hold: aria (our KEY.json kinds), caption (WebDataset /
    # img2dataset image + txt), llava, messages, obelics. A layout left out counts as a bad sample.
    mm_formats: list[Literal["aria", "caption", "llava", "messages", "obelics"]] = field(
        default_factory=lambda: list(MM_FORMATS))
    mm_image_root: str = ""  # image folder of JSON / JSONL sources ("" = each file's own folder)
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
    # "" = the stage-2 mix of kinds; "chat" = conversations (stage 4); "imp" = pictures, video clips
    # and beeps (IMP's options: vision.patch=tubelet, audio.input); or one kind (caption, clip, audio, ...)
    synthetic_kind: str = ""
    # Bad-data guard: stop when more than this fraction of a source's last bad_sample_window
    # samples are bad, or when its first 100 are all bad.
    max_bad_fraction: float = 0.05
    bad_sample_window: int = 1000
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
        require_positive(self, "data", "seq_length", "bad_sample_window")
        if TOKENIZER_TYPES[self.tokenizer_type] == "huggingface" and not self.tokenizer_model:
            raise ConfigError("data.tokenizer_type=huggingface needs data.tokenizer_model (a tokenizer directory)")
        if not self.mm_formats:
            raise ConfigError(f"data.mm_formats is empty: expected a non-empty list of {', '.join(MM_FORMATS)}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"data.max_bad_fraction={self.max_bad_fraction} must be within [0, 1]")
        if self.prefetch < 0:
            raise ConfigError(f"data.prefetch={self.prefetch} must be >= 0 (0 = load on the training thread)")
        return self
