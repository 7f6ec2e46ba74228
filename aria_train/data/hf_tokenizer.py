"""A transformers tokenizer directory (the one that ships with released weights) as ARIA's
tokenizer: the same interface as AriaTokenizer (tokenizer.py), for training, preprocessing and
megatron's GPTDataset.

Loaded with AutoTokenizer.from_pretrained(DIR, local_files_only=True): nothing is downloaded, a
hub name is refused. It must be a fast tokenizer (tokenizer.json): encoding goes through its
`tokenizers` backend with special tokens split like ordinary text, so a document that contains
"<|endoftext|>" or "<|img|>" cannot forge a document boundary or an image slot; only our code
places special ids. ARIA's special tokens are looked up by their text (check_special_tokens).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aria_train.data.errors import DataError
from aria_train.data.special_tokens import EOD_PIECE, SpecialTokenIds

# files that define a transformers tokenizer: hashed into its identity (index and cache names)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "merges.txt", "tokenizer.model")


def _files_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        path = directory / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class HFTokenizer(SpecialTokenIds):
    def __init__(self, directory: str):
        self.source = str(directory)
        path = Path(directory)
        if not path.is_dir():
            raise DataError(f"tokenizer {directory}: not a directory (data.tokenizer_type=huggingface wants a "
                            f"local transformers tokenizer directory)")
        if not (path / "tokenizer.json").is_file():
            raise DataError(f"tokenizer {directory}: no tokenizer.json (a fast transformers tokenizer is needed)")
        try:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as err:  # transformers raises many types (OSError, ValueError, ...)
            text = " ".join(str(err).split())[:200] or type(err).__name__
            raise DataError(f"tokenizer {directory}: transformers cannot load it ({text})")
        backend = getattr(self._hf, "backend_tokenizer", None)
        if backend is None:
            raise DataError(f"tokenizer {directory}: not a fast tokenizer (no tokenizers backend)")
        backend.encode_special_tokens = True  # special-token text in documents stays text
        self._backend = backend
        self.vocab_size = len(self._hf)
        self.eod = self.token_id(EOD_PIECE)
        unk = self._hf.unk_token_id
        self.unk = -1 if unk is None else int(unk)
        self.unique_identifiers = {"class": type(self).__name__, "model_sha256": _files_hash(path)}

    @property
    def pad(self) -> int:
        pad = self._hf.pad_token_id
        if pad is None:
            raise DataError(f"tokenizer {self.source}: the tokenizer has no pad token")
        return int(pad)

    def token_id(self, piece: str) -> int:
        """The id of a piece that is a single token of the vocabulary."""
        token = self._backend.token_to_id(piece)
        if token is None:
            raise DataError(f"tokenizer {self.source}: no token {piece!r} in the vocabulary")
        return int(token)

    def encode(self, text: str) -> list[int]:
        """Token ids of text, without BOS or EOD."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_piece(self, token: int) -> str:
        return self._backend.id_to_token(int(token))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.source}, vocab_size={self.vocab_size})"

    def __getstate__(self):  # DataLoader workers and megatron's config pickle the tokenizer
        return {"directory": self.source}

    def __setstate__(self, state):
        self.__init__(state["directory"])
