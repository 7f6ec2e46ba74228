"""A local transformers tokenizer directory as ARIA's tokenizer (`data.tokenizer_type:
huggingface`, `data.tokenizer_model: DIR`), e.g. the one shipped with a released Aria checkpoint:
loaded with AutoTokenizer, offline, behind AriaTokenizer's interface (aria_train.data.tokenizer).

Text is encoded with `split_special_tokens=True`: a document that contains the text
"<|endoftext|>" or "<|img|>" gets ordinary tokens for it, never the special id, as with the
sentencepiece tokenizer (whose specials are control symbols); only the data pipeline places
special ids. The special tokens ARIA relies on must each be one token of the vocabulary.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aria_train.data.errors import DataError

EOD_PIECE = "<|endoftext|>"


class HFTokenizer:
    def __init__(self, directory: str):
        self.source = str(directory)
        self._directory = directory
        path = Path(directory)
        if not path.is_dir():
            raise DataError(f"tokenizer {directory}: not a directory (a transformers tokenizer directory is needed)")
        try:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(f"tokenizer {directory}: not a transformers tokenizer ({first})") from None
        self.vocab_size = len(self._tok)
        self.unk = self._tok.unk_token_id if self._tok.unk_token_id is not None else -1
        self.eod = self.token_id(EOD_PIECE)
        digest = hashlib.sha256()
        for file in sorted(p for p in path.iterdir() if p.name.startswith(("tokenizer", "special_tokens", "vocab",
                                                                             "merges", "added_tokens"))):
            digest.update(file.name.encode() + file.read_bytes())
        self.unique_identifiers = {"class": type(self).__name__, "model_sha256": digest.hexdigest()}

    @property
    def eos(self) -> int:
        return self.eod

    @property
    def pad(self) -> int:
        if self._tok.pad_token_id is None:
            raise DataError(f"tokenizer {self.source}: the tokenizer has no pad token")
        return self._tok.pad_token_id

    @property
    def im_start(self) -> int:
        return self.token_id("<|im_start|>")

    @property
    def im_end(self) -> int:
        return self.token_id("<|im_end|>")

    @property
    def img(self) -> int:
        return self.token_id("<|img|>")

    @property
    def fim_prefix(self) -> int:
        return self.token_id("<fim_prefix>")

    @property
    def fim_suffix(self) -> int:
        return self.token_id("<fim_suffix>")

    def token_id(self, piece: str) -> int:
        """The id of a piece that is a single token of the vocabulary."""
        token = self._tok.convert_tokens_to_ids(piece)
        if token is None or (token == self.unk and piece != self._tok.unk_token):
            raise DataError(f"tokenizer {self.source}: no token {piece!r} in the vocabulary")
        return int(token)

    def encode(self, text: str) -> list[int]:
        """Token ids of text, without BOS or EOD."""
        return list(self._tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self._tok(list(texts), add_special_tokens=False,
                                               split_special_tokens=True)["input_ids"]]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def id_to_piece(self, token: int) -> str:
        return self._tok.convert_ids_to_tokens(int(token))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"HFTokenizer({self.source}, vocab_size={self.vocab_size})"

    # DataLoader workers pickle datasets, and megatron's config holds the tokenizer.
    def __getstate__(self):
        return {"directory": self._directory}

    def __setstate__(self, state):
        self.__init__(state["directory"])
