"""Activation memory of the vision side (ViT + projector) for one micro-batch on one rank.

Counted tensor by tensor from aria_train.model.vision / projector / multimodal, as the decoder's
model in aria_train.accounting is (same two precision layouts of train.precision: fp32; bf16,
where the parameters are bf16 (no autocast weight copies), linear outputs are bf16, LayerNorms
compute and keep fp32, and each linear keeps its own bf16 copy of its input). Checked under
bf16 autocast over fp32 parameters; with the bf16 layout's bf16 parameters the CPU peak is lower
(28-42% at the test's shapes), so this over-estimates there. T patches of width D through L
encoder layers (MLP width I, heads h), then the projector maps every crop's patches to its Q
queries and the decoder width Dt. Attention saves q, k, v, the output and a fp32 log-sum-exp per head and row (flash / varlen
on CUDA; the CPU path runs SDPA on crops of one size at a time, the same tensors).

When the memory is live, relative to the decoder: the vision forward runs first and its backward
last (the image features enter at the embedding), so
  * `held` bytes stay alive through the whole decoder forward and backward:
      none   every tensor the ViT and projector save;
      layer  every encoder layer's input (the checkpoint's), plus the embedding's and projector's;
      crops  nothing but the pixels (the checkpoint regions keep their inputs only);
  * `backward` bytes are the peak while the vision side runs backward, after the decoder has
    freed its activations: held + what one region recomputes (a layer; a group of crops) + the
    backward's working set.
The pixels ([T, 3 p^2] fp32, the micro-batch's input) are counted in every mode. Checked against
the CPU allocator peak on tiny sizes (tests/plan/test_vision_memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass

VISION_MODES = ("none", "layer", "crops")


@dataclass
class VisionEstimate:
    mode: str
    patches: int  # T on this rank (per micro-batch)
    queries: int  # Q: image tokens the crops give
    held: float  # bytes alive through the decoder's forward and backward
    backward: float  # peak bytes while the vision side runs backward (decoder activations freed)


def _layer_saved(T: int, D: int, I: int, heads: int, bf16: bool) -> float:
    """Bytes one encoder layer saves for backward, without checkpointing."""
    a = 2 if bf16 else 4
    norm_out = 3 * 2 * T * D if bf16 else 4 * T * D  # q/k/v each keep a bf16 copy; fp32 share one
    mlp_in = 2 * T * D if bf16 else 4 * T * D
    return (2 * (4 * T * D + 8 * T)  # two LayerNorm inputs (the fp32 residual) + mean/rstd
            + norm_out + mlp_in
            + 4 * a * T * D + 4 * heads * T  # q, k, v, attention output; log-sum-exp
            + 2 * a * T * I)  # fc1 output (kept by gelu) and gelu output (kept by fc2)


def _embedding_saved(T: int, pixels: int, bf16: bool) -> float:
    return (2 * T * pixels if bf16 else 0) + 8 * T  # bf16 copy of the pixels for the patch linear; position ids


def _projector_saved(T: int, Q: int, D: int, Dt: int, bf16: bool) -> float:
    a = 2 if bf16 else 4
    keys = (4 * T * D + 8 * T  # layer_norm_kv input (the ViT output, fp32) and stats
            + (2 * 2 * T * D if bf16 else 4 * T * D)  # its output, as k_proj / v_proj keep it
            + 4 * a * T * D)  # k_proj, v_proj outputs (kept by the in-projection); k, v
    queries = (3 * (4 * Q * D + 8 * Q)  # query LayerNorm, cross-attention output norm: fp32 inputs + stats
               + (2 * 2 * Q * D if bf16 else 2 * 4 * Q * D)  # q_proj and linear_in inputs
               + 4 * a * Q * D + 4 * Q  # q_proj output, q, attention output, out_proj output
               + 5 * a * Q * Dt)  # linear_in output, gelu_new's tanh, 0.5x, 1+tanh, its output
    return keys + queries


def vision_activation_memory(vision, projector, text_hidden: int, patches: int, queries: int, crops: int,
                             mode: str = "none", precision: str = "bf16", trainable_params: int = 0) -> VisionEstimate:
    """Vision activation bytes on one rank for one micro-batch of `crops` crops, `patches`
    patches and `queries` image tokens; `vision` / `projector` are VisionConfig /
    ProjectorConfig; `trainable_params` the ViT's and projector's parameters that take a gradient.
    See the module notes for `held` and `backward`."""
    if mode not in VISION_MODES:
        raise ValueError(f"vision mode {mode!r} is not one of {', '.join(VISION_MODES)}")
    if patches == 0:
        return VisionEstimate(mode, 0, 0, 0.0, 0.0)
    bf16 = precision == "bf16"
    T, Q, D, L = patches, queries, vision.hidden_size, vision.num_layers
    I, heads, Dt = vision.intermediate_size, vision.num_heads, text_hidden
    pixel_width = vision.num_channels * vision.patch_size**2
    pixels = 4 * T * pixel_width
    layer = _layer_saved(T, D, I, heads, bf16)
    embed = _embedding_saved(T, pixel_width, bf16)
    proj = _projector_saved(T, Q, D, Dt, bf16)
    # Backward's working set above what is saved, measured on CPU: with everything saved, about
    # 2.5 [T, D] fp32 tensors; while a recomputed layer runs backward, about 1.4 [T, I] fp32
    # gradients (its MLP). Recomputing groups of crops adds one more: every parameter used by
    # several groups collects its gradient in autograd's input buffer until the last group has
    # run backward, so a full fp32 gradient of the vision side's trainable parameters is held.
    if mode == "none":
        held = pixels + embed + L * layer + proj
        backward = held + 2.5 * 4 * T * D
    elif mode == "layer":  # the projector has run backward (and freed) before the layers recompute
        held = pixels + embed + L * (4 * T * D) + proj
        backward = pixels + embed + L * (4 * T * D) + layer - 4 * T * D + 1.4 * 4 * T * I
    else:  # crops: one group of crops recomputed at a time
        group = max(1, min(vision.checkpoint_crops, crops))
        share = group / crops
        g_T, g_Q = max(1, round(T * share)), max(1, round(Q * share))
        held = pixels
        region = (_embedding_saved(g_T, pixel_width, bf16) + L * _layer_saved(g_T, D, I, heads, bf16)
                  + _projector_saved(g_T, g_Q, D, Dt, bf16))
        gradient_buffer = 4 * trainable_params if group < crops else 0
        backward = held + region + gradient_buffer + 1.4 * 4 * g_T * I
    return VisionEstimate(mode, T, Q, float(held), float(backward))


def worst_case_images(seq_length: int, micro_batch: int, side_patches: int, queries_per_crop: int) -> tuple[int, int, int]:
    """(crops, patches, image tokens) of a micro-batch whose every token is an image token (a
    packed sequence of captioned pictures or video frames), square crops of side_patches^2
    patches: the most the vision side can be asked to hold."""
    crops = (seq_length * micro_batch) // queries_per_crop
    return crops, crops * side_patches**2, crops * queries_per_crop
