"""Train an ARIA sentencepiece tokenizer (byte fallback, ARIA special tokens).

    python tools/train_tokenizer.py --input a.jsonl b.txt --output-prefix out/tok --vocab-size 32000

Writes out/tok.model and out/tok.vocab. .jsonl/.json inputs: one document per line, text in
--json-key; any other file is read as plain text.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.data.errors import DataError  # noqa: E402
from aria_train.data.tokenizer import load_tokenizer  # noqa: E402
from aria_train.data.train_tokenizer import train_tokenizer  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, help="JSONL or plain-text files")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX.model, PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="pieces in the vocabulary, special and byte pieces included")
    parser.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe",
                        help="bpe (default; exports exactly to transformers) or unigram")
    parser.add_argument("--character-coverage", type=float, default=0.9995,
                        help="share of characters covered by pieces of their own; the rest go through byte fallback")
    parser.add_argument("--json-key", default="text", help="field holding the text in .jsonl/.json inputs")
    parser.add_argument("--threads", type=int, default=1, help=">1 is faster but not reproducible")
    parser.add_argument("--verbose", action="store_true", help="show sentencepiece's log")
    args = parser.parse_args(argv)
    try:
        path = train_tokenizer(
            args.input,
            args.output_prefix,
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            json_key=args.json_key,
            num_threads=args.threads,
            verbose=args.verbose,
            character_coverage=args.character_coverage,
        )
        tokenizer = load_tokenizer(path)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path} (vocab {tokenizer.vocab_size}, eod {tokenizer.eod}, pad {tokenizer.pad})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
