"""One full-width aria-25b decoder layer at 65,536 tokens with selective recompute on one GPU:
the measured peak memory of a training step against the accounting's estimate (issue-15 device
suite).

    python bench/long_layer_memory.py [--json OUT.json] [--seq 65536] [--mode selective] [--dry | --smoke]

The model is aria-25b's embedding, one decoder layer (all 64 experts on the one rank), the final
norm and the LM head, in the bf16 layout with the ZeRO-1 optimizer; one sequence of `--seq`
tokens through the chunked loss. Measured: torch.cuda.max_memory_allocated() over one
forward + backward, minus what was allocated before it (parameters, main gradients, optimizer
state), against aria_train.accounting.activation_memory(...).peak; and the whole peak against
persistent + activations. The accounting adds no fragmentation margin: the ratio says how much
a GPU run needs on top. --smoke: the tiny preset's widths at 512 tokens on CPU (the profiler's
allocator peak; checks the code).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decoder_step import model_config  # noqa: E402
from gpu_common import bench_device, device_summary, fast_init_, peak_bytes, write_json  # noqa: E402


def estimate(seq: int, mode: str, preset: str = "aria-25b") -> dict:
    from aria_train.accounting import activation_memory, count_parameters, memory_per_rank
    from aria_train.model.decoder import build_model

    cfg = model_config(1, preset)
    cfg.activation_checkpointing = mode
    counts = count_parameters(build_model(cfg, device="meta"), cfg)
    activations = activation_memory(cfg, seq, 1, mode, precision="bf16")
    return {"persistent": memory_per_rank(counts, 1, 1, zero1=True, precision="bf16").total,
            "activations": activations.peak, "phases": activations.phases}


def run(args) -> dict:
    device = bench_device("bench/long_layer_memory.py", args.smoke)
    from aria_train.model.decoder import build_model
    from aria_train.optim.config import OptimizerConfig
    from aria_train.optim.zero1 import Zero1Optimizer
    from aria_train.parallel.groups import ParallelGroups
    from aria_train.train.loss import chunked_cross_entropy_sum

    preset = "tiny" if args.smoke else "aria-25b"
    cfg = model_config(1, preset)
    cfg.activation_checkpointing = args.mode
    model = build_model(cfg, device="meta")
    model.to_empty(device=device)
    model.rope.reset_parameters()
    fast_init_(model)
    model.train()
    optimizer = Zero1Optimizer(model, OptimizerConfig(), ParallelGroups(), param_dtype=torch.bfloat16)
    generator = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (1, args.seq + 1), device=device, generator=generator)
    mask = torch.ones(args.seq, device=device)

    def step():
        optimizer.zero_grad()
        optimizer.begin_microbatch(is_last=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(tokens[:, :-1])
            lm = chunked_cross_entropy_sum(out.hidden.flatten(0, 1), model.lm_head.weight, tokens[:, 1:].flatten(), mask)
        (lm / args.seq + out.balance_loss + out.z_loss).backward()
        optimizer.finish_grad_sync()

    step()  # warm-up: kernels, the grouped-GEMM probe
    before, peak = peak_bytes(device, step)
    if device == "cpu":  # the profiler counts from zero at the start of the step
        peak += before
    est = estimate(args.seq, args.mode, preset)
    measured_activations = peak - before
    return {**device_summary(), "seq": args.seq, "mode": args.mode, "smoke": args.smoke,
            "measured_activations_gib": measured_activations / 2**30,
            "estimated_activations_gib": est["activations"] / 2**30,
            "activations_measured_over_estimate": measured_activations / est["activations"],
            "measured_peak_gib": peak / 2**30, "persistent_before_step_gib": before / 2**30,
            "estimated_total_gib": (est["persistent"] + est["activations"]) / 2**30,
            "estimated_phases_gib": {k: v / 2**30 for k, v in est["phases"].items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--seq", type=int, default=65536)
    parser.add_argument("--mode", default="selective", choices=["none", "full", "selective"])
    parser.add_argument("--dry", action="store_true", help="print the plan and the estimate, run nothing")
    parser.add_argument("--smoke", action="store_true", help="tiny widths on CPU: checks the code")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seq = 512
    if args.dry:
        est = estimate(args.seq, args.mode)
        print(f"long_layer_memory: 1 aria-25b layer, seq {args.seq}, {args.mode} recompute, bf16 layout; estimate "
              f"{est['activations'] / 2**30:.1f} GiB activations + {est['persistent'] / 2**30:.1f} GiB persistent")
        return 0
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
