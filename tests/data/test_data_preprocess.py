import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from aria_train.data.errors import DataError
from aria_train.data.megatron_import import import_megatron
from aria_train.data.preprocess import preprocess_jsonl
from aria_train.data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    "The first document.",
    "def second(x):\n    return x  # <|im_start|> inside",
    "   ",  # blank: skipped
    "Third, with ünïcode and 😀.",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture()
def jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for text in TEXTS:
            f.write(json.dumps({"text": text, "meta": 1}) + "\n")
    return path


def load_tool():
    path = REPO / "tools" / "preprocess_data.py"
    spec = importlib.util.spec_from_file_location("preprocess_data", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _read_back(prefix):
    indexed = import_megatron("megatron.core.datasets.indexed_dataset")
    dataset = indexed.IndexedDataset(str(prefix))
    return dataset, [dataset[i].tolist() for i in range(len(dataset))]


def test_read_back_equals_encoded_ids_plus_eod(tmp_path, jsonl, tok):
    stats = preprocess_jsonl(str(jsonl), str(tmp_path / "out"), tok)
    kept = [t for t in TEXTS if t.strip()]
    expected = [tok.encode(t) + [tok.eod] for t in kept]
    dataset, docs = _read_back(tmp_path / "out")
    assert docs == expected
    assert dataset.index.dtype == np.uint16  # what Megatron-LM picks for a 1024 vocab
    assert list(dataset.document_indices) == [0, 1, 2, 3]
    assert (stats.documents, stats.tokens, stats.skipped_blank) == (3, sum(map(len, expected)), 1)
    assert sorted(os.listdir(tmp_path)) == ["docs.jsonl", "out.bin", "out.idx"]  # no temp files


def test_cli_without_eod_and_other_key(tmp_path, tok, capsys):
    path = tmp_path / "k.jsonl"
    path.write_text("".join(json.dumps({"content": t}) + "\n" for t in ("alpha beta", "gamma")))
    tool = load_tool()
    argv = ["--input", str(path), "--output-prefix", str(tmp_path / "k"), "--json-key", "content"]
    assert tool.main(argv + ["--no-append-eod"]) == 0
    assert "2 documents" in capsys.readouterr().out
    _, docs = _read_back(tmp_path / "k")
    assert docs == [tok.encode("alpha beta"), tok.encode("gamma")]


def test_malformed_line_names_file_and_line(tmp_path, tok, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": broken\n')
    with pytest.raises(DataError) as err:
        preprocess_jsonl(str(path), str(tmp_path / "bad"), tok)
    assert str(err.value) == f"{path}:3: malformed JSON (Expecting value)"
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]  # nothing half-written left behind

    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: no 'text' field"):
        preprocess_jsonl(str(path), str(tmp_path / "bad"), tok)

    tool = load_tool()
    assert tool.main(["--input", str(path), "--output-prefix", str(tmp_path / "bad")]) == 1
    assert capsys.readouterr().err == f"error: {path}:2: no 'text' field\n"
