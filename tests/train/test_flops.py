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
