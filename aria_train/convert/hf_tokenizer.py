"""Our sentencepiece tokenizer as a transformers tokenizer: a `tokenizer.json` (the `tokenizers`
library) that `AutoTokenizer.from_pretrained` loads offline and that gives the same ids.

The sentencepiece model's pieces and merges are read with transformers' SentencePieceExtractor
and rebuilt as a byte-fallback BPE behind the same text handling as our training settings
(aria_train.data.train_tokenizer): spaces become "▁" and nothing else is normalised (identity
rule, no dummy prefix, whitespace kept), words are split before whitespace, digits one by one.
The special tokens (<pad>, <unk>, <|endoftext|>, the chat, image and FIM tokens) are added as
special tokens with their ids. Only BPE models convert (tools/train_tokenizer.py's default): a
unigram model's Viterbi segmentation is not reproduced exactly by `tokenizers`.

One difference is by design of transformers: an added special token written in plain text is
matched there, also <|endoftext|>, which our sentencepiece model (a control symbol) never
matches in text. `fast_tokenizer` checks the ids on a fixed set of texts before anything is
written and raises UserError on the first difference.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Optional

from aria_train.data.tokenizer import EOD_PIECE, PAD_PIECE, SPECIAL_TOKENS, UNK_PIECE, AriaTokenizer
from aria_train.errors import UserError

_ALPHABET = list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789   \t\n.,;:()[]{}_=+-*/'\"#éü漢😀") + [
    "<|im_start|>", "<|im_end|>", "<|img|>", "def ", "return ", "  ", "self.", "import ", "the "]


def _model_proto(tokenizer: AriaTokenizer):
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(tokenizer.model_proto())
    return proto


def _check_convertible(tokenizer: AriaTokenizer) -> None:
    proto = _model_proto(tokenizer)
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    expected = {
        "model_type BPE": trainer.model_type == trainer.BPE,
        "byte_fallback": trainer.byte_fallback,
        "identity normalisation": normalizer.name == "identity" and not normalizer.precompiled_charsmap,
        "no dummy prefix": not normalizer.add_dummy_prefix,
        "whitespace kept": not normalizer.remove_extra_whitespaces,
    }
    missing = [name for name, ok in expected.items() if not ok]
    if missing:
        raise UserError(f"tokenizer {tokenizer.source}: cannot convert to a transformers tokenizer exactly "
                        f"(needs {', '.join(missing)}, as tools/train_tokenizer.py trains by default)")


def fast_tokenizer(tokenizer: AriaTokenizer):
    """A transformers tokenizer (PreTrainedTokenizerFast) with our ids; checked, see above."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    _check_convertible(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.model"
        path.write_bytes(tokenizer.model_proto())
        vocab, _, merges = SentencePieceExtractor(str(path)).extract()
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True, unk_token=UNK_PIECE))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("▁+"), behavior="merged_with_next"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = [PAD_PIECE, UNK_PIECE, EOD_PIECE, *SPECIAL_TOKENS]
    backend.add_special_tokens([AddedToken(piece, special=True, normalized=False) for piece in specials])
    converted = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOD_PIECE, pad_token=PAD_PIECE,
                                        unk_token=UNK_PIECE, extra_special_tokens=list(SPECIAL_TOKENS))
    difference = first_difference(tokenizer, converted, sample_texts())
    if difference is not None:
        raise UserError(f"tokenizer {tokenizer.source}: the converted transformers tokenizer differs on "
                        f"{difference!r}; not exported")
    return converted


def sample_texts(count: int = 1000, seed: int = 0) -> list[str]:
    """Texts that exercise whitespace runs, digits, punctuation, byte fallback and the special
    tokens (fixed by the seed)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 60))) for _ in range(count)]


def first_difference(ours: AriaTokenizer, theirs, texts: list[str]) -> Optional[str]:
    """The first text whose ids (or decoded text) differ between the two tokenizers, else None."""
    for text in texts:
        ids = ours.encode(text)
        if theirs(text, add_special_tokens=False)["input_ids"] != ids or theirs.decode(ids) != ours.decode(ids):
            return text
    return None
