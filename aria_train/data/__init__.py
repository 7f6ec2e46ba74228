"""Data and tokenizer: sentencepiece tokenizer, Megatron indexed datasets, GPT samples, batches.

megatron-core is imported lazily, on the first dataset build or preprocessing call.
"""

import importlib

# Imported on first use, so that `aria_train.data.config` (which every run config reads) does not
# pull in sentencepiece and megatron-core: a GPU benchmark machine may have neither.
_HOMES = {
    "AriaTokenizer": "aria_train.data.tokenizer",
    "DataError": "aria_train.data.errors",
    "MicroBatchIterator": "aria_train.data.batches",
    "SPECIAL_TOKENS": "aria_train.data.tokenizer",
    "build_gpt_datasets": "aria_train.data.gpt_data",
    "check_indexed_dataset": "aria_train.data.indexed_check",
    "ensure_demo_corpus": "aria_train.data.demo_corpus",
    "load_tokenizer": "aria_train.data.tokenizer",
    "preprocess_jsonl": "aria_train.data.preprocess",
    "train_tokenizer": "aria_train.data.train_tokenizer",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AriaTokenizer",
    "DataError",
    "MicroBatchIterator",
    "SPECIAL_TOKENS",
    "build_gpt_datasets",
    "check_indexed_dataset",
    "ensure_demo_corpus",
    "load_tokenizer",
    "preprocess_jsonl",
    "train_tokenizer",
]
