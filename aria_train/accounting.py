"""Parameter and memory accounting for `launch/pretrain.py --dry-run`.

Counts come from a model built on the meta device (no memory). Memory per rank assumes the
layout of DESIGN.md: dense parameters replicated on every rank, routed experts split over the EP
group; parameters are fp32 (the trainer runs bf16 autocast over fp32 parameters on GPU, so the
bf16 weight copies autocast makes are counted with the activations); gradients in fp32 buffers;
fp32 master weights and two AdamW moments sharded by ZeRO-1 (dense over the world, experts over
their expert-data-parallel group), as aria_train.optim.zero1 allocates them.

Activation memory per rank (`activation_memory`) is modelled tensor by tensor below; on CPU it is
checked against the profiler's allocator peak (tests/longctx/test_memory_estimator.py).
"""

import math
from dataclasses import dataclass

from torch import nn

from aria_train.model.config import CHECKPOINT_MODES, ModelConfig
from aria_train.moe.experts import expert_parameter_layouts
from aria_train.moe.layout import ExpertLayout

GIB = 1024**3


@dataclass
class ParameterCounts:
    total: int
    routed_experts: int  # all routed experts of all layers
    embeddings: int  # input embedding + LM head
    active_per_token: int  # what one text token runs: dense + top_k / E of the routed experts

    @property
    def dense(self) -> int:
        return self.total - self.routed_experts

    @property
    def active_without_embeddings(self) -> int:
        return self.active_per_token - self.embeddings


def count_parameters(model: nn.Module, cfg: ModelConfig) -> ParameterCounts:
    expert_names = expert_parameter_layouts(model)
    total = routed = embeddings = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if name in expert_names:
            routed += param.numel()
        if name in ("embed_tokens.weight", "lm_head.weight"):
            embeddings += param.numel()
    active = total - routed + routed * cfg.moe.top_k // cfg.moe.num_experts
    return ParameterCounts(total, routed, embeddings, active)


@dataclass
class RankMemory:
    weights: float  # bytes
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


def memory_per_rank(
    counts: ParameterCounts, world_size: int, ep_size: int, weight_bytes: int = 4, grad_bytes: int = 4,
    optimizer_bytes: int = 12, zero1: bool = True,
) -> RankMemory:
    """Bytes one rank holds. fp32 parameters, fp32 gradient buffers, and fp32 master + exp_avg +
    exp_avg_sq (12 bytes) by default. Each rank holds 1/ep_size of every layer's routed experts
    (ExpertLayout)."""
    local_experts = counts.routed_experts / ep_size
    local_params = counts.dense + local_experts
    edp_size = world_size // ep_size
    if zero1:
        optimizer = optimizer_bytes * (counts.dense / world_size + local_experts / edp_size)
    else:
        optimizer = optimizer_bytes * local_params
    return RankMemory(weight_bytes * local_params, grad_bytes * local_params, optimizer)


@dataclass
class EncoderCounts:
    total: int  # vision tower (with its audio embedding, if any)
    routed_experts: int  # the encoder's routed experts, all layers
    moe_layers: list  # encoder layers with a MoE MLP
    active_per_token: float  # dense + the experts' share one token runs (top_k / E, or c / E for expert choice)


def count_encoder_parameters(tower: nn.Module, moe_layers: list, moe_cfg) -> EncoderCounts:
    """Parameter counts of a vision tower (built on the meta device)."""
    experts = expert_parameter_layouts(tower)
    total = sum(p.numel() for p in tower.parameters())
    routed = sum(p.numel() for name, p in tower.named_parameters() if name in experts)
    per_token = moe_cfg.expert_choice_capacity_factor if moe_cfg.router == "expert_choice" else moe_cfg.top_k
    share = per_token / moe_cfg.num_experts if routed else 0.0
    return EncoderCounts(total, routed, list(moe_layers), total - routed + routed * share)


