"""Data and tokenizer: sentencepiece tokenizer, Megatron indexed datasets, GPT samples, batches.

megatron-core is imported lazily, on the first dataset build or preprocessing call.
"""

from aria_train.data.batches import MicroBatchIterator
from aria_train.data.demo_corpus import ensure_demo_corpus
from aria_train.data.errors import DataError
from aria_train.data.gpt_data import build_gpt_datasets
from aria_train.data.indexed_check import check_indexed_dataset
from aria_train.data.preprocess import preprocess_jsonl
from aria_train.data.tokenizer import SPECIAL_TOKENS, AriaTokenizer, load_tokenizer
from aria_train.data.train_tokenizer import train_tokenizer

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
