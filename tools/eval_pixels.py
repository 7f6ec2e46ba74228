"""Caption loss with real vs blank images for a multimodal checkpoint (stage 2 or later).

    python tools/eval_pixels.py --checkpoint runs/stage2/checkpoints [--samples 64]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.eval.trained_model import load_trained_model  # noqa: E402
from aria_train.data.tokenizer import load_tokenizer  # noqa: E402
from aria_train.errors import UserError  # noqa: E402
from aria_train.eval.pixels import caption_loss_real_vs_blank  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        model, cfg = load_trained_model(args.checkpoint)
        if not cfg.multimodal:
            raise UserError(f"checkpoint {args.checkpoint} is a text-only (stage {cfg.stage}) model")
        tokenizer = load_tokenizer(cfg.data.tokenizer_model, cfg.data.tokenizer_type)
        probe = caption_loss_real_vs_blank(model, cfg, tokenizer, args.samples)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"caption loss over {probe.samples} held-out samples ({probe.caption_tokens} tokens): "
          f"real images {probe.real_loss:.4f} | blank images {probe.blank_loss:.4f} | "
          f"difference {probe.blank_loss - probe.real_loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