def checkpoint_bytes(counts: ParameterCounts, weight_bytes: int = 4, optimizer_bytes: int = 12) -> int:
    """Bytes one checkpoint takes on disk, all ranks' files together: every parameter once (DCP
    writes a replicated tensor once) in fp32 and its optimizer state (fp32 master + two AdamW
    moments), whatever the layout; the train-state, data-position and RNG entries are a few KiB."""
    return counts.total * (weight_bytes + optimizer_bytes)


def format_report(counts: ParameterCounts, memory: RankMemory, world_size: int, ep_size: int, preset: str) -> str:
    lines = [
        f"model preset                 {preset}",
        f"total parameters             {counts.total:,}",
        f"  routed experts             {counts.routed_experts:,}",
        f"  dense (attn, norms, router, shared experts, embeddings) {counts.dense:,}",
        f"active parameters per token  {counts.active_per_token:,}",
        f"  without embedding tables   {counts.active_without_embeddings:,}",
        f"parallel layout              world {world_size}, ep-size {ep_size}, "
        f"expert-data-parallel {world_size // ep_size}, ZeRO-1",
        f"per-rank memory (GiB)        weights {memory.weights / GIB:.2f} (fp32) | "
        f"gradients {memory.gradients / GIB:.2f} (fp32) | optimizer {memory.optimizer / GIB:.2f} "
        f"(fp32 master + 2 moments, sharded) | total {memory.total / GIB:.2f}",
    ]
    return "\n".join(lines)


# ---- activation memory -----------------------------------------------------------------------
#
# What autograd keeps alive between forward and backward, counted tensor by tensor from the code
# as it is (aria_train.model.*, aria_train.moe.*, aria_train.train.loss), for one micro-batch of
# T = micro_batch x seq_length tokens on one rank. Two precisions:
#   fp32: CPU default; every activation 4 bytes.
#   bf16: the trainer's CUDA default, torch.autocast(bf16) over fp32 parameters. Linear / bmm /
#         SDPA outputs are bf16, but the residual stream stays fp32 (the fp32 embedding plus bf16
#         branch outputs promotes), RMSNorm computes in fp32, and every op autocast runs keeps
#         its own bf16 copy of its input and a bf16 copy of its weight (the autocast weight cast
#         cache lives until the autocast region exits, so all layers' weight copies coexist at the
#         end of the forward).
# Kernels, as the code picks them:
#   * attention: SDPA with is_causal picks flash (CUDA; and the CPU flash kernel in torch 2.x),
#     which saves q, k, v, the output and a fp32 logsumexp per head and row; "math" (any other
#     backend) would also save the [heads, S, S] probabilities: `attention="math"` models it.
#   * routed experts: parameters are fp32, so grouped_matmul takes its padded-bmm path on every
#     device (torch._grouped_mm needs bf16 weights); it saves the zero-padded [E_local x
#     max_count, in] block. max_count = expert_imbalance x (rows / E_local); the default 1.2 is
#     the measured max/mean of a randomly initialised tiny model at 1-2K tokens (1.14-1.19).
#   * expert parallelism: a rank receives on average the rows its tokens send, T x top_k
#     (uniform routing over EP ranks is the assumption; a hot rank sees more), and the all-to-all
#     dispatcher keeps two more [rows] int64 permutations than the local one.
# Peak = the largest of three moments, each "live saved tensors + the working set of the op
# running then":
#   end of forward: all saved tensors (+ in full mode under bf16, every layer's autocast weight
#                   copy, still cached) + one loss chunk's forward (logits, fp32 logits,
#                   log-softmax);
#   loss backward:  all saved tensors + one chunk's recompute and backward (log-softmax output,
#                   its gradient twice, the bf16 logits gradient, and the lm_head weight gradient
#                   temporaries);
#   layer backward: all saved tensors (full mode: the block inputs plus one block's recomputed
#                   tensors; selective: plus one MoE sub-block's) + the block's backward working
#                   set above what it had saved (1.25 dispatched-row tensors, measured).
# No allocator fragmentation allowance is added (CPU has none to model; on CUDA add your own
# margin, typically 5-10% of the activations).
# Validity: checked on CPU (fp32 and bf16 autocast, all three modes, 512-2048 tokens) within 3%
# where activations dominate, the regime this is for. Where the bf16 weight copies dominate (a
# few hundred tokens, wide experts) it under-predicts by up to ~15%: the working set inside the
# last block's forward and the weight-gradient casts are not modelled. Not yet checked on a GPU.

