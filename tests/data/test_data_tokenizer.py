import importlib.util
import pickle
import platform
from pathlib import Path

import pytest
import sentencepiece

from aria_train.data.errors import DataError
from aria_train.data.tokenizer import DEMO_TOKENIZER_PATH, SPECIAL_TOKENS, load_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_demo_tokenizer_layout(tok):
    assert tok.vocab_size == 1024
    assert (tok.pad, tok.unk, tok.eod) == (0, 1, 2)
    assert tok.eos == tok.eod
    assert [tok.im_start, tok.im_end, tok.img, tok.fim_prefix, tok.fim_suffix] == [3, 4, 5, 6, 7]
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == [3, 4, 5, 6, 7]
    assert tok.token_id("<|endoftext|>") == tok.eod
    assert DEMO_TOKENIZER_PATH.stat().st_size < 1_000_000


def test_special_tokens_are_single_ids_inside_text(tok):
    for piece in SPECIAL_TOKENS:
        assert tok.encode(piece) == [tok.token_id(piece)]
        ids = tok.encode(f"say{piece}hello")
        assert ids.count(tok.token_id(piece)) == 1
        assert tok.decode(ids) == f"say{piece}hello"
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok.im_start and tok.im_end in ids


def test_eod_cannot_be_forged_from_text(tok):
    ids = tok.encode("a <|endoftext|> b")
    assert tok.eod not in ids
    assert tok.decode(ids) == "a <|endoftext|> b"


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "  leading and trailing spaces  ",
        "def f(x):\n\tif x:\n        return x ** 2\n\n\n",
        "ünïcödé, 日本語, emoji 😀🚀, nul-free control \x07",
        "",
    ],
)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.unk not in ids  # byte fallback covers everything
    assert tok.decode(ids) == text


def test_encode_has_no_bos_or_eod(tok):
    ids = tok.encode("hi")
    assert tok.eod not in ids and len(ids) <= 2


def test_pickle_keeps_the_model(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode("pickled <|img|> text") == tok.encode("pickled <|img|> text")
    assert clone.unique_identifiers == tok.unique_identifiers


def test_unknown_token_and_missing_file(tmp_path, tok):
    with pytest.raises(DataError, match="no token '<nope>'"):
        tok.token_id("<nope>")
    missing = tmp_path / "none.model"
    with pytest.raises(DataError) as err:
        load_tokenizer(str(missing))
    assert str(err.value) == f"tokenizer {missing}: file not found"
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataError) as err:
        load_tokenizer(str(junk))
    assert str(junk) in str(err.value) and "\n" not in str(err.value)


def test_demo_tokenizer_rebuilds_identically():
    path = REPO / "tools" / "build_demo_tokenizer.py"
    spec = importlib.util.spec_from_file_location("build_demo", path)
    build_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_demo)
    now = {"python": platform.python_version(), "sentencepiece": sentencepiece.__version__}
    if now != build_demo.BUILT_WITH:
        pytest.skip(f"asset built with {build_demo.BUILT_WITH}, running {now}")
    assert build_demo.build_demo_model() == DEMO_TOKENIZER_PATH.read_bytes()
