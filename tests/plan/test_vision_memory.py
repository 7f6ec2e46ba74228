"""The vision side's activation-memory estimate against the measured CPU peak of a real ViT +
projector forward and backward (torch.profiler allocator events, as the decoder's estimator is
checked in tests/longctx/test_memory_estimator.py), for every recompute mode, fp32 and bf16
autocast, at two shapes. Each case prints both numbers."""

import pytest
import torch

from aria_train.accounting import measure_cpu_peak_bytes
from aria_train.model.config import ModelConfig
from aria_train.model.multimodal import AriaForConditionalGeneration
from aria_train.model.vision_config import ProjectorConfig, VisionConfig
from aria_train.plan.vision_memory import vision_activation_memory, worst_case_images

SHAPES = {
    # MLP / width ratio of SigLIP-SO400M (4304 / 1152), 5x5-patch crops, 8 crops per recompute group
    "D128-crops40": dict(D=128, I=480, heads=2, Dt=256, side=5, crops=40, group=8),
    # narrower, 10x10-patch crops (the 140 px high-resolution size of the tiny preset)
    "D64-side10": dict(D=64, I=256, heads=4, Dt=128, side=10, crops=12, group=4),
}


def _measure(mode, precision, D, I, heads, Dt, side, crops, group):
    vision = VisionConfig(hidden_size=D, num_layers=2, num_heads=heads, intermediate_size=I, patch_size=14,
                          image_size=140, activation_checkpointing=mode, checkpoint_crops=group)
    projector = ProjectorConfig(patch_to_query={25: 4, 100: 8})
    text = ModelConfig(vocab_size=64, hidden_size=Dt, num_layers=1, num_heads=4, head_dim=Dt // 4)
    torch.manual_seed(0)
    model = AriaForConditionalGeneration(text, vision, projector, image_token_id=5)
    model.init_weights(0)
    model.train()
    for param in model.parameters():  # gradient buffers exist before the step (as ZeRO-1 keeps them)
        param.grad = torch.zeros_like(param)
    queries = projector.sides()[side]
    patches = torch.randn(crops * side * side, 3 * 14 * 14)
    grid = [(side, side)] * crops
    weight = torch.randn(crops * queries, Dt)

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            loss = (model.image_features(patches, grid).float() * weight).sum()
        loss.backward()

    measured = measure_cpu_peak_bytes(step)
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("language_model."))
    est = vision_activation_memory(vision, projector, Dt, patches.shape[0], crops * queries, crops, mode,
                                   precision, trainable_params=params)
    # the pixels are the step's input, allocated before it. The bf16 case runs autocast over fp32
    # parameters (the activation terms the estimate models); in the bf16 layout proper (bf16
    # parameters, fp32 main gradients) the measured peak is 28-42% below the estimate at these
    # shapes (issue 15), so the dry-run over-estimates the vision side there, never under
    predicted = max(est.held, est.backward) - patches.numel() * 4
    return measured, predicted


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_prediction_within_15_percent_of_measured_peak(shape, precision):
    for mode in ("none", "layer", "crops"):
        measured, predicted = _measure(mode, precision, **SHAPES[shape])
        error = predicted / measured - 1
        print(f"{shape} {precision} {mode}: measured {measured / 2**20:.2f} MiB, predicted "
              f"{predicted / 2**20:.2f} MiB, error {error:+.1%}")
        assert abs(error) <= 0.15, (mode, measured, predicted)


def test_recompute_modes_order_memory_for_the_paper_sizes():
    vision, projector = VisionConfig(), ProjectorConfig()
    crops, patches, tokens = worst_case_images(65536, 1, 35, 128)
    assert (crops, patches, tokens) == (512, 627_200, 65_536)
    held = {m: vision_activation_memory(vision, projector, 2560, patches, tokens, crops, m).held
            for m in ("none", "layer", "crops")}
    assert held["none"] > held["layer"] > held["crops"]
    assert held["crops"] == 4 * patches * 3 * 14 * 14 + 2 * 0  # the pixels only (no weight copies asked)
