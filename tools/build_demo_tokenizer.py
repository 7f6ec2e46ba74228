"""Regenerate aria_train/data/assets/demo_tokenizer.model (vocab 1024) from Python-shipped text.

Deterministic for a given Python version and sentencepiece version: single-threaded BPE over the
pydoc topics and the top-level stdlib sources (see aria_train/data/stdlib_text.py). The committed
file was built with the CPython and sentencepiece versions printed by --check.

    python tools/build_demo_tokenizer.py            # rewrite the asset
    python tools/build_demo_tokenizer.py --check    # rebuild in memory, compare with the asset
"""

import argparse
import hashlib
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sentencepiece  # noqa: E402

from aria_train.data.stdlib_text import stdlib_documents  # noqa: E402
from aria_train.data.tokenizer import DEMO_TOKENIZER_PATH  # noqa: E402
from aria_train.data.train_tokenizer import save_model, train_sentencepiece  # noqa: E402

DEMO_VOCAB_SIZE = 1024  # the tiny model preset's vocab_size
# what built the committed asset; other versions ship other stdlib text, hence another model
BUILT_WITH = {"python": "3.11.7", "sentencepiece": "0.2.3"}
TRAINING_CHARS = 6_000_000  # more than the stdlib holds today: use all of it


def build_demo_model() -> bytes:
    documents = stdlib_documents(max_chars=TRAINING_CHARS)
    return train_sentencepiece(documents, vocab_size=DEMO_VOCAB_SIZE, num_threads=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the asset only")
    args = parser.parse_args()
    proto = build_demo_model()
    digest = hashlib.sha256(proto).hexdigest()[:16]
    versions = f"python {platform.python_version()}, sentencepiece {sentencepiece.__version__}"
    if args.check:
        current = DEMO_TOKENIZER_PATH.read_bytes() if DEMO_TOKENIZER_PATH.is_file() else b""
        same = current == proto
        print(f"rebuilt sha256 {digest} ({versions}): {'identical' if same else 'DIFFERENT'}")
        return 0 if same else 1
    save_model(proto, str(DEMO_TOKENIZER_PATH.with_suffix("")), write_vocab=False)
    print(f"wrote {DEMO_TOKENIZER_PATH} ({len(proto)} bytes, sha256 {digest}, {versions})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
