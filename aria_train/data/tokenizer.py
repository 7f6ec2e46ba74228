"""ARIA's tokenizer: a sentencepiece model plus the special tokens the model relies on (or a
transformers tokenizer directory with the same tokens: hf_tokenizer.py, load_tokenizer).

Vocabulary layout of models trained by train_tokenizer.py (the demo model included):
    0 <pad>            padding, never produced by encode()
    1 <unk>            only reachable for models trained without byte fallback
    2 <|endoftext|>    end of document (eod); sentencepiece's eos, a *control* symbol
    3 <|im_start|>     chat turn start          \
    4 <|im_end|>       chat turn end             |  user-defined symbols: written in text they
    5 <|img|>          image placeholder         |  encode as exactly one id
    6 <fim_prefix>     fill-in-the-middle prefix |
    7 <fim_suffix>     fill-in-the-middle suffix /
    8..263             byte fallback pieces <0x00>..<0xFF>
    264..              learned pieces

Why eod is sentencepiece's eos rather than a user-defined symbol: control symbols are never
matched in raw text, so a document that happens to contain the string "<|endoftext|>" cannot
forge a document boundary; only the preprocessor appends eod.

AriaTokenizer also quacks like a megatron-core tokenizer for GPTDataset, which reads
vocab_size, eod, pad (through try/except), eos, and unique_identifiers (hashed into the name of
its index cache, so a different model file gets different cache entries).
"""

import hashlib
from pathlib import Path

import sentencepiece as spm

from aria_train.data.errors import DataError
# The pieces are defined with the ids' mixin; importers take them from here as before.
from aria_train.data.special_tokens import EOD_PIECE, PAD_PIECE, SPECIAL_TOKENS, UNK_PIECE, SpecialTokenIds  # noqa: F401

DEMO_TOKENIZER_PATH = Path(__file__).resolve().parent / "assets" / "demo_tokenizer.model"


class AriaTokenizer(SpecialTokenIds):
    def __init__(self, model_proto: bytes, source: str):
        self.source = source  # a path or "<demo>", for error messages
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load_from_serialized_proto(model_proto)
        except Exception as err:  # sentencepiece raises RuntimeError/OSError with long text
            raise DataError(f"tokenizer {source}: not a sentencepiece model ({_first_line(err)})")
        self.vocab_size = self._sp.get_piece_size()
        self.eod = self._sp.eos_id()
        if self.eod < 0:
            raise DataError(f"tokenizer {source}: the model has no end-of-document (eos) token")
        self.unk = self._sp.unk_id()
        self.unique_identifiers = {
            "class": type(self).__name__,
            "model_sha256": hashlib.sha256(model_proto).hexdigest(),
        }

    @property
    def pad(self) -> int:
        pad = self._sp.pad_id()
        if pad < 0:
            raise DataError(f"tokenizer {self.source}: the model has no pad token")
        return pad

    def token_id(self, piece: str) -> int:
        """The id of a piece that is a single token of the vocabulary."""
        token = self._sp.piece_to_id(piece)
        # piece_to_id answers unk for anything it does not know
        if token == self.unk and piece != self._sp.id_to_piece(self.unk):
            raise DataError(f"tokenizer {self.source}: no token {piece!r} in the vocabulary")
        return token

    def encode(self, text: str) -> list[int]:
        """Token ids of text, without BOS or EOD."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts, out_type=int)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token: int) -> str:
        return self._sp.id_to_piece(int(token))

    def model_proto(self) -> bytes:
        return self._proto

    def __repr__(self) -> str:
        return f"AriaTokenizer({self.source}, vocab_size={self.vocab_size})"

    # DataLoader workers pickle datasets, and megatron's config holds the tokenizer.
    def __getstate__(self):
        return {"model_proto": self._proto, "source": self.source}

    def __setstate__(self, state):
        self.__init__(state["model_proto"], state["source"])


def tokenizer_kind(name: str) -> str:
    """sentencepiece | huggingface from our names, Megatron's (--tokenizer-type) or "hf"."""
    from aria_train.data.config import TOKENIZER_TYPES

    kind = TOKENIZER_TYPES.get(name) or {"hf": "huggingface"}.get(name)
    if kind is None:
        names = ", ".join(sorted(set(TOKENIZER_TYPES)))
        raise DataError(f"tokenizer type {name!r}: expected one of {names}")
    return kind


def load_tokenizer(path: str = "", kind: str = "sentencepiece", check: bool = True):
    """ARIA's tokenizer: a sentencepiece model file ("" = the demo model shipped in the repo) or,
    with kind="huggingface", a local transformers tokenizer directory. With check, the special
    tokens ARIA needs must all be in it (check_special_tokens)."""
    if tokenizer_kind(kind) == "huggingface":
        from aria_train.data.hf_tokenizer import HFTokenizer

        if not path:
            raise DataError("tokenizer: the huggingface type needs a tokenizer directory (data.tokenizer_model)")
        tokenizer = HFTokenizer(path)
    else:
        model_path = Path(path) if path else DEMO_TOKENIZER_PATH
        source = str(model_path) if path else f"<demo> {model_path}"
        if not model_path.is_file():
            raise DataError(f"tokenizer {source}: file not found")
        tokenizer = AriaTokenizer(model_path.read_bytes(), source)
    if check:
        check_special_tokens(tokenizer)
    return tokenizer


def check_special_tokens(tokenizer) -> None:
    """Every token ARIA relies on (end of document, chat turns, image slots) is one token of the
    vocabulary; one DataError line naming the first one missing."""
    for piece in (EOD_PIECE,) + SPECIAL_TOKENS:
        try:
            tokenizer.token_id(piece)
        except DataError:
            raise DataError(f"tokenizer {tokenizer.source}: no token {piece!r} in the vocabulary "
                            f"(ARIA needs {EOD_PIECE}, {', '.join(SPECIAL_TOKENS)})")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
