"""The demo corpus: ~2 MB of Python-shipped text (see stdlib_text.py), built offline on first use.

Files under cache_dir:
    demo_corpus.jsonl        the documents, one {"text": ...} per line
    demo_corpus.bin / .idx   the Megatron indexed dataset, tokenized with the given tokenizer
    demo_corpus.json         what it was built with (tokenizer hash) and its size; written last

Every file is written under a temporary name and renamed. The stamp is removed before a rebuild
and written after it, so a crash at any point leaves either a complete corpus with its stamp or
no stamp, which the next call rebuilds. Not safe for several processes at once: in a distributed
run, call it on rank 0 and barrier (build_gpt_datasets does).
"""

import json
import os

from aria_train.data.preprocess import preprocess_jsonl
from aria_train.data.stdlib_text import stdlib_documents
from aria_train.data.tokenizer import AriaTokenizer

DEMO_CORPUS_NAME = "demo_corpus"
DEMO_CORPUS_CHARS = 2_000_000
_FORMAT = 1  # bump when the document recipe changes


def demo_corpus_prefix(cache_dir: str) -> str:
    return os.path.join(cache_dir, DEMO_CORPUS_NAME)


def ensure_demo_corpus(cache_dir: str, tokenizer: AriaTokenizer) -> str:
    """The prefix cache_dir/demo_corpus, built first unless already built with this tokenizer."""
    prefix = demo_corpus_prefix(cache_dir)
    stamp_path = prefix + ".json"
    wanted = {"format": _FORMAT, "tokenizer_sha256": tokenizer.unique_identifiers["model_sha256"]}
    stamp = _read_stamp(stamp_path)
    built = all(os.path.isfile(prefix + suffix) for suffix in (".bin", ".idx"))
    if built and stamp is not None and {k: stamp.get(k) for k in wanted} == wanted:
        return prefix

    os.makedirs(cache_dir, exist_ok=True)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)
    documents = stdlib_documents(max_chars=DEMO_CORPUS_CHARS)
    jsonl_path = prefix + ".jsonl"
    tmp = f"{jsonl_path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for text in documents:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    os.replace(tmp, jsonl_path)
    stats = preprocess_jsonl(jsonl_path, prefix, tokenizer)
    stamp = dict(wanted, documents=stats.documents, tokens=stats.tokens)
    tmp = f"{stamp_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(stamp, f, indent=1)
    os.replace(tmp, stamp_path)
    return prefix


def demo_corpus_stats(cache_dir: str) -> dict:
    """The stamp of a built corpus: format, tokenizer_sha256, documents, tokens."""
    return _read_stamp(demo_corpus_prefix(cache_dir) + ".json") or {}


def _read_stamp(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
