"""load_siglip_vision: our ViT initialised from a SigLIP (or Idefics3) vision checkpoint in
safetensors gives the checkpoint model's hidden states."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402
from transformers import SiglipVisionConfig, SiglipVisionModel  # noqa: E402

from aria_train.model.vision_config import VisionConfig  # noqa: E402
from aria_train.convert.hf_multimodal import load_siglip_vision  # noqa: E402
from aria_train.model.vision import pack_images  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def siglip():
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=70, patch_size=14, hidden_act="gelu_pytorch_tanh")
    torch.manual_seed(0)
    model = SiglipVisionModel(cfg).float().eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def test_load_siglip_directory(siglip, tmp_path):
    siglip.save_pretrained(tmp_path)  # config.json + model.safetensors (tower and pooling head.*)
    ours = load_siglip_vision(tmp_path).eval()
    assert ours.cfg.hidden_size == 32 and ours.cfg.num_patches_per_side == 5
    image = torch.randn(3, 70, 70, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = siglip(pixel_values=image[None], output_hidden_states=True)
        patches, grid = pack_images([image], 14)
        out = ours(patches, grid)
    # a full 5x5 image takes the plain positions 0..24, as SigLIP does
    assert (out - ref.hidden_states[-1][0]).abs().max().item() < TOL
    assert (ours.post_layernorm(out) - ref.last_hidden_state[0]).abs().max().item() < TOL


def test_load_bare_file_with_config_and_interpolation(siglip, tmp_path):
    sd = {k.removeprefix("vision_model."): v for k, v in siglip.state_dict().items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    # a SiglipModel-style file: vision tower under vision_model.*, text tower and logit scale beside it
    on_disk = {"vision_model." + k: v for k, v in sd.items()}
    on_disk.update({"text_model.embeddings.token_embedding.weight": torch.zeros(4, 8), "logit_scale": torch.ones(1)})
    save_file(on_disk, str(tmp_path / "vit.safetensors"))
    cfg = VisionConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=14, image_size=70)
    ours = load_siglip_vision(tmp_path / "vit.safetensors", cfg)
    for k, v in sd.items():
        assert torch.equal(ours.state_dict()[k], v)
    bigger = VisionConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=14, image_size=140)
    with pytest.raises(ValueError, match="interpolate_positions"):
        load_siglip_vision(tmp_path / "vit.safetensors", bigger)
    resized = load_siglip_vision(tmp_path / "vit.safetensors", bigger, interpolate_positions=True)
    assert resized.embeddings.position_embedding.weight.shape == (100, 32)


def test_stage2_vision_tower_starts_from_siglip(siglip, tmp_path):
    from aria_train.train.run_config import build_config
    from aria_train.convert.hf_multimodal import init_vision_tower
    from aria_train.errors import UserError
    from aria_train.model.multimodal import build_multimodal_model

    siglip.save_pretrained(tmp_path)
    cfg = build_config(2, overrides={"vision.init_from": str(tmp_path), "vision.image_size": 140})
    model = build_multimodal_model(cfg.model, cfg.vision, cfg.projector, image_token_id=5)
    init_vision_tower(model, cfg.vision.init_from)
    expected = load_siglip_vision(tmp_path, cfg.vision, interpolate_positions=True).state_dict()
    for name, tensor in model.vision_tower.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    with pytest.raises(UserError, match=f"vision.init_from={tmp_path / 'nope'}"):
        init_vision_tower(model, tmp_path / "nope")
