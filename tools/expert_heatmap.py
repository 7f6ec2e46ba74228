"""Expert activation heatmap (layers x experts), in the style of ARIA's Figure 1, as PNG + CSV + JSON.

From the routing statistics a run logged (metrics.jsonl, `router_counts`, summed over the logged
windows chosen):

    python tools/expert_heatmap.py --jsonl runs/my-stage2-run/metrics.jsonl --out runs/my-stage2-run/experts
    python tools/expert_heatmap.py --jsonl runs/my-stage2-run/metrics.jsonl --last 10 --out experts

From a checkpoint, running a few batches of its stage's data through the model (one process):

    python tools/expert_heatmap.py --checkpoint runs/my-stage2-run --batches 4 --out experts

What is drawn: with image tokens in the data, the visual specialisation R_v/R_t of every expert
(activation rate on image tokens over that on text tokens; ARIA Fig. 1), log2 scale; without,
the activation rate (fraction of tokens that chose the expert among their top-k). At most
--max-experts (default 50) experts are drawn; the CSV/JSON hold all of them.
Outputs in --out: expert_heatmap.png, expert_activation.csv (one row per layer and expert),
expert_activation.json (the arrays).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# ---- statistics -------------------------------------------------------------------------------
def stats_from_jsonl(path: Path, last: int | None = None) -> dict:
    """Sums the `router_counts` of the logged windows (the last `last` of them, default all)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "router_counts" in record:
            records.append(record)
    if not records:
        raise SystemExit(f"error: {path} has no router_counts records (logged by aria-train's trainer)")
    records = records[-last:] if last else records
    counts = None
    tokens = None
    visual = text = None
    for record in records:
        rc = record["router_counts"]
        tpe = rc["tokens_per_expert"]
        counts = tpe if counts is None else _add(counts, tpe)
        layer_tokens = rc.get("tokens") or [None] * len(tpe)
        tokens = layer_tokens if tokens is None else [a + b if None not in (a, b) else None
                                                       for a, b in zip(tokens, layer_tokens)]
        if "activation_rate_visual" in rc:
            v = [[r * n for r in row] for row, n in zip(rc["activation_rate_visual"], rc["visual_tokens"])]
            t = [[r * n for r in row] for row, n in zip(rc["activation_rate_text"], rc["text_tokens"])]
            vt, tt = rc["visual_tokens"], rc["text_tokens"]
            if visual is None:
                visual, text = {"counts": v, "tokens": vt}, {"counts": t, "tokens": tt}
            else:
                visual = {"counts": _add(visual["counts"], v), "tokens": [a + b for a, b in zip(visual["tokens"], vt)]}
                text = {"counts": _add(text["counts"], t), "tokens": [a + b for a, b in zip(text["tokens"], tt)]}
    steps = [r["step"] for r in records]
    return _finish(counts, tokens, visual, text, source=f"{path} (steps {steps[0]}-{steps[-1]}, {len(steps)} windows)")


def stats_from_checkpoint(checkpoint: str, batches: int) -> dict:
    import torch

    from aria_train.checkpoint import resolve_load_dir
    from aria_train.data.stage_data import build_stage_data
    from aria_train.eval.trained_model import load_trained_model
    from aria_train.parallel.groups import init_parallel_groups
    from aria_train.train.routing_metrics import RoutingAccumulator

    model, cfg = load_trained_model(checkpoint)
    cfg.train.train_iters = max(batches, 1)  # only sizes the sample index the data builds
    cfg.train.eval_interval = 0

    class _Quiet:
        @staticmethod
        def info(message):
            print(message, file=sys.stderr)

    groups = init_parallel_groups(1)
    data = build_stage_data(cfg, groups, _Quiet())
    acc = RoutingAccumulator(len(cfg.model.moe_layers), cfg.model.moe.num_experts, layer_ids=cfg.model.moe_layers)
    image_token_id = getattr(model, "image_token_id", None)
    with torch.no_grad():
        for _ in range(batches):
            for batch in data.train.next_global_batch():
                images = {"patches": batch["patches"], "grid": batch["grid"]} if "patches" in batch else {}
                out = model(batch["tokens"], position_ids=batch["position_ids"], **images)
                is_visual = batch.get("is_visual")
                if is_visual is None and image_token_id is not None and "patches" in batch:
                    is_visual = batch["tokens"] == image_token_id
                acc.add(out.router_stats, None if is_visual is None else is_visual.reshape(-1))
    _, counts = acc.reduce_and_reset(groups)
    visual = text = None
    if "activation_rate_visual" in counts:
        visual = {"counts": [[r * n for r in row] for row, n in zip(counts["activation_rate_visual"], counts["visual_tokens"])],
                  "tokens": counts["visual_tokens"]}
        text = {"counts": [[r * n for r in row] for row, n in zip(counts["activation_rate_text"], counts["text_tokens"])],
                "tokens": counts["text_tokens"]}
    return _finish(counts["tokens_per_expert"], counts["tokens"], visual, text,
                   source=f"{resolve_load_dir(checkpoint)} (stage {cfg.stage}, {batches} global batches of its "
                          f"training data)")


