"""Zero-shot classification and image-text retrieval of a stage-0 encoder on its held-out samples.

    python tools/eval_encoder.py --checkpoint runs/stage0/checkpoints [--json results.json]

Reads the run's datasets and held-out split (encoder.datasets[*].eval_samples) from the config
saved with the checkpoint; the synthetic demo data is found under the run's data.cache_dir
(relative to the working directory), or --cache-dir.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.data.errors import DataError  # noqa: E402
from aria_train.errors import UserError  # noqa: E402
from aria_train.eval.encoder import evaluate_checkpoint  # noqa: E402

LABELS = {"zero_shot_acc": "zero-shot accuracy (text prompts)", "head_acc": "classifier-head accuracy",
          "chance": "chance (1 / classes)", "majority": "majority class", "i2t_r@1": "image->text recall@1",
          "t2i_r@1": "text->image recall@1", "i2t_r@5": "image->text recall@5", "t2i_r@5": "text->image recall@5",
          "chance_r@1": "chance recall@1"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a stage-0 save directory or iter_ directory")
    parser.add_argument("--cache-dir", default=None, help="where the run's synthetic data is (default: its data.cache_dir)")
    parser.add_argument("--json", default=None, help="also write the metrics to this file")
    args = parser.parse_args(argv)
    try:
        metrics, facts = evaluate_checkpoint(args.checkpoint, args.cache_dir)
    except (UserError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{facts['checkpoint']}: held-out samples {facts['held_out']}")
    for key, value in metrics.items():
        dataset, metric = key.split("/", 1)
        print(f"  {dataset:<12} {LABELS.get(metric, metric):<36} {value:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"metrics": metrics, **facts}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
