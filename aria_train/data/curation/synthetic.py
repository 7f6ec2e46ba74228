"""Synthetic corpora with known answers, made offline from words that ship with Python: for the
curation tests, the benchmark and trying the tools.

- planted_corpus: natural-looking unique documents, plus exact copies, near copies (a few words
  changed) and low-quality documents of the kinds the Gopher/C4/FineWeb rules catch, with the
  truth about each;
- topic_corpus: documents from K topics, each topic drawing its words from its own vocabulary,
  so a good clustering puts same-topic documents side by side.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

STOP_WORDS = ("the", "of", "and", "to", "that", "with", "be", "have", "in", "is", "for", "on")
# words that trip a C4 rule on their own (policy lines, javascript lines, lorem ipsum)
_BANNED = {"javascript", "cookie", "cookies", "policy", "privacy", "lorem", "ipsum", "terms"}


@lru_cache(maxsize=1)
def english_words() -> tuple:
    """About 1,400 distinct lowercase words of the Python documentation (pydoc topics)."""
    try:
        from pydoc_data.topics import topics
        text = " ".join(topics.values())
    except ImportError:  # distributions that strip pydoc_data: the stdlib's own docstrings
        import sysconfig
        from pathlib import Path
        text = " ".join(p.read_text(errors="ignore") for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")))
    counts = Counter(re.findall(r"\b[a-z]{3,10}\b", text))
    return tuple(sorted(w for w, n in counts.items() if n >= 3 and w not in _BANNED and w not in STOP_WORDS))


def sentence(rng: np.random.Generator, vocab, n_words: int) -> str:
    words = [str(vocab[i]) for i in rng.integers(0, len(vocab), n_words)]
    for slot in rng.choice(n_words, size=max(2, n_words // 4), replace=False)[1:]:
        words.insert(int(slot), STOP_WORDS[int(rng.integers(0, len(STOP_WORDS)))])
    return " ".join(words).capitalize() + "."


def document(rng: np.random.Generator, vocab, n_lines: int = 8) -> str:
    return "\n".join(" ".join(sentence(rng, vocab, int(rng.integers(7, 13))) for _ in range(int(rng.integers(1, 3))))
                     for _ in range(n_lines))


@dataclass
class PlantedCorpus:
    records: list  # {"id", "text"} in file order
    dup_groups: dict = field(default_factory=dict)  # original id -> ids of its copies
    exact_copies: list = field(default_factory=list)
    near_copies: list = field(default_factory=list)
    low_quality: dict = field(default_factory=dict)  # id -> the rule it is made to break
    singletons: list = field(default_factory=list)  # unique documents with no copy


def planted_corpus(n_unique: int = 300, n_exact: int = 30, n_near: int = 30, n_low: int = 30,
                   seed: int = 0) -> PlantedCorpus:
    rng = np.random.default_rng(seed)
    vocab = english_words()
    uniques = [{"id": f"u{i}", "text": document(rng, vocab)} for i in range(n_unique)]
    corpus = PlantedCorpus(records=list(uniques))
    originals = rng.choice(n_unique, size=n_exact + n_near, replace=False)
    for j, index in enumerate(originals):
        original = uniques[int(index)]
        near = j >= n_exact
        copy_id = f"{'near' if near else 'exact'}{j}"
        text = _near_copy(rng, original["text"], vocab) if near else original["text"]
        corpus.records.append({"id": copy_id, "text": text})
        corpus.dup_groups.setdefault(original["id"], []).append(copy_id)
        (corpus.near_copies if near else corpus.exact_copies).append(copy_id)
    for j in range(n_low):
        kind = _LOW_QUALITY_KINDS[j % len(_LOW_QUALITY_KINDS)]
        corpus.records.append({"id": f"low{j}", "text": _low_quality(rng, vocab, kind)})
        corpus.low_quality[f"low{j}"] = kind
    corpus.singletons = [u["id"] for u in uniques if u["id"] not in corpus.dup_groups]
    order = rng.permutation(len(corpus.records))  # copies do not sit next to their originals
    corpus.records = [corpus.records[i] for i in order]
    return corpus


def _near_copy(rng: np.random.Generator, text: str, vocab) -> str:
    """One word in a hundred replaced (an edited date, a changed name): each replaced word changes
    5 of the 5-word shingles, so a 100-word copy keeps a Jaccard similarity of about 0.9, above
    MinHash's 0.72 threshold, where it is caught with probability 1 - (1 - 0.9^8)^14 > 0.999."""
    lines = [line.split(" ") for line in text.split("\n")]
    slots = [(i, j) for i, line in enumerate(lines) for j in range(len(line))]
    for pick in rng.choice(len(slots), size=max(1, len(slots) // 100), replace=False):
        i, j = slots[int(pick)]
        ending = "." if lines[i][j].endswith(".") else ""
        lines[i][j] = str(vocab[int(rng.integers(0, len(vocab)))]) + ending
    return "\n".join(" ".join(line) for line in lines)


_LOW_QUALITY_KINDS = ("short", "symbols", "navigation", "repeated_lines", "lorem_ipsum", "code_braces")


def _low_quality(rng: np.random.Generator, vocab, kind: str) -> str:
    if kind == "short":  # Gopher: fewer than 50 words
        return sentence(rng, vocab, 12)
    if kind == "symbols":  # Gopher: symbol-to-word ratio
        return "\n".join(" ".join(["#", "...", str(vocab[int(rng.integers(0, len(vocab)))]), "#"] * 6) + "."
                         for _ in range(8))
    if kind == "navigation":  # C4 / FineWeb: short lines without terminal punctuation
        return "\n".join(" ".join(str(vocab[int(i)]).capitalize() for i in rng.integers(0, len(vocab), 2))
                         for _ in range(60))
    if kind == "repeated_lines":  # Gopher repetition: the same line again and again
        line = sentence(rng, vocab, 10)
        return "\n".join([line] * 12 + [sentence(rng, vocab, 10)])
    if kind == "lorem_ipsum":  # C4: placeholder text
        return document(rng, vocab).replace(".", ". Lorem ipsum dolor sit amet.", 1)
    return document(rng, vocab).replace(".", " { return value; }.", 3)  # C4: curly brackets (code)


def topic_corpus(n_docs: int, n_topics: int, seed: int = 0, words_per_topic: int = 120,
                 sentences: tuple = (3, 8)) -> tuple[list, np.ndarray]:
    """(texts, topic of each text): topic t draws its words from its own slice of the vocabulary."""
    rng = np.random.default_rng(seed)
    vocab = np.array(english_words())
    if n_topics * words_per_topic > len(vocab):
        raise ValueError(f"{n_topics} topics x {words_per_topic} words exceed the {len(vocab)}-word vocabulary")
    slices = rng.permutation(len(vocab))[: n_topics * words_per_topic].reshape(n_topics, words_per_topic)
    topics = rng.integers(0, n_topics, n_docs)
    texts = [" ".join(sentence(rng, vocab[slices[t]], int(rng.integers(6, 12)))
                      for _ in range(int(rng.integers(*sentences))))
             for t in topics]
    return texts, topics
