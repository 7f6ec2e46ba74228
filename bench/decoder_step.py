"""Training steps of a full-width aria-25b decoder cut to a few layers, on one GPU (the issue-15
device suite): tokens/s, model TFLOP/s, MFU and peak memory against the accounting's estimate.

    python bench/decoder_step.py [--json OUT.json] [--layers 4] [--seq 8192] [--dry | --smoke]

aria-25b's widths (hidden 2560, 20 heads x 128, 64 experts x 1664 top-6 + 2 shared, vocabulary
100,352) with `--layers` decoder layers, one sequence of `--seq` tokens per step, the bf16 layout
(bf16 parameters, fp32 main gradients, fp32 masters and moments) in the ZeRO-1 optimizer (one
rank: nothing to shard, the same code path), bf16 autocast, the chunked loss: what the trainer runs
per micro-batch. A step = forward + loss + backward + gradient sync + optimizer step, timed with
CUDA events after warm-up (median). Model FLOPs from aria_train.train.flops; MFU against the
device's dense bf16 peak. If the estimate of `--layers` layers does not fit the GPU (4 layers need
about 81 GiB: an H200 holds them, an 80 GB H100 does not), fewer layers run and the output says so.
--smoke runs the same code with the tiny preset's widths on CPU (checks it, measures nothing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import (bench_device, cuda_times_ms, device_summary, fast_init_, median, peak_bytes,  # noqa: E402
                        top_kernels, write_json)


def model_config(layers: int, preset_name: str = "aria-25b"):
    from aria_train.config.presets import MODEL_PRESETS
    from aria_train.model.config import ModelConfig
    from aria_train.moe.config import MoEConfig

    preset = dict(MODEL_PRESETS[preset_name])
    moe = MoEConfig(**preset.pop("moe"))
    return ModelConfig(preset=preset_name, **{**preset, "num_layers": layers}, moe=moe)


def estimate_bytes(layers: int, seq: int, mode: str, preset: str = "aria-25b") -> dict:
    """The accounting's per-GPU bytes for `layers` layers on one rank: persistent + activation peak."""
    from aria_train.accounting import activation_memory, count_parameters, memory_per_rank
    from aria_train.model.decoder import build_model

    cfg = model_config(layers, preset)
    counts = count_parameters(build_model(cfg, device="meta"), cfg)
    persistent = memory_per_rank(counts, 1, 1, zero1=True, precision="bf16").total
    activations = activation_memory(cfg, seq, 1, mode, precision="bf16").peak
    return {"persistent": persistent, "activations": activations, "total": persistent + activations,
            "parameters": counts.total}


def choose_layers(requested: int, seq: int, device_bytes: float) -> tuple[int, str]:
    """The most layers (<= requested) whose estimate fits 92% of the device, and why."""
    for layers in range(requested, 0, -1):
        if estimate_bytes(layers, seq, "none")["total"] <= 0.92 * device_bytes:
            note = "" if layers == requested else (
                f"{requested} layers need {estimate_bytes(requested, seq, 'none')['total'] / 2**30:.1f} GiB "
                f"(accounting) > 92% of this GPU: ran {layers}")
            return layers, note
    raise SystemExit(f"not even one layer at seq {seq} fits this GPU")


def build(layers: int, device: str, preset: str):
    from aria_train.model.decoder import build_model
    from aria_train.optim.config import OptimizerConfig
    from aria_train.optim.zero1 import Zero1Optimizer
    from aria_train.parallel.groups import ParallelGroups

    model = build_model(model_config(layers, preset), device="meta")
    model.to_empty(device=device)
    model.rope.reset_parameters()
    fast_init_(model)
    model.train()
    optimizer = Zero1Optimizer(model, OptimizerConfig(lr=1e-4), ParallelGroups(), param_dtype=torch.bfloat16)
    return model, optimizer


def step_fn(model, optimizer, seq: int):
    from aria_train.train.loss import chunked_cross_entropy_sum

    device = model.embed_tokens.weight.device
    generator = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(0, model.cfg.vocab_size, (1, seq + 1), device=device, generator=generator)
    inputs, labels, mask = tokens[:, :-1], tokens[:, 1:].flatten(), torch.ones(seq, device=device)

    def step():
        optimizer.zero_grad()
        optimizer.begin_microbatch(is_last=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(inputs)
            lm = chunked_cross_entropy_sum(out.hidden.flatten(0, 1), model.lm_head.weight, labels, mask)
        (lm / seq + out.balance_loss + out.z_loss).backward()
        optimizer.finish_grad_sync()
        optimizer.step(1e-4)
    return step


def run(args) -> dict:
    target = bench_device("bench/decoder_step.py", args.smoke)
    from aria_train.train.flops import peak_flops, train_flops_per_token

    device = device_summary()
    preset = "tiny" if args.smoke else "aria-25b"
    if args.smoke:
        layers, note = args.layers, "smoke run (tiny widths, CPU): nothing measured"
    else:
        layers, note = choose_layers(args.layers, args.seq, torch.cuda.get_device_properties(0).total_memory)
    model, optimizer = build(layers, target, preset)
    step = step_fn(model, optimizer, args.seq)
    times = cuda_times_ms(step, args.warmup, args.iters)
    ms = median(times)
    _, peak = peak_bytes(target, step) if target == "cuda" else (0, None)  # a smoke run measures nothing
    estimate = estimate_bytes(layers, args.seq, "none", preset)
    flops = train_flops_per_token(model.cfg, args.seq) * args.seq
    tflops = flops / (ms / 1000) / 1e12
    peak_device = peak_flops(device["device"])
    result = {**device, "layers": layers, "layers_note": note, "seq": args.seq, "parameters": estimate["parameters"],
              "step_ms": ms, "times_ms": times, "tokens_per_s": args.seq / (ms / 1000), "tflops": tflops,
              "mfu": tflops * 1e12 / peak_device if peak_device else None, "target_mfu": 0.45,
              "peak_memory_gib": peak and peak / 2**30, "estimate_gib": estimate["total"] / 2**30,
              "estimate_persistent_gib": estimate["persistent"] / 2**30,
              "estimate_activations_gib": estimate["activations"] / 2**30,
              "peak_over_estimate": peak and peak / estimate["total"], "smoke": args.smoke}
    if result["mfu"] is not None and result["mfu"] < 0.45:
        result["top_kernels"] = top_kernels(step)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--dry", action="store_true", help="print the plan and the estimate, run nothing")
    parser.add_argument("--smoke", action="store_true", help="tiny widths on CPU: checks the code, measures nothing")
    args = parser.parse_args(argv)
    if args.smoke:
        args.layers, args.seq, args.warmup, args.iters = 2, 64, 1, 2
    if args.dry:
        estimate = estimate_bytes(args.layers, args.seq, "none")
        print(f"decoder_step: aria-25b widths, {args.layers} layers ({estimate['parameters'] / 1e9:.2f}B parameters), "
              f"seq {args.seq}, ZeRO-1, bf16 layout; estimate {estimate['total'] / 2**30:.1f} GiB "
              f"({estimate['persistent'] / 2**30:.1f} persistent + {estimate['activations'] / 2**30:.1f} activations); "
              f"{args.warmup} warm-up + {args.iters} timed steps")
        return 0
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