@dataclass
class ActivationEstimate:
    mode: str
    tokens: int  # per micro-batch on this rank
    per_layer: dict  # name -> bytes saved by one decoder layer (what the mode keeps)
    global_terms: dict  # name -> bytes saved outside the layers
    recompute_layer: float  # bytes one layer recreates in backward (full / selective), else 0
    weight_copies: float  # autocast bf16 copies of all local weights (0 in fp32)
    phases: dict  # moment -> peak bytes at that moment
    num_layers: int

    @property
    def saved(self) -> float:
        return self.num_layers * sum(self.per_layer.values()) + sum(self.global_terms.values())

    @property
    def peak(self) -> float:
        return max(self.phases.values())


def _layer_terms(cfg: ModelConfig, tokens: int, seq: int, micro_batch: int, experts: ExpertLayout, bf16: bool,
                 attention: str, expert_imbalance: float) -> dict:
    """Bytes one decoder layer saves for backward without checkpointing, by tensor group."""
    moe = cfg.moe
    T, H, heads = tokens, cfg.hidden_size, cfg.num_heads
    inner = heads * cfg.head_dim
    E, k, I = moe.num_experts, moe.top_k, moe.expert_ffn_size
    shared_width = moe.num_shared_experts * I
    local_experts = experts.num_local_experts
    N = T * k  # dispatched rows on this rank (dropless, uniform over EP ranks)
    padded = local_experts * math.ceil(expert_imbalance * N / local_experts)
    a = 2 if bf16 else 4  # bytes of a linear's output
    t = {}
    t["attn_norm"] = 4 * T + 4 * T * H  # rsqrt + fp32 x * rsqrt (for the weight gradient)
    t["attn_norm_out"] = 3 * 2 * T * H if bf16 else 4 * T * H  # bf16: one autocast copy per q/k/v
    t["qkv"] = 3 * a * T * inner  # rotated q, k and v as SDPA saves them
    t["attn_out_lse"] = a * T * inner + 4 * heads * T  # output (o_proj reads a view) + logsumexp
    if attention == "math":
        t["attn_probs"] = a * micro_batch * heads * seq * seq
    t["residual_attn"] = 4 * T * H
    t["moe_norm"] = 4 * T + 4 * T * H
    t["moe_norm_out"] = 3 * 2 * T * H if bf16 else 4 * T * H  # router, shared gate, shared up
    t["router"] = 4 * T * E * 2 + 4 * T + 8 * T * k + 4 * T * k + (2 * T * k if bf16 else 0)
    t["dispatch_index"] = 8 * N * (4 if experts.ep_size > 1 else 2) + 8 * N * 2  # + padded-bmm row maps
    t["expert_rows_in"] = 4 * N * H  # index_select of the fp32 norm output; index_copy keeps it
    t["expert_padded_in"] = a * padded * H
    t["expert_gate_up"] = a * N * 2 * I
    t["expert_act"] = 2 * a * N * I  # silu(gate), silu(gate) * up
    t["expert_padded_mid"] = a * padded * I
    t["expert_rows_out"] = a * N * H  # kept by combine's index_copy
    t["combine_slots"] = a * N * H  # [T, k, H] kept for the router-weight gradient
    t["shared_expert"] = 4 * a * T * shared_width  # gate, up, silu(gate), product
    t["residual_moe"] = 4 * T * H
    return t


