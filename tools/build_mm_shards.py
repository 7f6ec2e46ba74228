"""Build multimodal tar shards (KEY.json + KEY.<i>.<ext> per sample).

    # from a JSONL of samples with image paths (relative to --image-root, default the JSONL's folder)
    python tools/build_mm_shards.py jsonl --jsonl samples.jsonl --out shards/ [--samples-per-shard 1000]
        [--image-root DIR] [--shuffle-seed 0] [--on-bad-sample skip|error]

    # synthetic "pixels matter" data (drawn shapes whose captions only the pixels tell)
    python tools/build_mm_shards.py synthetic --out shards/ --num-samples 1000 [--seed 0] [--size 70]
        [--kind caption|ocr_qa|interleaved|video]

    # count samples per kind, decode every image, count the bad samples and images (one line each)
    python tools/build_mm_shards.py inspect shards/
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.data.errors import DataError  # noqa: E402


def inspect(shards: list) -> dict:
    """Reads every sample and decodes every image (as training would): counts per kind, bad
    samples (unreadable JSON, damaged tar, an image that does not decode) and bad images."""
    import io

    from PIL import Image

    from aria_train.data.multimodal.errors import BadSamples
    from aria_train.data.multimodal.shards import list_shards, read_shard

    bad, kinds, samples, images, bad_images = BadSamples(log_first=20), {}, 0, 0, 0
    for path in list_shards(shards):
        for _, sample in read_shard(path, bad):
            kind = sample.meta.get("kind") if isinstance(sample.meta, dict) else None
            kinds[str(kind)] = kinds.get(str(kind), 0) + 1
            samples += 1
            broken = []
            for index, data in sorted(sample.images.items()):
                images += 1
                try:
                    with Image.open(io.BytesIO(data)) as image:
                        image.load()
                except Exception as error:  # PIL raises many types for bad data
                    broken.append(f"image {index}: {error or type(error).__name__}")
            if broken:
                bad_images += len(broken)
                bad.report(path, sample.key, "; ".join(broken))
    return {"samples": samples, "kinds": kinds, "images": images, "bad_images": bad_images,
            "bad_samples": bad.count, "bad_by_reason": dict(bad.by_reason)}


def main(argv=None) -> int:
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
    p = sub.add_parser("inspect", help="count samples per kind; decode every image; count bad samples and images")
    p.add_argument("shards", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.command == "jsonl":
            from aria_train.data.multimodal.builder import build_shards_from_jsonl

            out = build_shards_from_jsonl(args.jsonl, args.out, args.samples_per_shard, args.image_root,
                                          args.shuffle_seed, args.on_bad_sample, args.prefix)
        elif args.command == "synthetic":
            from aria_train.data.multimodal.synthetic import write_synthetic_shards

            shards = write_synthetic_shards(args.out, args.num_samples, args.seed, args.size,
                                            args.samples_per_shard, args.kind, args.prefix)
            out = {"shards": shards, "samples": args.num_samples}
        else:
            out = inspect(args.shards)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
