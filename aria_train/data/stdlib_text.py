"""Text that ships with every CPython install, cut into documents, for offline demos.

Two sources, both read without importing anything beyond pydoc_data:
- pydoc_data.topics: the language reference and library topics as plain English text;
- the source of the top-level standard library modules (Lib/*.py): code with docstrings.

Both are cut into documents of at most ~max_doc_chars on paragraph (blank line) boundaries, so a
few MB make thousands of documents: Megatron splits train/valid/test by document, and a corpus of
a few hundred documents would leave the 1/1000 test split empty. Documents are then ordered by a
hash of their text, a fixed shuffle, so each split mixes prose and code.

The result is deterministic for a given Python version (the texts change between versions).
"""

import hashlib
import sysconfig
from pathlib import Path
from typing import Iterator


def stdlib_documents(max_chars: int = 2_000_000, max_doc_chars: int = 1500) -> list[str]:
    """Documents from the pydoc topics first, then stdlib sources, until max_chars in total."""
    documents, total = [], 0
    for text in _raw_texts():
        for doc in _pack_paragraphs(text, max_doc_chars):
            if total + len(doc) > max_chars:
                return _fixed_shuffle(documents)
            documents.append(doc)
            total += len(doc)
    return _fixed_shuffle(documents)


def _raw_texts() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data; the sources still serve
        topics = {}
    for name in sorted(topics):
        yield topics[name]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            yield path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue


def _pack_paragraphs(text: str, max_doc_chars: int) -> Iterator[str]:
    """Greedily join blank-line separated paragraphs into documents up to max_doc_chars.

    A single paragraph longer than the limit becomes a document on its own rather than being cut
    mid-line.
    """
    current: list[str] = []
    size = 0
    for paragraph in text.split("\n\n"):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        if current and size + len(paragraph) + 2 > max_doc_chars:
            yield "\n\n".join(current)
            current, size = [], 0
        current.append(paragraph)
        size += len(paragraph) + 2
    if current:
        yield "\n\n".join(current)


def _fixed_shuffle(documents: list[str]) -> list[str]:
    return sorted(documents, key=lambda doc: hashlib.sha1(doc.encode("utf-8")).digest())
