"""Cluster similar documents into packed sequences (in-context pretraining, as ARIA does):
kNN graph (faiss) -> minimum spanning tree (scipy) -> depth-first walk -> groups of one sequence.

    python tools/cluster_pack.py --input data/corpus --output-prefix data/corpus_clustered \
        --seq-length 8192 [--k 10] [--leaf-size 10000] [--embedder hashed-tfidf|module:factory] \
        [--dim 256] [--workdir cluster_work] [--tokenizer-model tok.model]

--input is a Megatron prefix (PREFIX.bin/.idx) or a .jsonl file (tokenized first). Writes
OUTPUT.bin/.idx with the documents ordered group by group, OUTPUT.groups.npy (group boundaries),
OUTPUT.order.npy (source index of each output document) and OUTPUT.groups.json (summary, last).
Train on it with `--set data.packing=clustered --data-path OUTPUT`.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.data.errors import DataError  # noqa: E402
from aria_train.errors import UserError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="Megatron prefix, or a .jsonl file")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--seq-length", type=int, required=True, help="the data.seq_length the groups fill")
    p.add_argument("--k", type=int, default=10, help="neighbours per document in the kNN graph")
    p.add_argument("--leaf-size", type=int, default=10000,
                   help="largest bucket ordered by one kNN + MST; larger sets are split by k-means first")
    p.add_argument("--embedder", default="hashed-tfidf", help="hashed-tfidf, or module:factory")
    p.add_argument("--dim", type=int, default=256, help="embedding dimensions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="", help="embeddings (memory-mapped); default OUTPUT_PREFIX.work")
    p.add_argument("--tokenizer-model", default="", help="sentencepiece model (JSONL input); default: demo")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from aria_train.data.curation.embed import load_embedder
        from aria_train.data.curation.pack import cluster_pack, source_prefix
        from aria_train.data.tokenizer import load_tokenizer

        if args.seq_length < 1 or args.k < 1 or args.leaf_size < 2:
            raise UserError("cluster_pack: --seq-length and --k must be >= 1, --leaf-size >= 2")
        tokenizer = load_tokenizer(args.tokenizer_model)
        workdir = Path(args.workdir or args.output_prefix + ".work")
        workdir.mkdir(parents=True, exist_ok=True)
        prefix = source_prefix(args.input, workdir, tokenizer)
        embedder = load_embedder(args.embedder, tokenizer, dim=args.dim)
        summary = cluster_pack(prefix, args.output_prefix, args.seq_length, embedder, workdir, k=args.k,
                               leaf_size=args.leaf_size, seed=args.seed)
    except (UserError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.output_prefix}.bin/.idx/.groups.npy: {summary['documents']} documents in "
          f"{summary['groups']} groups, {summary['fill']:.1%} of the sequence slots filled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
