"""Long-context passkey retrieval of a model, over context lengths x needle depths.

    python tools/eval_passkey.py --checkpoint runs/my-stage3-run --lengths 8192 16384 32768 65536 \
        --depths 0 0.25 0.5 0.75 1 --trials 5 --out runs/my-stage3-run/passkey
    python tools/eval_passkey.py --random-init --model tiny --out /tmp/passkey   # a smoke run

Writes passkey.csv, passkey.md (depth x length table) and passkey_heatmap.png into --out and
prints the table. Scoring and prompt format: aria_train.eval.passkey.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="passkey retrieval over context lengths x needle depths")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="an aria-train checkpoint dir (or its root: the latest)")
    source.add_argument("--random-init", action="store_true", help="a randomly initialised model (smoke test)")
    parser.add_argument("--model", default="tiny", help="with --random-init: the model preset")
    parser.add_argument("--rope-base", type=float, default=None, help="override the model's RoPE base")
    parser.add_argument("--tokenizer", default="", help="sentencepiece model (default: the demo tokenizer)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--trials", type=int, default=4, help="random keys per cell")
    parser.add_argument("--method", choices=["rank", "greedy"], default="rank")
    parser.add_argument("--candidates", type=int, default=5, help="with --method rank: keys ranked per trial")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch

    from aria_train.data.tokenizer import load_tokenizer
    from aria_train.errors import UserError
    from aria_train.eval.passkey import DecoderScorer, evaluate_passkey, load_decoder_from_checkpoint, write_results

    try:
        tokenizer = load_tokenizer(args.tokenizer)
        if args.checkpoint:
            model, cfg = load_decoder_from_checkpoint(args.checkpoint, args.rope_base)
            name = f"{args.checkpoint} (stage {cfg.stage}, rope base {cfg.model.rope_base:g})"
        else:
            from aria_train.train.run_config import build_config
            from aria_train.model.decoder import build_model

            overrides = {"model.rope_base": args.rope_base} if args.rope_base else {}
            cfg = build_config(1, preset=args.model, overrides=overrides)
            torch.manual_seed(args.seed)
            model = build_model(cfg.model, seed=args.seed).eval()
            name = f"random-init {args.model}"
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise UserError(f"tokenizer has {tokenizer.vocab_size} tokens, the model only {model.cfg.vocab_size}")
        model.to(args.device)
        results = evaluate_passkey(DecoderScorer(model), tokenizer, args.lengths, args.depths, args.trials,
                                   args.method, args.candidates, args.seed, args.device)
    except (UserError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    title = f"passkey ({args.method}{', %d candidates' % args.candidates if args.method == 'rank' else ''}): {name}"
    paths = write_results(results, Path(args.out), title, args.candidates if args.method == "rank" else None)
    print(paths["markdown"].read_text(), end="")
    print(f"wrote {paths['csv']}, {paths['markdown']}, {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
