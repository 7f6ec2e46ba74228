"""Parameter and memory accounting: the per-rank byte model `launch/pretrain.py --dry-run`
(aria_train.plan) reports.

Counts come from a model built on the meta device (no memory). Memory per rank assumes the
layout of DESIGN.md: dense parameters replicated on every rank, routed experts split over the EP
group, and the precision layout of `train.precision` (aria_train.optim):
  fp32: fp32 parameters, fp32 gradient buffers, fp32 master + two AdamW moments (12 bytes; with
        ZeRO-1 off the parameters double as masters: 8 bytes);
  bf16: Megatron's layout: bf16 parameters, fp32 main-gradient buffers, fp32 master + two
        moments (12 bytes);
the optimizer state sharded by ZeRO-1 (dense over the world, experts over their
expert-data-parallel group), as aria_train.optim.zero1 allocates it.

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
    precision: str = "fp32"

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


def memory_per_rank(counts: ParameterCounts, world_size: int, ep_size: int, zero1: bool = True,
                    precision: str = "fp32") -> RankMemory:
    """Bytes one rank holds in the precision layout (see the module notes). Each rank holds
    1/ep_size of every layer's routed experts (ExpertLayout); ZeRO-1 pads each bucket to a
    multiple of 16 x group size elements, which is not counted."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={precision!r} is not fp32 or bf16")
    local_experts = counts.routed_experts / ep_size
    local_params = counts.dense + local_experts
    edp_size = world_size // ep_size
    if zero1:
        optimizer = 12 * (counts.dense / world_size + local_experts / edp_size)
    else:  # replicated: fp32 parameters are their own masters; bf16 ones have fp32 copies
        optimizer = (8 if precision == "fp32" else 12) * local_params
    weight_bytes = 4 if precision == "fp32" else 2
    return RankMemory(weight_bytes * local_params, 4 * local_params, optimizer, precision)


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


# ---- activation memory -----------------------------------------------------------------------
#
# What autograd keeps alive between forward and backward, counted tensor by tensor from the code
# as it is (aria_train.model.*, aria_train.moe.*, aria_train.train.loss), for one micro-batch of
# T = micro_batch x seq_length tokens on one rank, in the precision layout:
#   fp32: every activation 4 bytes; an RMSNorm's input is the residual itself.
#   bf16: bf16 parameters under bf16 autocast: linear, grouped-GEMM and SDPA outputs and the
#         residual stream are bf16 (2 bytes); RMSNorm upcasts its input (a new fp32 tensor it
#         keeps) and keeps the bf16 normalised copy its weight multiplies; the fp32 router keeps
#         an fp32 copy of its input and of its weight. No weight copies otherwise.
# Kernels, as the code picks them:
#   * attention: SDPA with is_causal picks flash (CUDA; and the CPU flash kernel in torch 2.x),
#     which saves q, k, v, the output and a fp32 logsumexp per head and row; "math" (any other
#     backend) would also save the [heads, S, S] probabilities: `attention="math"` models it.
#   * routed experts: torch._grouped_mm (expert_kernel="grouped", CPU and CUDA) saves its input
#     rows and nothing padded; the padded-bmm fallback ("padded") also saves the zero-padded
#     [E_local x max_count, in] blocks, max_count = expert_imbalance x (rows / E_local).
#   * expert parallelism: a rank receives on average the rows its tokens send, T x top_k
#     (uniform routing over EP ranks is the assumption; a hot rank sees more), and the all-to-all
#     dispatcher keeps two more [rows] int64 permutations than the local one.
#   * loss: one chunk of min(T, 4096) tokens of [chunk x V] logits at a time, its gradients
#     computed in forward (aria_train.train.loss).
# Peak = the largest of three moments, each "live saved tensors + the working set of the op
# running then":
#   end of forward: all saved tensors + the loss's forward (one chunk's logits, the gradient
#                   buffers of the hidden rows and of the LM head);
#   loss backward:  all saved tensors + the two gradients the loss kept, and their scaled copies;
#   layer backward: all saved tensors (full mode: the block inputs plus one block's recomputed
#                   tensors; selective: plus one MoE sub-block's) + the block's backward working
#                   set above what it had saved (1.25 dispatched-row tensors, measured).
# No allocator fragmentation allowance is added (CPU has none to model; on CUDA add your own
# margin, typically 5-10% of the activations). Checked on CPU against the allocator peak (fp32
# and the bf16 layout, all three modes, 512-2048 tokens: tests/longctx/test_memory_estimator.py);
# not yet checked on a GPU (bench/long_layer_memory.py does, where one is lent).

@dataclass
class ActivationEstimate:
    mode: str
    tokens: int  # per micro-batch on this rank
    per_layer: dict  # name -> bytes saved by one decoder layer (what the mode keeps)
    global_terms: dict  # name -> bytes saved outside the layers
    recompute_layer: float  # bytes one layer recreates in backward (full / selective), else 0
    phases: dict  # moment -> peak bytes at that moment
    num_layers: int

    @property
    def saved(self) -> float:
        return self.num_layers * sum(self.per_layer.values()) + sum(self.global_terms.values())

    @property
    def peak(self) -> float:
        return max(self.phases.values())


def _norm_terms(T: int, H: int, bf16: bool) -> int:
    """What an RMSNorm keeps: rsqrt, the fp32 input (bf16: an upcast copy; fp32: the residual,
    counted there) and the normalised tensor its weight multiplies."""
    return 4 * T + (4 * T * H + 2 * T * H if bf16 else 4 * T * H)


