"""ARIA's special tokens, and the ids both tokenizers (tokenizer.AriaTokenizer, sentencepiece;
hf_tokenizer.HFTokenizer, a transformers directory) give them through their own token_id()."""

EOD_PIECE = "<|endoftext|>"
PAD_PIECE = "<pad>"
UNK_PIECE = "<unk>"
# Order fixes their ids (3..7) in models trained by train_tokenizer.py.
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|img|>", "<fim_prefix>", "<fim_suffix>")


class SpecialTokenIds:
    """Mixin: ids of ARIA's special tokens from the tokenizer's `token_id(piece)` (which fails
    with a DataError naming a missing piece), `eod` and `vocab_size`."""

    # megatron's pad-collision check reads .eos when the tokenizer has no special_tokens_dict.
    @property
    def eos(self) -> int:
        return self.eod

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

    def __len__(self) -> int:
        return self.vocab_size
