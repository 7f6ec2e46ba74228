"""What `launch/pretrain.py --dry-run` prints: what the stage trains (parameters by part, active
per text and per visual token), its sequence, RoPE base, batch, iterations and tokens, the
per-GPU memory of its layout (decoder and vision side) with a verdict and, when it does not fit,
the smallest change that would, and the estimated time at a stated MFU."""

from __future__ import annotations

from dataclasses import replace

from aria_train.accounting import GIB
from aria_train.model.config import CHECKPOINT_MODES
from aria_train.plan.counts import StageCounts, count_stage
from aria_train.plan.layout import (
    DEVICE_BYTES,
    Layout,
    LayoutMemory,
    gib,
    layout_memory,
    precision_of,
    smallest_change,
    smallest_world,
)
from aria_train.plan.timing import DEFAULT_MFU, estimate_step_time, format_duration, image_share_of
from aria_train.train.budget import tokens_per_step
from aria_train.train.flops import peak_flops


def _row(label: str, value: str, note: str = "") -> str:
    return f"  {label:<27}{value:>17}" + (f"   ({note})" if note else "")


def parameters_section(cfg, counts: StageCounts) -> list[str]:
    d = counts.decoder
    frozen = ", ".join(cfg.train.freeze) or "none"
    lines = ["parameters the stage trains",
             _row("decoder", f"{d.total:,}", f"routed experts {d.routed_experts:,}; dense {d.dense:,}")]
    if cfg.multimodal:
        lines += [_row("vision tower (ViT)", f"{counts.vision:,}")] + _encoder_experts(cfg, counts)
        lines.append(_row("projector", f"{counts.projector:,}"))
    lines += [_row("total", f"{counts.total:,}"),
              _row("trainable", f"{counts.trainable(cfg.train.freeze).total:,}", f"train.freeze: {frozen}"),
              "active parameters",
              _row("per text token", f"{counts.active_text:,}",
                   f"{counts.active_text_without_embeddings:,} without the input embedding and LM head")]
    if counts.encoder_routed:
        lines.append(_row("per patch in the ViT", f"{counts.encoder.active_per_token:,.0f}",
                          "dense + the share of the routed experts one patch runs"))
    if cfg.multimodal:
        lines.append(_row("per visual token", f"{counts.active_visual:,}",
                          f"ViT + projector + decoder without the input embedding; "
                          f"{counts.active_visual_without_embeddings:,} without the LM head too"))
    return lines


def _encoder_experts(cfg, counts: StageCounts) -> list[str]:
    """vision.moe: the ViT's routed experts, where they are, and what one EP rank holds."""
    enc, moe, ep = counts.encoder, cfg.vision.moe, cfg.parallel.ep_size
    if not counts.encoder_routed:
        return []
    routing = f"expert choice, c={moe.expert_choice_capacity_factor:g}" if moe.router == "expert_choice" else f"top-{moe.top_k}"
    layers = ", ".join(map(str, enc.moe_layers))
    per_rank = enc.total - enc.routed_experts + enc.routed_experts // ep
    return [_row("  routed experts", f"{enc.routed_experts:,}",
                 f"{moe.num_experts} experts, {routing}, in encoder layers {layers} (of {cfg.vision.num_layers}): "
                 f"vision.moe.layers={moe.layers}"),
            _row("  dense", f"{enc.total - enc.routed_experts:,}"),
            _row(f"  per rank (ep-size {ep})", f"{per_rank:,}", f"{moe.num_experts // ep} of {moe.num_experts} experts "
                 f"per MoE layer")]


def schedule_section(cfg) -> list[str]:
    train, step = cfg.train, tokens_per_step(cfg)
    total = train.train_iters * step
    budget = (f"train.token_budget {train.token_budget:,}; {total - train.token_budget:,} over it, less than one step"
              if train.token_budget is not None else "train_iters given, no token budget")
    return ["sequence and schedule",
            _row("sequence length", f"{cfg.data.seq_length:,}"),
            _row("RoPE base", f"{cfg.model.rope_base:,.0f}"),
            _row("global batch", f"{train.global_batch_size:,}", f"sequences = {step:,} tokens"),
            _row("iterations", f"{train.train_iters:,}"),
            _row("tokens", f"{total:,}", budget),
            _row("learning rate", f"{cfg.optimizer.lr:g}",
                 f"{cfg.schedule.style}, warmup {cfg.schedule.warmup_iters:,}, to {cfg.optimizer.min_lr:g}")]


