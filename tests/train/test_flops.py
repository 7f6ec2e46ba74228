from aria_train.train.run_config import build_config
from aria_train.train.flops import forward_flops_per_token, train_flops_per_token


def test_tiny_flops_match_a_hand_count():
    cfg = build_config(1).model  # H 64, 4 heads x 16, 16 experts top-4, 2 shared x 32, 2 layers, V 1024
    seq = 128
    attention_projections = 2 * 4 * 64 * 64  # q, k, v, o
    attention_core = 2 * 2 * seq * 64 / 2  # QK^T and AV, causal half
    router = 2 * 64 * 16
    experts = 2 * 3 * 64 * 32 * (4 + 2)  # 4 routed + 2 shared-expert widths, SwiGLU = 3 matmuls
    head = 2 * 64 * 1024
    hand = 2 * (attention_projections + attention_core + router + experts) + head
    assert hand == 2 * (32768 + 16384 + 2048 + 73728) + 131072
    assert forward_flops_per_token(cfg, seq) == hand
    assert train_flops_per_token(cfg, seq) == 3 * hand


# ---- issue 15, defect 10: the device's own peak, and the image FLOPs ------------------------------
import pytest  # noqa: E402
import torch  # noqa: E402

from aria_train.train import flops as flops_module  # noqa: E402
from aria_train.train.callbacks.logging import MetricsWindow  # noqa: E402


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12),  # SXM5
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA B200", 2250e12),
    ("Tesla V100-SXM2-32GB", None),
])
def test_peak_is_read_from_the_device_name(name, peak):
    assert flops_module.peak_flops(name) == peak


def test_image_flops_match_a_hand_count():
    cfg = build_config(2)  # tiny vision: D 32, 2 layers, MLP 64, patch 14, 3 channels; decoder H 64
    vision = cfg.vision
    n, q = 25, 4  # a 5x5-patch crop and its 4 queries
    vit = 2 * 3 * 14 * 14 * 32 * n + 2 * (2 * 4 * 32 * 32 * n + 2 * 2 * n * n * 32 + 2 * 2 * 32 * 64 * n)
    projector = (2 * 2 * 32 * 32 * q + 2 * 4 * 32 * 32 * n + 2 * 2 * q * n * 32 + 2 * 2 * 32 * 32 * q
                 + 2 * 32 * 64 * q + 2 * 64 * 64 * q)
    assert flops_module.vit_forward_flops(vision, n) == vit
    assert flops_module.projector_forward_flops(vision, 64, n, q) == projector
    assert flops_module.image_train_flops(vision, 64, [(5, 5, 4), (5, 5, 4)]) == 2 * 3 * (vit + projector)


class _FakeTrainer:
    def __init__(self, step):
        class State:
            pass

        self.state = State()
        self.state.step = step
        self.state.skipped_steps = 0
        self.groups = type("G", (), {"world_size": 2})()
        self.logged = []
        self.logger = type("L", (), {"log": lambda _, m: self.logged.append(m), "info": lambda _, m: None})()
        self.routing = type("R", (), {"reduce_and_reset": lambda _, g: ({}, {})})()
        self.timer = type("T", (), {"window_summary": lambda _: {}})()
        self.train_batches = None  # language data: no bad-sample accounting


def test_mfu_uses_the_device_peak_and_counts_image_flops(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    cfg = build_config(2, overrides={"logging.log_interval": 1})
    window = MetricsWindow(cfg, torch.device("cuda", 0))
    trainer = _FakeTrainer(step=1)
    image_flops = 3.0e12
    window.post_step(trainer, {"step_time_s": 2.0, "image_tokens": 8, "image_flops": image_flops, "skipped": False})
    logged = trainer.logged[0]
    tokens = cfg.train.global_batch_size * cfg.data.seq_length
    flops = tokens * flops_module.train_flops_per_token(cfg.model, cfg.data.seq_length) + image_flops
    assert logged["tflops_per_s_per_rank"] == pytest.approx(flops / 2.0 / 2 / 1e12)
    assert logged["mfu"] == pytest.approx(flops / 2.0 / 2 / 756e12)
