import importlib.util
import json
from pathlib import Path

import pytest

from aria_train.data.errors import DataError
from aria_train.data.tokenizer import SPECIAL_TOKENS, load_tokenizer
from aria_train.data.train_tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[2]


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def tiny_jsonl(tmp_path):
    path = tmp_path / "tiny.jsonl"
    with open(path, "w") as f:
        for i in range(150):
            text = f"Document {i}: the quick brown fox jumps over the lazy dog.\n    indent {i % 7}"
            f.write(json.dumps({"text": text, "id": i}) + "\n")
    return path


def test_cli_trains_a_tokenizer_with_special_tokens(tmp_path, tiny_jsonl, capsys):
    prefix = tmp_path / "out" / "tok"
    rc = _load_tool("train_tokenizer").main(
        ["--input", str(tiny_jsonl), "--output-prefix", str(prefix), "--vocab-size", "320"]
    )
    assert rc == 0
    assert "vocab 320" in capsys.readouterr().out
    tok = load_tokenizer(str(prefix) + ".model")
    assert tok.vocab_size == 320
    assert (tok.pad, tok.eod) == (0, 2)
    for piece in SPECIAL_TOKENS:
        assert tok.encode(piece) == [tok.token_id(piece)]
    text = "the lazy fox <|im_end|> Zürich ☃"  # unseen characters go through byte fallback
    assert tok.decode(tok.encode(text)) == text
    assert tok.unk not in tok.encode(text)
    vocab_lines = (tmp_path / "out" / "tok.vocab").read_text().splitlines()
    assert len(vocab_lines) == 320 and vocab_lines[2] == "<|endoftext|>\t2"


def test_plain_text_input_and_unigram(tmp_path):
    path = tmp_path / "corpus.txt"
    words = "plain text files train tokenizers too, with punctuation; numbers and Capitals".split()
    lines = [" ".join(words[i % 7 :] + words[: i % 7]) + f" {i}" for i in range(400)]
    path.write_text("\n".join(lines))
    model = train_tokenizer([str(path)], str(tmp_path / "uni"), 300, model_type="unigram")
    tok = load_tokenizer(model)
    assert tok.vocab_size == 300
    assert tok.encode("<fim_prefix>") == [tok.fim_prefix]


def test_training_is_deterministic(tmp_path, tiny_jsonl):
    a = train_tokenizer([str(tiny_jsonl)], str(tmp_path / "a"), vocab_size=320)
    b = train_tokenizer([str(tiny_jsonl)], str(tmp_path / "b"), vocab_size=320)
    assert Path(a).read_bytes() == Path(b).read_bytes()


def test_errors_are_one_line(tmp_path, tiny_jsonl):
    with pytest.raises(DataError) as err:
        train_tokenizer([str(tiny_jsonl)], str(tmp_path / "big"), vocab_size=50_000)
    assert str(err.value).startswith("tokenizer training: Vocabulary size too high")
    assert "\n" not in str(err.value)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(DataError) as err:
        train_tokenizer([str(bad)], str(tmp_path / "bad"), vocab_size=300)
    assert str(err.value).startswith(f"{bad}:3: malformed JSON")

    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        train_tokenizer([str(tmp_path / "missing.jsonl")], str(tmp_path / "m"), vocab_size=300)


def test_cli_error_suggests_flags_the_tool_has(tmp_path, capsys):
    """sentencepiece's "decrease character_coverage with --character_coverage" names our flags."""
    path = tmp_path / "han.jsonl"
    with open(path, "w") as f:
        for i in range(300):
            f.write(json.dumps({"text": "".join(chr(0x4E00 + (i * 7 + j) % 3000) for j in range(40))}) + "\n")
    tool = _load_tool("train_tokenizer")
    rc = tool.main(["--input", str(path), "--output-prefix", str(tmp_path / "t"), "--vocab-size", "300"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Increase --vocab-size or decrease the character coverage with --character-coverage (>= 0.98)" in err
    rc = tool.main(["--input", str(path), "--output-prefix", str(tmp_path / "t"), "--vocab-size", "2500",
                    "--character-coverage", "0.98"])
    assert rc == 0 and "vocab 2500" in capsys.readouterr().out
    assert tool.main(["--input", str(path), "--output-prefix", str(tmp_path / "t"), "--vocab-size", "300",
                      "--character-coverage", "0.5"]) == 1
    assert "character coverage 0.5 must be within [0.98, 1.0]" in capsys.readouterr().err