def memory_section(cfg, counts: StageCounts, layout: Layout, device_bytes: float) -> list[str]:
    mem, precision = layout_memory(cfg, counts, layout), precision_of(cfg)
    gradient_kind = "fp32 main grads" if precision == "bf16" else "fp32 buffers"
    lines = [f"parallel layout                {layout.describe(cfg.multimodal)}",
             f"per-GPU memory at seq {cfg.data.seq_length:,} x micro-batch {layout.micro} "
             f"(GiB; budget {device_bytes / GIB:.1f} GiB = {device_bytes / 1e9:.0f} GB), train.precision "
             f"layout {precision}",
             f"  {f'weights ({precision} parameters)':<30} {gib(mem.weights):>8}",
             f"  {f'gradients ({gradient_kind})':<30} {gib(mem.gradients):>8}",
             f"  {'optimizer (ZeRO-1 shard)' if layout.zero1 else 'optimizer (replicated)':<30} {gib(mem.optimizer):>8}",
             f"  persistent total               {gib(mem.persistent):>8}"]
    if mem.vision is not None:
        v = mem.vision
        lines.append(f"  vision side, worst micro-batch: every token an image token = {v.queries:,} image tokens, "
                     f"{v.patches:,} patches; recompute {layout.vision_mode}: held through the decoder "
                     f"{gib(v.held)}, peak in its backward {gib(v.backward)}")
    for mode in CHECKPOINT_MODES:
        m = layout_memory(cfg, counts, replace(layout, decoder_mode=mode))
        verdict = "fits" if m.fits(device_bytes) else "does NOT fit"
        lines.append(f"  activations, {mode:<9} ckpt {gib(m.activations):>8}   (decoder {gib(m.decoder.peak)}, peak at "
                     f"{max(m.decoder.phases, key=m.decoder.phases.get)}) -> total {gib(m.peak):>7} GiB: {verdict}")
    moe_layers = len(cfg.model.moe_layers)
    if moe_layers < cfg.model.num_layers:
        lines.append(f"  note: {moe_layers} of {cfg.model.num_layers} decoder layers are MoE (model.moe.layer_freq / "
                     f"first_k_dense); activations are counted as if every layer were (an upper bound)")
    lines += _verdict(cfg, counts, mem, device_bytes)
    lines.append(f"  activations in {precision}, flash attention, expert rows T x top_k per rank x1.2 (routing "
                 f"imbalance), grouped expert GEMM, no fragmentation margin (add 5-10% of the activations on CUDA)")
    return lines


def _verdict(cfg, counts: StageCounts, mem: LayoutMemory, device_bytes: float) -> list[str]:
    layout = mem.layout
    lines = []
    if cfg.train.global_batch_size % (layout.micro * layout.world):
        lines.append(f"  note: global batch {cfg.train.global_batch_size:,} is not a multiple of micro-batch "
                     f"{layout.micro} x world {layout.world}: a run at this world size refuses it")
    head = (f"  layout as configured: decoder recompute {layout.decoder_mode}"
            + (f", vision recompute {layout.vision_mode}" if cfg.multimodal else "")
            + f" -> peak {gib(mem.peak)} GiB of {device_bytes / GIB:.2f} GiB at world {layout.world}: ")
    if mem.fits(device_bytes):
        return lines + [head + "fits"]
    lines.append(head + "does NOT fit")
    fixes = smallest_change(cfg, counts, layout, device_bytes)
    if fixes:
        lines.append(f"  smallest change that fits: {_changes(fixes[0], layout)}")
        lines += [f"    or: {_changes(f, layout)}" for f in fixes[1:4] if len(f.layout.changes_from(layout)) == 1]
        return lines
    lines.append(f"  no change of ep-size, recompute or micro-batch fits at world {layout.world}")
    bigger = smallest_world(cfg, counts, layout, device_bytes)
    if bigger:
        lines.append(f"  more GPUs: this layout fits from {_changes(bigger, layout)}")
    frozen = smallest_change(cfg, counts, layout, device_bytes, freeze=True)
    if frozen:
        lines.append(f"  fine-tuning at world {layout.world}: {_changes(frozen[0], layout)} (frozen groups take no "
                     f"gradient and no optimizer state)")
    if not (bigger or frozen):
        hint = "" if precision_of(cfg) == "bf16" else " (train.precision=bf16 halves the weights)"
        lines.append(f"  nothing fits: persistent state {gib(mem.persistent)} GiB per GPU{hint}")
    return lines


def _changes(memory: LayoutMemory, base: Layout) -> str:
    return f"{' '.join(memory.layout.changes_from(base))} -> {gib(memory.peak)} GiB"


def timing_section(cfg, world: int, mfu: float) -> list[str]:
    share = image_share_of(cfg)
    t = estimate_step_time(cfg, world, share, mfu)
    assumed = f", image tokens at most {share:.0%} of the tokens (the multimodal share)" if cfg.multimodal else ""
    lines = [f"estimated time on {t.gpu} ({peak_flops(t.gpu) / 1e12:.0f} TFLOP/s dense bf16) at {mfu:.0%} MFU{assumed}",
             _row("training FLOPs per token", f"{t.flops_per_text_token:.3g}",
                  f"text; {t.flops_per_image_token:.3g} per image token" if cfg.multimodal else "")]
    lines += [_row("per step", format_duration(t.step_seconds), f"{t.step_flops:.3g} FLOPs over {world} GPUs"),
              _row("stage", format_duration(t.stage_seconds), f"{cfg.train.train_iters:,} steps")]
    return lines


def dry_run_report(cfg, world: int, mfu: float = DEFAULT_MFU, device_bytes: float = DEVICE_BYTES) -> str:
    """The dry-run text for a RunConfig at `world` GPUs."""
    counts = count_stage(cfg)
    header = (f"stage {cfg.stage}: {cfg.recipe or 'config'} (model preset {cfg.model.preset}"
              + (f", vision {cfg.vision.preset}" if cfg.multimodal else "") + ")")
    sections = [[header], parameters_section(cfg, counts), schedule_section(cfg),
                memory_section(cfg, counts, Layout.of(cfg, world), device_bytes), timing_section(cfg, world, mfu)]
    return "\n".join(line for section in sections for line in section)
