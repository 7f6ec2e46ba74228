"""Bad input stops launch/pretrain.py with one `error:` line and a non-zero exit code."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_launcher(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "launch" / "pretrain.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=180)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_config_error():
    result = run_launcher("--stage", "1", "--set", "model.moe.top_k=99")
    assert one_error_line(result) == "error: model.moe.top_k=99 exceeds model.moe.num_experts=16"


def test_unknown_config_key():
    result = run_launcher("--stage", "1", "--set", "optimizer.learning_rate=1")
    assert one_error_line(result) == "error: unknown config key optimizer.learning_rate"


def test_missing_data_prefix(tmp_path):
    result = run_launcher("--stage", "1", "--data-path", tmp_path / "corpus", "--log-dir", tmp_path / "log",
                          "--set", f"data.cache_dir={tmp_path / 'cache'}", "--save", "", cwd=tmp_path)
    line = one_error_line(result)
    assert str(tmp_path / "corpus") in line and "not found" in line


@pytest.fixture
def corrupt_prefix(tmp_path):
    from aria_train.data.preprocess import preprocess_jsonl
    from aria_train.data.tokenizer import load_tokenizer

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join('{"text": "document number %d about ARIA"}' % i for i in range(50)) + "\n")
    preprocess_jsonl(str(corpus), str(tmp_path / "corpus"), load_tokenizer(""))
    idx = tmp_path / "corpus.idx"
    idx.write_bytes(b"NOT-AN-INDEX" + idx.read_bytes()[12:])
    return tmp_path / "corpus"


def test_corrupt_index(corrupt_prefix, tmp_path):
    result = run_launcher("--stage", "1", "--data-path", corrupt_prefix, "--log-dir", tmp_path / "log",
                          "--set", f"data.cache_dir={tmp_path / 'cache'}", "--save", "", cwd=tmp_path)
    line = one_error_line(result)
    assert f"{corrupt_prefix}.idx" in line
    assert not (tmp_path / "runs").exists()


def test_help_is_fast_and_names_every_flag():
    """--help parses the flags only: torch is never imported, and every flag has a help text."""
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "launch" / "pretrain.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--run-name" in result.stdout and "--overwrite" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "aria_train.config.cli" in imported
    from aria_train.config.cli import build_parser

    # A help text says what the flag does; the config key it sets ("[section.key]") is not enough.
    undocumented = [a.option_strings for a in build_parser()._actions
                    if not re.sub(r"\[[\w.]+\]$", "", a.help or "").strip()]
    assert undocumented == []