def _layer_weight_params(cfg: ModelConfig, experts: ExpertLayout) -> int:
    moe = cfg.moe
    inner = cfg.num_heads * cfg.head_dim
    shared_width = moe.num_shared_experts * moe.expert_ffn_size
    return (4 * cfg.hidden_size * inner + moe.num_experts * cfg.hidden_size + 3 * cfg.hidden_size * shared_width
            + experts.num_local_experts * 3 * cfg.hidden_size * moe.expert_ffn_size)


def activation_memory(
    cfg: ModelConfig, seq_length: int, micro_batch: int = 1, mode: str = "none", ep_size: int = 1,
    precision: str = "bf16", attention: str = "flash", expert_imbalance: float = 1.2,
    loss_chunk_tokens: int = 4096,
) -> ActivationEstimate:
    """Activation bytes on one rank for one micro-batch; see the notes above for the model."""
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(CHECKPOINT_MODES)}")
    bf16 = precision == "bf16"
    T, H, V = micro_batch * seq_length, cfg.hidden_size, cfg.vocab_size
    L = cfg.num_layers
    experts = ExpertLayout(cfg.moe.num_experts, ep_size)
    full_layer = _layer_terms(cfg, T, seq_length, micro_batch, experts, bf16, attention, expert_imbalance)
    copies_per_layer = 2 * _layer_weight_params(cfg, experts) if bf16 else 0
    attn_copies = 2 * 4 * H * cfg.num_heads * cfg.head_dim if bf16 else 0
    if mode == "none":
        per_layer = dict(full_layer, weight_copies=copies_per_layer)
        recompute = 0.0
    elif mode == "full":
        per_layer = {"block_input": 4 * T * H}
        recompute = sum(full_layer.values()) + copies_per_layer
    else:  # selective: the attention sub-block minus its norm internals, plus the MoE input
        keep = ("attn_norm_out", "qkv", "attn_out_lse", "attn_probs", "residual_attn")
        per_layer = {name: full_layer[name] for name in keep if name in full_layer}
        per_layer["block_input"] = 4 * T * H
        per_layer["weight_copies"] = attn_copies
        moe_names = [n for n in full_layer if n.startswith(("moe", "router", "dispatch", "expert", "combine", "shared"))]
        recompute = sum(full_layer[n] for n in moe_names) + full_layer["residual_moe"] + copies_per_layer - attn_copies
    head_dim = cfg.head_dim
    global_terms = {
        "tokens_and_rope": 8 * T + 2 * 4 * T * head_dim,
        "final_norm": 4 * T + 4 * T * H + 4 * T * H,  # rsqrt, fp32 normalised, output read by the loss
        "embedding_out_or_last_block_out": 4 * T * H,  # the one residual no layer term covers
    }
    c = min(loss_chunk_tokens, T)
    # one loss chunk, forward: logits (+ fp32 copy under bf16) and the fp32 log-softmax
    loss_forward = (2 + 4 + 4) * c * V if bf16 else 8 * c * V
    # one loss chunk, backward: the recomputed log-softmax output, its gradient and the logits
    # gradient ([c, V] fp32 each), plus the lm_head weight-gradient temporaries (fp32; under bf16
    # also the bf16 weight copy and bf16 gradient): measured 12.0 cV + 4 VH (fp32) and
    # 12.2 cV (bf16, V=1024, H=64) bytes on CPU
    loss_backward = 12 * c * V + (6 if bf16 else 4) * V * H
    saved = L * sum(per_layer.values()) + sum(global_terms.values())
    # the extra live bytes while one block runs backward (its saved tensors are freed as it goes):
    # measured on CPU at 1.2-1.27 dispatched-row tensors [T x top_k, H] in the activation dtype
    layer_backward_ws = 1.25 * (2 if bf16 else 4) * T * cfg.moe.top_k * H
    # autocast caches the casts it makes of leaf weights until the region exits; w_down's copy is
    # an explicit .to() in grouped_matmul (its input is already bf16), so only saved tensors keep it
    w_down_copy = 2 * experts.num_local_experts * cfg.moe.expert_ffn_size * H if bf16 else 0
    all_copies = L * (copies_per_layer - w_down_copy) + (2 * V * H if bf16 else 0)
    phases = {
        "end of forward": saved + loss_forward + max(0, all_copies - L * per_layer.get("weight_copies", 0)),
        "loss backward": saved + loss_backward,
        "layer backward": saved + recompute + layer_backward_ws,
    }
    return ActivationEstimate(mode, T, per_layer, global_terms, recompute,
                              all_copies, phases, L)


