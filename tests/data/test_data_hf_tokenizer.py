"""A transformers tokenizer directory as ARIA's tokenizer: built offline (`tokenizers` BPE trained on
stdlib text, saved by PreTrainedTokenizerFast.save_pretrained), loaded from the directory only,
its special tokens checked by text, then preprocessing (Megatron's flags) and a stage-1 run."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aria_train.data.errors import DataError
from aria_train.data.stdlib_text import stdlib_documents
from aria_train.data.tokenizer import SPECIAL_TOKENS, load_tokenizer

REPO = Path(__file__).resolve().parents[2]
ARIA_TOKENS = ["<pad>", "<|endoftext|>", *SPECIAL_TOKENS]


def build_tokenizer_dir(out: Path, specials=ARIA_TOKENS, vocab_size: int = 500) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(stdlib_documents(max_chars=300_000), trainer)
    pad = "<pad>" if "<pad>" in specials else None
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token=pad).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_tokenizer_dir(tmp_path_factory.mktemp("hf_tok"))


def test_loads_from_the_directory_with_aria_tokens(tok_dir):
    tok = load_tokenizer(str(tok_dir), "huggingface")
    assert tok.vocab_size == 500 and (tok.pad, tok.eod, tok.unk) == (0, 1, -1)
    assert [tok.im_start, tok.im_end, tok.img, tok.fim_prefix, tok.fim_suffix] == [2, 3, 4, 5, 6]
    text = "def f(x):\n    return x  # ünïcödé 😀"
    assert tok.decode(tok.encode(text)) == text
    # special-token text in a document stays text: no forged document end or image slot
    ids = tok.encode("a <|endoftext|> b <|img|> c")
    assert tok.eod not in ids and tok.img not in ids and tok.decode(ids) == "a <|endoftext|> b <|img|> c"
    assert tok.encode_batch(["one", "two words"]) == [tok.encode("one"), tok.encode("two words")]
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode(text) == tok.encode(text) and clone.unique_identifiers == tok.unique_identifiers
    assert len(tok.unique_identifiers["model_sha256"]) == 64
    assert load_tokenizer(str(tok_dir), "HuggingFaceTokenizer").vocab_size == 500  # Megatron's name


def test_a_missing_special_token_is_one_line(tmp_path):
    out = build_tokenizer_dir(tmp_path / "no_img", specials=[t for t in ARIA_TOKENS if t != "<|img|>"])
    with pytest.raises(DataError) as err:
        load_tokenizer(str(out), "huggingface")
    assert str(err.value).startswith(f"tokenizer {out}: no token '<|img|>' in the vocabulary")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("path, message", [
    ("rhymes-ai/Aria", "not a directory"),  # a hub name is never fetched
    ("", "needs a tokenizer directory"),
])
def test_not_a_local_directory(path, message):
    with pytest.raises(DataError, match=message):
        load_tokenizer(path, "huggingface")


def test_preprocess_and_train_stage1(tok_dir, tmp_path):
    from aria_train.data.megatron_import import import_megatron

    docs = [d for d in stdlib_documents(max_chars=60_000)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    result = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input",
                             tmp_path / "corpus.jsonl", "--output-prefix", tmp_path / "corpus", "--tokenizer-type",
                             "HuggingFaceTokenizer", "--tokenizer-model", tok_dir], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    tok = load_tokenizer(str(tok_dir), "huggingface")
    indexed = import_megatron("megatron.core.datasets.indexed_dataset").IndexedDataset(str(tmp_path / "corpus"))
    assert len(indexed) == len(docs)
    assert np.asarray(indexed[3]).tolist() == tok.encode(docs[3]) + [tok.eod]

    log = tmp_path / "log"
    args = ["--stage", "1", "--train-iters", 12, "--data-path", tmp_path / "corpus", "--tokenizer-type",
            "HuggingFaceTokenizer", "--tokenizer-model", tok_dir, "--seq-length", 64, "--log-interval", 1,
            "--log-dir", log, "--set", "train.eval_interval=0", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--save", "", "--set", "data.split=98,2,0"]
    run = subprocess.run([sys.executable, str(REPO / "launch" / "pretrain.py"), *map(str, args)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    losses = [json.loads(line)["loss"] for line in (log / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 12 and np.isfinite(losses).all()
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5, losses


def test_config_rejects_unknown_tokenizer_types():
    from aria_train.config import ConfigError
    from aria_train.train.run_config import build_config

    with pytest.raises(ConfigError, match="data.tokenizer_type='tiktoken' is not one of"):
        build_config(1, None, None, {"data.tokenizer_type": "tiktoken"})
    with pytest.raises(ConfigError, match="needs data.tokenizer_model"):
        build_config(1, None, None, {"data.tokenizer_type": "huggingface"})
    assert build_config(1, None, None, {}).data.tokenizer_type == "sentencepiece"  # the demo path
