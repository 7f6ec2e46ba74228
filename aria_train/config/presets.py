"""Named sizes, as plain data. A model preset fills `model.*`, a vision preset `vision.*` and
`projector.*`; YAML and `--set` can still override any field."""

from __future__ import annotations

MODEL_PRESETS: dict[str, dict] = {
    # Small enough to train on two CPU cores in a few minutes; every structural feature is kept
    # (shared + routed experts, top-k > 1, several balance groups, several layers).
    "tiny": dict(
        vocab_size=1024,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        head_dim=16,
        rope_base=100_000.0,
        moe=dict(num_experts=16, top_k=4, num_shared_experts=2, expert_ffn_size=32, balance_group_size=4),
    ),
    # The paper's text decoder (arXiv 2410.05993): 24.87B parameters, about 3.5B active per token.
    "aria-25b": dict(
        vocab_size=100352,
        hidden_size=2560,
        num_layers=28,
        num_heads=20,
        head_dim=128,
        rope_base=100_000.0,
        moe=dict(num_experts=64, top_k=6, num_shared_experts=2, expert_ffn_size=1664, balance_group_size=8),
    ),
}

# The vision side each model preset trains with by default (a VISION_PRESETS name).
DEFAULT_VISION_PRESET = {"tiny": "tiny", "aria-25b": "siglip-so400m"}

# Vision presets: `vision.*` and `projector.*` fields (aria_train.model.vision_config).
VISION_PRESETS: dict[str, dict] = {
    # CPU tests: 70 px crops (5x5 patches) inside a 10x10 position grid (140 px), so positions
    # are bucketed as they are for 490 px crops in the real 70x70 grid.
    "tiny": dict(
        vision=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=14, image_size=140),
        projector=dict(patch_to_query={25: 4, 100: 8}),
    ),
    # The paper's shapes.
    "siglip-so400m": dict(
        vision=dict(hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304, patch_size=14, image_size=980),
        projector=dict(patch_to_query={1225: 128, 4900: 256}),
    ),
}
