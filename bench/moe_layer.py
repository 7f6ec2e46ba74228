"""One MoE layer at ARIA's shape, forward + backward, ours against transformers' AriaTextMoELayer
on the same GPU in the same process (the issue-15 device suite).

    python bench/moe_layer.py [--json OUT.json] [--tokens 8192] [--dry | --smoke]

Shape: hidden 2560, 64 routed experts of width 1664, top-6, shared experts 2 x 1664 = 3328,
8,192 tokens, bf16 parameters and activations, the router's own (learned-gate) top-k routing,
dropless. Both layers hold the same weights and get the same input and output gradient. Ours:
aria_train.moe.layer.MoELayer as the trainer runs it (bf16 layout, bf16 autocast, fp32 router,
grouped GEMM); transformers: AriaTextMoELayer with the experts implementation a
PreTrainedModel would pick (grouped_mm where the version has it, named in the output). Timing:
CUDA events over `--iters` calls after `--warmup`, median. TFLOP/s are model FLOPs (router +
top-k SwiGLU experts + shared MLP, backward = 2 x forward) over the median time. Targets
(issue 15): >= 550 TFLOP/s and >= 1.3x transformers; the top kernels of one step are listed.
--smoke runs the same code at a tiny shape on CPU (checks it, measures nothing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import (bench_device, cuda_times_ms, device_summary, median, moe_layer_forward_flops,  # noqa: E402
                        top_kernels, write_json)

ARIA = {"hidden": 2560, "experts": 64, "top_k": 6, "ffn": 1664, "shared": 2}
SMOKE = {"hidden": 64, "experts": 8, "top_k": 2, "ffn": 32, "shared": 2}


def build_layers(device: str, shape: dict):
    """(ours, transformers' or None, its experts implementation) with the same bf16 weights."""
    from aria_train.moe.config import MoEConfig
    from aria_train.moe.layer import MoELayer

    ours = MoELayer(shape["hidden"], MoEConfig(num_experts=shape["experts"], top_k=shape["top_k"],
                                               num_shared_experts=shape["shared"], expert_ffn_size=shape["ffn"],
                                               balance_group_size=4)).to(device)
    with torch.no_grad():
        generator = torch.Generator(device=device).manual_seed(0)
        for param in ours.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    ours = ours.to(torch.bfloat16)
    try:
        from transformers import AriaTextConfig
        from transformers.models.aria.modeling_aria import AriaTextMoELayer
    except ImportError as error:
        return ours, None, f"unavailable ({error})"
    config = AriaTextConfig(hidden_size=shape["hidden"], intermediate_size=shape["ffn"],
                            moe_num_experts=shape["experts"], moe_topk=shape["top_k"],
                            moe_num_shared_experts=shape["shared"])
    implementation = _pick_experts_implementation(config)
    theirs = AriaTextMoELayer(config).to(device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        theirs.router.weight.copy_(ours.router.weight)
        theirs.experts.gate_up_proj.copy_(ours.experts.w_gate_up)
        theirs.experts.down_proj.copy_(ours.experts.w_down)
        for name in ("gate_proj", "up_proj", "down_proj"):
            getattr(theirs.shared_experts, name).weight.copy_(getattr(ours.shared, name).weight)
    return ours, theirs, implementation


def _pick_experts_implementation(config) -> str:
    """What a PreTrainedModel picks by default: grouped_mm where this transformers has it."""
    if not hasattr(config, "_experts_implementation"):
        return "eager (this transformers has no experts implementations)"
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

        if "grouped_mm" in ALL_EXPERTS_FUNCTIONS:
            config._experts_implementation = "grouped_mm"
            return "grouped_mm"
    except ImportError:
        pass
    return "eager"


def step_fn(layer, x, grad, ours: bool):
    def step():
        x.grad = None
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = layer(x)
            hidden = out.hidden if ours else out
            if ours:  # the balance losses are part of our layer's work in training
                hidden = hidden + 0 * (out.balance_loss + out.z_loss)
        hidden.backward(grad)
    return step


def run(args) -> dict:
    device = bench_device("bench/moe_layer.py", args.smoke)
    shape = SMOKE if args.smoke else ARIA
    ours, theirs, implementation = build_layers(device, shape)
    generator = torch.Generator(device=device).manual_seed(1)
    hidden = shape["hidden"]
    x = torch.randn(args.tokens, hidden, device=device, dtype=torch.bfloat16, generator=generator).requires_grad_(True)
    grad = torch.randn(args.tokens, hidden, device=device, dtype=torch.bfloat16, generator=generator)
    flops = 3 * moe_layer_forward_flops(args.tokens, hidden, shape["experts"], shape["top_k"], shape["ffn"],
                                        shape["shared"] * shape["ffn"])
    result = {"shape": {"tokens": args.tokens, **shape, "shared": shape["shared"] * shape["ffn"]},
              "model_tflop_per_step": flops / 1e12, **device_summary(), "smoke": args.smoke,
              "transformers_experts": implementation}
    sides = {"ours": step_fn(ours, x, grad, True)}
    if theirs is not None:
        sides["transformers"] = step_fn(theirs, x, grad, False)
        result["max_abs_output_diff"] = _output_diff(ours, theirs, x)
    for name, fn in sides.items():
        times = cuda_times_ms(fn, args.warmup, args.iters)
        ms = median(times)
        result[name] = {"ms": ms, "tflops": flops / (ms / 1000) / 1e12, "times_ms": times}
    if "transformers" in result:
        result["speedup_over_transformers"] = result["transformers"]["ms"] / result["ours"]["ms"]
    result["targets"] = {"tflops": 550, "speedup_over_transformers": 1.3}
    if result["ours"]["tflops"] < 550 or result.get("speedup_over_transformers", 0) < 1.3:
        result["ours_top_kernels"] = top_kernels(sides["ours"])
    return result


@torch.no_grad()
def _output_diff(ours, theirs, x) -> float:
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return float((ours(x).hidden.float() - theirs(x).float()).abs().max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--dry", action="store_true", help="print the plan, import everything, run nothing")
    parser.add_argument("--smoke", action="store_true", help="tiny shape on CPU: checks the code, measures nothing")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tokens, args.warmup, args.iters = min(args.tokens, 64), 1, 2
    if args.dry:
        from aria_train.moe.layer import MoELayer  # noqa: F401
        from transformers.models.aria.modeling_aria import AriaTextMoELayer  # noqa: F401

        a = ARIA
        print(f"moe_layer: ours vs transformers AriaTextMoELayer, {args.tokens} tokens, H {a['hidden']}, "
              f"{a['experts']} experts x {a['ffn']}, top-{a['top_k']}, shared {a['shared'] * a['ffn']}, bf16, "
              f"fwd+bwd, {args.warmup} warm-up + {args.iters} timed")
        return 0
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
