"""Train an ARIA sentencepiece tokenizer from JSONL or plain-text files.

Choices, and why:
- byte_fallback: any text encodes (unknown characters become UTF-8 byte pieces), never <unk>;
- normalization "identity", extra whitespace kept, no dummy-prefix space: decode(encode(text))
  == text, code indentation survives, and "<|im_start|>" at the start of a text is one id rather
  than a "▁" followed by it (encode(a + b) is then close to encode(a) + encode(b), as in GPT-2);
- the ARIA special tokens are user-defined symbols, so they stay single ids when they occur in
  text; eod is sentencepiece's eos renamed <|endoftext|> (see tokenizer.py for the layout);
- training "sentences" are runs of whole lines up to ~2000 characters, newlines included, so the
  model sees newlines and indentation the way documents contain them.
"""

import io
import os
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm

from aria_train.data.errors import DataError
from aria_train.data.jsonl import iter_jsonl_texts
from aria_train.data.tokenizer import EOD_PIECE, PAD_PIECE, SPECIAL_TOKENS, UNK_PIECE, AriaTokenizer

_TRAINING_CHUNK_CHARS = 2000
# sentencepiece drops (with a log line) sentences longer than this many bytes
_MAX_SENTENCE_BYTES = 16384


def iter_file_texts(paths: Iterable[str], json_key: str = "text") -> Iterator[str]:
    """Texts of the given files: one per JSON line for .jsonl/.json, the whole file otherwise."""
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"tokenizer training input {path}: file not found")
        if path.endswith((".jsonl", ".json")):
            yield from iter_jsonl_texts(path, json_key)
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield f.read()


def training_chunks(texts: Iterable[str], max_chars: int = _TRAINING_CHUNK_CHARS) -> Iterator[str]:
    """Cut texts into runs of whole lines of at most max_chars (a longer line stands alone)."""
    for text in texts:
        chunk: list[str] = []
        size = 0
        for line in text.split("\n"):
            if chunk and size + len(line) + 1 > max_chars:
                yield "\n".join(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        joined = "\n".join(chunk)
        if joined.strip():
            yield joined


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    input_sentence_size: int = 0,
    num_threads: int = 1,
    verbose: bool = False,
) -> bytes:
    """Train on texts and return the serialized model; see the module docstring for choices."""
    if model_type not in ("bpe", "unigram"):
        raise DataError(f"tokenizer training: model_type {model_type!r} is not bpe or unigram")
    if not 0.98 <= character_coverage <= 1.0:  # sentencepiece's own bounds
        raise DataError(f"tokenizer training: character coverage {character_coverage} must be within [0.98, 1.0]")
    model = io.BytesIO()
    input_errors: list[DataError] = []
    sentences = _stop_on_error(
        (c for c in training_chunks(texts) if len(c.encode("utf-8")) <= _MAX_SENTENCE_BYTES),
        input_errors,
    )
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            byte_fallback=True,
            user_defined_symbols=list(SPECIAL_TOKENS),
            pad_id=0,
            unk_id=1,
            eos_id=2,
            bos_id=-1,
            pad_piece=PAD_PIECE,
            unk_piece=UNK_PIECE,
            eos_piece=EOD_PIECE,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=input_sentence_size > 0,
            num_threads=num_threads,
            minloglevel=0 if verbose else 2,
        )
    except RuntimeError as err:
        if input_errors:  # sentencepiece rewraps what the iterator raised; give back the original
            raise input_errors[0] from None
        raise DataError(f"tokenizer training: {_trainer_message(err)}") from None
    proto = model.getvalue()
    _check_special_tokens(proto)
    return proto


def save_model(proto: bytes, output_prefix: str, write_vocab: bool = True) -> str:
    """Write output_prefix.model (atomically) and optionally a readable .vocab; the .model path."""
    model_path = output_prefix + ".model"
    Path(model_path).parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(model_path, proto)
    if write_vocab:
        tokenizer = AriaTokenizer(proto, model_path)
        # one piece per line: newlines and tabs inside pieces are written escaped
        pieces = (tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size))
        escaped = (
            p.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t") for p in pieces
        )
        lines = "".join(f"{piece}\t{i}\n" for i, piece in enumerate(escaped))
        _write_atomic(output_prefix + ".vocab", lines.encode("utf-8"))
    return model_path


def train_tokenizer(
    inputs: list[str],
    output_prefix: str,
    vocab_size: int,
    model_type: str = "bpe",
    json_key: str = "text",
    num_threads: int = 1,
    verbose: bool = False,
    character_coverage: float = 0.9995,
) -> str:
    """Train from files (JSONL with a json_key field, or plain text); returns the .model path."""
    proto = train_sentencepiece(
        iter_file_texts(inputs, json_key),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        num_threads=num_threads,
        verbose=verbose,
    )
    return save_model(proto, output_prefix)


def _trainer_message(err: RuntimeError) -> str:
    """sentencepiece's error, e.g. "Vocabulary size is too high (4000). Please set it to a value
    <= 1234.", with its own flag names replaced by tools/train_tokenizer.py's."""
    message = str(err).strip().splitlines()[-1] if str(err).strip() else "failed"
    message = message.split("] ", 1)[-1]  # drop sentencepiece's "INTERNAL: file(line) [check]"
    message = message.replace("with --character_coverage option", "with --character-coverage (>= 0.98)")
    message = message.replace("decrease character_coverage", "decrease the character coverage")
    return message.replace("Increase vocab_size", "Increase --vocab-size")


def _stop_on_error(sentences: Iterator[str], errors: list) -> Iterator[str]:
    try:
        yield from sentences
    except DataError as err:
        errors.append(err)
        raise


def _check_special_tokens(proto: bytes) -> None:
    tokenizer = AriaTokenizer(proto, "<trained>")
    for piece in SPECIAL_TOKENS:
        ids = tokenizer.encode(piece)
        if ids != [tokenizer.token_id(piece)]:
            raise DataError(f"tokenizer training: special token {piece!r} encodes as {ids}")


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