def _layer_terms(cfg: ModelConfig, T: int, seq: int, micro_batch: int, experts: ExpertLayout, bf16: bool,
                 attention: str, kernel: str, expert_imbalance: float) -> dict:
    """Bytes one decoder layer saves for backward without checkpointing, by tensor group."""
    moe = cfg.moe
    H, heads, inner = cfg.hidden_size, cfg.num_heads, cfg.num_heads * cfg.head_dim
    E, k, I = moe.num_experts, moe.top_k, moe.expert_ffn_size
    N = T * k  # dispatched rows on this rank (dropless, uniform over EP ranks)
    a = 2 if bf16 else 4  # bytes of an activation (linear outputs, the residual stream)
    t = {"attn_norm": _norm_terms(T, H, bf16), "attn_norm_out": a * T * H}
    t["qkv"] = 3 * a * T * inner  # rotated q, k and v as SDPA saves them
    t["attn_out_lse"] = a * T * inner + 4 * heads * T  # output (o_proj reads a view) + logsumexp
    if attention == "math":
        t["attn_probs"] = a * micro_batch * heads * seq * seq
    t["residual_attn"] = a * T * H
    t["moe_norm"] = _norm_terms(T, H, bf16)
    t["moe_norm_out"] = a * T * H + (4 * T * H + 4 * E * H if bf16 else 0)  # + the fp32 router's input, weight
    t["router"] = 4 * T * E * 2 + 4 * T + 8 * T * k + 4 * T * k + (2 * T * k if bf16 else 0)
    t["dispatch_index"] = 8 * N * (4 if experts.ep_size > 1 else 2)
    t["expert_rows_in"] = a * N * H  # gathered rows, kept by the gate/up GEMM
    if kernel == "padded":
        padded = experts.num_local_experts * math.ceil(expert_imbalance * N / experts.num_local_experts)
        t["dispatch_index"] += 8 * N * 2  # the padded block's row maps
        t["expert_padded"] = a * padded * (H + I)
    t["expert_gate_up"] = a * N * 2 * I
    t["expert_act"] = 2 * a * N * I  # silu(gate), silu(gate) * up
    t["expert_rows_out"] = a * N * H  # kept by combine's index_copy
    t["combine_slots"] = a * N * H  # [T, k, H] kept for the router-weight gradient
    t["shared_expert"] = 4 * a * T * moe.num_shared_experts * I  # gate, up, silu(gate), product
    t["residual_moe"] = a * T * H
    return t


def _mode_terms(full_layer: dict, mode: str, T: int, H: int, bf16: bool) -> tuple[dict, float]:
    """(what one layer keeps under the checkpointing mode, what it recreates in backward)."""
    block_input = (2 if bf16 else 4) * T * H
    if mode == "none":
        return dict(full_layer), 0.0
    if mode == "full":
        return {"block_input": block_input}, float(sum(full_layer.values()))
    # selective: the attention sub-block minus its norm internals, plus the MoE sub-block's input
    keep = ("attn_norm_out", "qkv", "attn_out_lse", "attn_probs", "residual_attn")
    per_layer = {name: full_layer[name] for name in keep if name in full_layer}
    per_layer["block_input"] = block_input
    moe = ("moe", "router", "dispatch", "expert", "combine", "shared", "residual_moe")
    return per_layer, float(sum(v for n, v in full_layer.items() if n.startswith(moe)))


def activation_memory(
    cfg: ModelConfig, seq_length: int, micro_batch: int = 1, mode: str = "none", ep_size: int = 1,
    precision: str = "bf16", attention: str = "flash", expert_kernel: str = "grouped",
    expert_imbalance: float = 1.2, loss_chunk_tokens: int = 4096,
) -> ActivationEstimate:
    """Activation bytes on one rank for one micro-batch; see the notes above for the model."""
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(CHECKPOINT_MODES)}")
    bf16 = precision == "bf16"
    T, H, V = micro_batch * seq_length, cfg.hidden_size, cfg.vocab_size
    experts = ExpertLayout(cfg.moe.num_experts, ep_size)
    full_layer = _layer_terms(cfg, T, seq_length, micro_batch, experts, bf16, attention, expert_kernel,
                              expert_imbalance)
    per_layer, recompute = _mode_terms(full_layer, mode, T, H, bf16)
    a = 2 if bf16 else 4
    global_terms = {
        "tokens_and_rope": 8 * T + 2 * a * T * cfg.head_dim,
        "final_norm": _norm_terms(T, H, bf16) + a * T * H,  # + the output the loss reads
        "embedding_out_or_last_block_out": a * T * H,  # the one residual no layer term covers
    }
    c = min(loss_chunk_tokens, T)
    w = 2 if bf16 else 4  # bytes of a weight (and of its gradient)
    # the loss computes its gradients in forward (aria_train.train.loss): one chunk's logits
    # ([c, V] in the compute dtype, then fp32, which becomes the softmax gradient in place, then
    # the compute-dtype copy the products read), the hidden-gradient buffer [T, H], and the LM
    # head's gradient (the product, and its fp32 accumulator in bf16)
    loss_forward = (6 if bf16 else 4) * c * V + a * T * H + ((a + 4) if bf16 else 4) * V * H
    # kept for backward: the two gradients; backward returns them scaled (new tensors)
    loss_backward = 2 * (a * T * H + w * V * H)
    saved = cfg.num_layers * sum(per_layer.values()) + sum(global_terms.values())
    # the extra live bytes while one block runs backward (its saved tensors are freed as it goes):
    # measured on CPU at 1.2-1.27 dispatched-row tensors [T x top_k, H] in the activation dtype
    layer_backward_ws = 1.25 * a * T * cfg.moe.top_k * H
    phases = {
        "end of forward": saved + loss_forward,
        "loss backward": saved + loss_backward,
        "layer backward": saved + recompute + layer_backward_ws,
    }
    return ActivationEstimate(mode, T, per_layer, global_terms, recompute, phases, cfg.num_layers)


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
