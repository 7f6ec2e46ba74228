"""Tokenize a JSONL file into a Megatron indexed dataset (OUT.bin + OUT.idx).

    python tools/preprocess_data.py --input docs.jsonl --output-prefix data/docs \
        [--tokenizer-type SentencePieceTokenizer|HuggingFaceTokenizer] [--tokenizer-model tok.model|DIR] \
        [--json-key text] [--no-append-eod]

The output is the format Megatron-LM's tools/preprocess_data.py writes, so either tool's output
loads in either framework (given the same tokenizer). The tokenizer flags follow Megatron's: a
sentencepiece model file, or with --tokenizer-type HuggingFaceTokenizer (or huggingface) a local
transformers tokenizer directory. Without --tokenizer-model the demo tokenizer shipped in the
repo is used.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.data.errors import DataError  # noqa: E402
from aria_train.data.preprocess import preprocess_jsonl  # noqa: E402
from aria_train.data.tokenizer import load_tokenizer  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="JSONL file, one document per line")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX.bin and PREFIX.idx")
    parser.add_argument("--tokenizer-type", default="sentencepiece",
                        help="SentencePieceTokenizer | HuggingFaceTokenizer (or sentencepiece | huggingface)")
    parser.add_argument("--tokenizer-model", default="",
                        help="sentencepiece model file or transformers tokenizer directory; default: demo")
    parser.add_argument("--json-key", default="text", help="field holding the document text")
    parser.add_argument(
        "--append-eod",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="end every document with the end-of-document token (default: on)",
    )
    args = parser.parse_args(argv)
    try:
        tokenizer = load_tokenizer(args.tokenizer_model, args.tokenizer_type)
        stats = preprocess_jsonl(
            args.input, args.output_prefix, tokenizer, args.json_key, args.append_eod
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output_prefix}.bin/.idx: {stats.documents} documents, {stats.tokens} tokens"
        + (f", {stats.skipped_blank} blank texts skipped" if stats.skipped_blank else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
