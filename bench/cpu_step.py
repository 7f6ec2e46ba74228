"""One training step (forward + loss, backward, optimizer) of our decoder against transformers'
AriaTextForCausalLM on the same config, weights and batch, in one process, on CPU.

    python bench/cpu_step.py                     # the issue-15 shape, median of 5
    python bench/cpu_step.py --repeats 7 --profile ours

Shape (issue 15): hidden 256, 4 layers, 4 heads x 64, 16 routed experts (width 160) top-4, 2
shared experts, vocabulary 32,000, a batch of 4 x 512 tokens, fp32. Both sides start from the
same weights (ours converted to transformers' names by aria_train.convert.hf_text) and train on
the same tokens; the first step's losses are printed side by side (they must agree). Ours: the
trainer's pieces (model -> chunked loss + balance + z-loss, ReplicatedAdamW). Transformers: its
default implementations (attention "sdpa", experts as transformers picks them: grouped_mm in
5.x), model(input_ids, labels=...).loss, torch.optim.AdamW(fused=True) with the same settings.

The two models run interleaved, step by step, in the same process (warm-up steps first), so a
load change on the shared machine affects both alike; each phase is timed with perf_counter
and the table reports the median over the timed steps, and the per-step ratio's median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.model.config import ModelConfig  # noqa: E402
from aria_train.moe.config import MoEConfig  # noqa: E402

PHASES = ("forward", "backward", "optimizer")


def bench_config(args) -> ModelConfig:
    moe = MoEConfig(num_experts=16, top_k=4, num_shared_experts=2, expert_ffn_size=args.ffn, balance_group_size=4)
    return ModelConfig(preset="bench", vocab_size=32000, hidden_size=256, num_layers=4, num_heads=4, head_dim=64,
                       moe=moe)


class Ours:
    name = "ours"

    def __init__(self, cfg: ModelConfig, tokens: torch.Tensor):
        from aria_train.model.decoder import build_model
        from aria_train.optim.config import OptimizerConfig
        from aria_train.optim.replicated import ReplicatedAdamW

        self.model = build_model(cfg, seed=0).train()
        self.optimizer = ReplicatedAdamW(self.model, OptimizerConfig(lr=1e-4, clip_grad=0.0))
        self.inputs, self.labels = tokens[:, :-1], tokens[:, 1:]
        self.loss_mask = torch.ones(self.labels.shape)
        self.loss_mask[:, -1] = 0.0  # transformers shifts inside: its last position predicts nothing

    def forward(self) -> torch.Tensor:
        from aria_train.train.loss import chunked_cross_entropy_sum

        out = self.model(self.inputs)
        lm = chunked_cross_entropy_sum(out.hidden.flatten(0, 1), self.model.lm_head.weight, self.labels.flatten(),
                                       self.loss_mask.flatten())
        self.lm_loss = lm.detach() / self.loss_mask.sum()
        return lm / self.loss_mask.sum() + out.balance_loss + out.z_loss

    def optimizer_step(self) -> None:
        self.optimizer.step(1e-4)
        self.optimizer.zero_grad()


class Transformers:
    name = "transformers"

    def __init__(self, ours_model, cfg: ModelConfig, tokens: torch.Tensor):
        from transformers import AriaTextForCausalLM

        from aria_train.convert.hf_text import aria_to_hf_state_dict, hf_text_config_from_model

        config = hf_text_config_from_model(cfg)
        config._attn_implementation = "sdpa"
        self.model = AriaTextForCausalLM(config).float().train()
        self.model.load_state_dict(aria_to_hf_state_dict(ours_model.state_dict(), cfg.num_layers), strict=True)
        self.experts_implementation = getattr(self.model.config, "_experts_implementation", "eager")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                                           weight_decay=0.1, fused=True)
        self.inputs = tokens[:, :-1]

    def forward(self) -> torch.Tensor:
        loss = self.model(input_ids=self.inputs, labels=self.inputs).loss
        self.lm_loss = loss.detach()
        return loss

    def optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def timed_step(side) -> dict:
    times = {}
    start = time.perf_counter()
    loss = side.forward()
    times["forward"] = time.perf_counter() - start
    start = time.perf_counter()
    loss.backward()
    times["backward"] = time.perf_counter() - start
    start = time.perf_counter()
    side.optimizer_step()
    times["optimizer"] = time.perf_counter() - start
    times["step"] = sum(times[p] for p in PHASES)
    return times


def run(args) -> dict:
    torch.manual_seed(0)
    cfg = bench_config(args)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=torch.Generator().manual_seed(1))
    ours = Ours(cfg, tokens)
    theirs = Transformers(ours.model, cfg, tokens)
    sides = [ours, theirs]
    results = {side.name: [] for side in sides}
    first_losses = {}
    for i in range(args.warmup + args.repeats):
        order = sides if i % 2 == 0 else sides[::-1]  # alternate who goes first
        for side in order:
            times = timed_step(side)
            first_losses.setdefault(side.name, float(side.lm_loss))
            if i >= args.warmup:
                results[side.name].append(times)
    return {"cfg": cfg, "results": results, "first_losses": first_losses,
            "experts_implementation": theirs.experts_implementation}


def table(out: dict, args) -> str:
    res = out["results"]
    med = {name: {k: statistics.median(t[k] for t in rows) for k in PHASES + ("step",)} for name, rows in res.items()}
    ratios = [t["step"] / o["step"] for o, t in zip(res["ours"], res["transformers"])]
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch} x {args.seq} tokens, "
        f"median of {args.repeats} interleaved steps after {args.warmup} warm-up",
        f"first-step LM loss: ours {out['first_losses']['ours']:.6f}, transformers "
        f"{out['first_losses']['transformers']:.6f} (transformers experts: {out['experts_implementation']})",
        "",
        "| phase | ours (s) | transformers (s) | transformers / ours |",
        "|---|---:|---:|---:|",
    ]
    for phase in PHASES + ("step",):
        o, t = med["ours"][phase], med["transformers"][phase]
        lines.append(f"| {phase} | {o:.3f} | {t:.3f} | {t / o:.2f}x |")
    lines.append("")
    lines.append(f"step speed-up of ours over transformers (median of per-step ratios): {statistics.median(ratios):.2f}x "
                 f"(per step: {', '.join(f'{r:.2f}' for r in ratios)})")
    return "\n".join(lines)


def profile(args, which: str) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cfg = bench_config(args)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=torch.Generator().manual_seed(1))
    ours = Ours(cfg, tokens)
    side = ours if which == "ours" else Transformers(ours.model, cfg, tokens)
    timed_step(side)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        timed_step(side)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--ffn", type=int, default=160, help="routed expert width")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", choices=["ours", "transformers"], default=None,
                        help="print torch.profiler's top ops of one step instead of timing")
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args(argv)
    if args.profile:
        profile(args, args.profile)
        return 0
    print(table(run(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