def _add(a, b):
    return [[x + y for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]


def _finish(counts, tokens, visual, text, source: str) -> dict:
    layers, experts = len(counts), len(counts[0])
    rate = []
    for layer in range(layers):
        n = tokens[layer] if tokens and tokens[layer] else None
        total = sum(counts[layer])
        # Without a token count (older logs), the share of assignments is shown instead.
        rate.append([c / n if n else (c / total if total else 0.0) for c in counts[layer]])
    out = {"source": source, "layers": layers, "experts": experts, "tokens_per_expert": counts,
           "activation_rate": rate}
    if visual is not None and sum(visual["tokens"]) > 0:
        r_v = [[c / n if n else 0.0 for c in row] for row, n in zip(visual["counts"], visual["tokens"])]
        r_t = [[c / n if n else 0.0 for c in row] for row, n in zip(text["counts"], text["tokens"])]
        out["activation_rate_visual"], out["activation_rate_text"] = r_v, r_t
        out["visual_specialisation"] = [[v / t if t else (math.inf if v else math.nan) for v, t in zip(rv, rt)]
                                        for rv, rt in zip(r_v, r_t)]
    return out


# ---- outputs ----------------------------------------------------------------------------------
def write_outputs(stats: dict, out_dir: Path, max_experts: int = 50) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"png": out_dir / "expert_heatmap.png", "csv": out_dir / "expert_activation.csv",
             "json": out_dir / "expert_activation.json"}
    columns = [k for k in ("tokens_per_expert", "activation_rate", "activation_rate_visual", "activation_rate_text",
                           "visual_specialisation") if k in stats]
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "expert", *columns])
        for layer in range(stats["layers"]):
            for expert in range(stats["experts"]):
                writer.writerow([layer, expert, *(stats[c][layer][expert] for c in columns)])
    paths["json"].write_text(json.dumps(stats, indent=1, default=str))
    _plot(stats, paths["png"], max_experts)
    return paths


def _plot(stats: dict, path: Path, max_experts: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = min(stats["experts"], max_experts)
    if "visual_specialisation" in stats:
        values = np.array(stats["visual_specialisation"], dtype=float)[:, :shown]
        values = np.log2(np.clip(np.nan_to_num(values, nan=1.0, posinf=2**8), 2**-8, 2**8))
        title, label, cmap = "Visual specialisation of experts", "log2(R_visual / R_text)", "RdBu_r"
        limit = max(float(np.abs(values).max()), 1e-6)
        vmin, vmax = -limit, limit
    else:
        values = np.array(stats["activation_rate"], dtype=float)[:, :shown]
        title, label, cmap = "Expert activation rate", "activation rate", "viridis"
        vmin, vmax = 0.0, max(float(values.max()), 1e-6)
    layers = stats["layers"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * shown + 2), max(2.5, 0.3 * layers + 1.5)))
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                      origin="lower")
    ax.set_xlabel(f"expert (0-{shown - 1} of {stats['experts']})")
    ax.set_ylabel("layer")
    ax.set_title(title)
    ax.set_yticks(range(layers))
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--jsonl", type=Path, help="metrics.jsonl of a run")
    source.add_argument("--checkpoint", help="checkpoint directory (its `latest`) or an iter_N directory")
    parser.add_argument("--last", type=int, default=None, help="with --jsonl: only the last N logged windows")
    parser.add_argument("--batches", type=int, default=4, help="with --checkpoint: global batches to route")
    parser.add_argument("--max-experts", type=int, default=50, help="experts drawn (all go to CSV/JSON)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    stats = stats_from_jsonl(args.jsonl, args.last) if args.jsonl else stats_from_checkpoint(args.checkpoint, args.batches)
    paths = write_outputs(stats, args.out, args.max_experts)
    print(f"{stats['layers']} layers x {stats['experts']} experts from {stats['source']}")
    for kind, path in paths.items():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
