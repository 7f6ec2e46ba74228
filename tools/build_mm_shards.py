"""Build multimodal tar shards (KEY.json + KEY.<i>.<ext> per sample) and their length indexes.

    # from a JSONL of samples with image paths (relative to --image-root, default the JSONL's folder)
    python tools/build_mm_shards.py jsonl --jsonl samples.jsonl --out shards/ [--samples-per-shard 1000]
        [--image-root DIR] [--shuffle-seed 0] [--on-bad-sample skip|error]

    # synthetic "pixels matter" data (drawn shapes whose captions only the pixels tell)
    python tools/build_mm_shards.py synthetic --out shards/ --num-samples 1000 [--seed 0] [--size 70]
        [--kind caption|ocr_qa|interleaved|video]

    # the length index (SHARD.mmidx) of existing shards or JSON/JSONL files, in any layout
    # (WebDataset/img2dataset, LLaVA, messages, OBELICS, ours); training builds missing ones itself
    python tools/build_mm_shards.py index shards/ [more shards or files...] [--jobs 4] [--image-root DIR]

    # count samples per layout and kind, and bad samples, in existing shards
    python tools/build_mm_shards.py inspect shards/

Indexes hold token counts, so they are made with the tokenizer training uses: every command takes
--tokenizer-type (sentencepiece | huggingface, or Megatron's names) and --tokenizer-model (default:
the demo tokenizer).
"""

import argparse
import json
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.data.errors import DataError  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("jsonl", help="shards from a JSONL of samples with image paths")
    p.add_argument("--jsonl", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--image-root", default=None)
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--prefix", default="shard")
    p.add_argument("--shuffle-seed", type=int, default=None)
    p.add_argument("--on-bad-sample", choices=("skip", "error"), default="skip")
    p = sub.add_parser("synthetic", help="synthetic drawn-shapes shards")
    p.add_argument("--out", required=True)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=70, help="image side in pixels (70 = one tiny-preset crop)")
    p.add_argument("--samples-per-shard", type=int, default=250)
    p.add_argument("--kind", default=None, help="only this kind (default: a mix)")
    p.add_argument("--prefix", default="synthetic")
    p = sub.add_parser("index", help="write the length index of shards / JSON files")
    p.add_argument("shards", nargs="+")
    p.add_argument("--image-root", default=None, help="image folder of JSON / JSONL files (default: their folder)")
    p.add_argument("--jobs", type=int, default=1, help="processes indexing in parallel")
    p = sub.add_parser("inspect", help="count samples per layout and kind, and bad samples")
    p.add_argument("shards", nargs="+")
    for p in sub.choices.values():
        p.add_argument("--tokenizer-type", default="sentencepiece")
        p.add_argument("--tokenizer-model", default="", help="default: the demo tokenizer")
    return parser


def _index(args) -> dict:
    from aria_train.data.multimodal.index_build import index_job
    from aria_train.data.multimodal.sources import list_shards

    jobs = [(unit, args.tokenizer_model, args.tokenizer_type, args.image_root) for unit in list_shards(args.shards)]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            summaries = list(pool.map(index_job, jobs))
    else:
        summaries = [index_job(job) for job in jobs]
    return {"units": len(summaries), "samples": sum(s["samples"] for s in summaries),
            "usable": sum(s["good"] for s in summaries),
            "undecodable_images": sum(s["pixel_errors"] for s in summaries),
            "damaged": [s["unit"] for s in summaries if s["damage"]]}


def _inspect(args) -> dict:
    from aria_train.data.multimodal.errors import BadSamples
    from aria_train.data.multimodal.sources import ShardSource, list_shards

    bad, kinds, layouts, n = BadSamples(), {}, {}, 0
    for path in list_shards(args.shards):
        source = ShardSource(path, shuffle_shards=False, bad=bad)
        for _, sample in source.unit_samples(0, 0, 0):
            kind = str(sample.meta.get("kind"))
            kinds[kind] = kinds.get(kind, 0) + 1
            layouts[sample.fmt] = layouts.get(sample.fmt, 0) + 1
            n += 1
    return {"samples": n, "kinds": kinds, "layouts": layouts, "bad_samples": bad.count}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        from aria_train.data.tokenizer import load_tokenizer

        if args.command == "jsonl":
            from aria_train.data.multimodal.builder import build_shards_from_jsonl

            tokenizer = load_tokenizer(args.tokenizer_model, args.tokenizer_type)
            out = build_shards_from_jsonl(args.jsonl, args.out, args.samples_per_shard, args.image_root,
                                          args.shuffle_seed, args.on_bad_sample, args.prefix, tokenizer=tokenizer)
        elif args.command == "synthetic":
            from aria_train.data.multimodal.synthetic import write_synthetic_shards

            tokenizer = load_tokenizer(args.tokenizer_model, args.tokenizer_type)
            shards = write_synthetic_shards(args.out, args.num_samples, args.seed, args.size,
                                            args.samples_per_shard, args.kind, args.prefix, tokenizer=tokenizer)
            out = {"shards": shards, "samples": args.num_samples}
        elif args.command == "index":
            out = _index(args)
        else:
            out = _inspect(args)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