def format_memory_table(memory: RankMemory, estimates: list, seq_length: int, micro_batch: int,
                        device_bytes: float = 80e9) -> str:
    """Per-GPU breakdown: persistent state plus the activation peak of each checkpointing mode."""
    lines = [
        f"per-GPU memory at seq {seq_length:,} x micro-batch {micro_batch} (GiB; budget {device_bytes / GIB:.1f} "
        f"GiB = {device_bytes / 1e9:.0f} GB)",
        f"  weights (fp32 parameters)      {memory.weights / GIB:8.2f}",
        f"  gradients (fp32 buffers)       {memory.gradients / GIB:8.2f}",
        f"  optimizer (ZeRO-1 shard)       {memory.optimizer / GIB:8.2f}",
        f"  persistent total               {memory.total / GIB:8.2f}",
    ]
    for est in estimates:
        total = memory.total + est.peak
        verdict = "fits" if total <= device_bytes else "does NOT fit"
        worst = max(est.phases, key=est.phases.get)
        lines.append(
            f"  activations, {est.mode:<9} ckpt {est.peak / GIB:8.2f}   (saved {est.saved / GIB:.2f}, peak at "
            f"{worst}) -> total {total / GIB:7.2f} GiB: {verdict}"
        )
    return "\n".join(lines)


def measure_cpu_peak_bytes(fn) -> int:
    """Peak bytes of CPU tensor memory allocated above the starting point while fn() runs.

    Uses the profiler's allocator events (torch.profiler, profile_memory=True): every CPU
    allocation and free of c10's allocator, in order, so the running sum's maximum is the exact
    peak of live tensor bytes, unaffected by malloc caching or the Python heap (which RSS-based
    measures would include)."""
    from torch._C._autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def dry_run_memory_report(cfg, counts: ParameterCounts, world_size: int, device_bytes: float = 80e9) -> str:
    """The per-GPU table `launch/pretrain.py --dry-run` prints for a RunConfig: persistent state
    plus the activation peak at data.seq_length x train.micro_batch_size for every checkpointing
    mode (bf16 autocast unless train.precision is fp32), against an 80 GB GPU."""
    ep = cfg.parallel.ep_size
    memory = memory_per_rank(counts, world_size, ep, zero1=cfg.optimizer.zero1)
    precision = "fp32" if cfg.train.precision == "fp32" else "bf16"
    seq, micro = cfg.data.seq_length, cfg.train.micro_batch_size
    estimates = [activation_memory(cfg.model, seq, micro, mode, ep_size=ep, precision=precision)
                 for mode in CHECKPOINT_MODES]
    table = format_memory_table(memory, estimates, seq, micro, device_bytes)
    configured = cfg.model.activation_checkpointing
    table += (f"\n  configured: model.activation_checkpointing={configured}; activations in {precision}, "
              f"flash attention, expert rows T x top_k per rank, padded expert blocks x1.2, no fragmentation margin")
    moe_layers = len(cfg.model.moe_layers)
    if moe_layers < cfg.model.num_layers:
        table += (f"\n  note: {moe_layers} of {cfg.model.num_layers} decoder layers are MoE (model.moe.layer_freq / "
                  f"first_k_dense); activations are counted as if every layer were (an upper bound)")
    return table
