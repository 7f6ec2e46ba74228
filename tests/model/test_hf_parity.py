"""Our decoder against transformers' AriaTextForCausalLM on a tiny random config: same weights in
(through aria_train.convert.hf_text), same logits and loss out; conversions round-trip exactly."""

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from transformers import AriaTextConfig, AriaTextForCausalLM  # noqa: E402

from aria_train.convert.hf_text import (  # noqa: E402
    aria_to_hf_state_dict,
    hf_text_config_from_model,
    hf_to_aria_state_dict,
    load_hf_checkpoint,
    model_config_from_hf,
    save_hf_checkpoint,
)
from aria_train.model.decoder import AriaForCausalLM, build_model  # noqa: E402

TOL = 1e-5


def _hf_config(**kw) -> AriaTextConfig:
    cfg = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        moe_num_experts=8,
        moe_topk=2,
        moe_num_shared_experts=2,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=False,
    )
    cfg.update(kw)
    return AriaTextConfig(**cfg)


def _randomize_(model: torch.nn.Module, seed: int) -> None:
    """Every weight random (norm scales too, so a swapped norm would show)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = AriaTextForCausalLM(_hf_config()).float().eval()
    _randomize_(model, seed=1)
    return model


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(2))


def _ours_from_hf(hf_model) -> AriaForCausalLM:
    cfg = model_config_from_hf(hf_model.config)
    model = build_model(cfg)
    model.load_state_dict(hf_to_aria_state_dict(hf_model.state_dict(), cfg.num_layers), strict=True)
    return model.eval()


def _our_logits(model, tokens):
    with torch.no_grad():
        return model.logits(model(tokens).hidden)


def _hf_logits(model, tokens, **kw):
    with torch.no_grad():
        return model(input_ids=tokens, **kw)


def test_config_round_trip(hf_model):
    cfg = model_config_from_hf(hf_model.config)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.head_dim) == (128, 64, 2, 4, 16)
    assert (cfg.moe.num_experts, cfg.moe.top_k, cfg.moe.num_shared_experts, cfg.moe.expert_ffn_size) == (8, 2, 2, 32)
    assert cfg.rope_base == 100000.0 and cfg.rms_norm_eps == 1e-6
    back = model_config_from_hf(hf_text_config_from_model(cfg))
    assert back == cfg
    with pytest.raises(ValueError, match="num_key_value_heads"):
        model_config_from_hf(_hf_config(num_key_value_heads=2))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_and_loss_match_transformers(hf_model, tokens, attn):
    hf_model.config._attn_implementation = attn
    ours = _ours_from_hf(hf_model)
    hf_out = _hf_logits(hf_model, tokens, labels=tokens)
    logits = _our_logits(ours, tokens)
    diff = (logits - hf_out.logits).abs().max().item()
    print(f"max abs logit diff ({attn}): {diff:.3e}")
    assert diff < TOL
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    assert abs(loss.item() - hf_out.loss.item()) < 1e-6


def test_state_dict_round_trip_is_bit_exact(hf_model):
    ours = _ours_from_hf(hf_model)
    sd = ours.state_dict()
    for on_disk in (False, True):
        hf_sd = aria_to_hf_state_dict(sd, 2, on_disk=on_disk)
        back = hf_to_aria_state_dict(hf_sd, 2)
        assert back.keys() == sd.keys()
        for key in sd:
            assert torch.equal(back[key], sd[key]), key
    # our -> HF names are exactly transformers' own keys, with identical shapes.
    hf_sd = aria_to_hf_state_dict(sd, 2)
    ref = hf_model.state_dict()
    assert hf_sd.keys() == ref.keys()
    for key in ref:
        assert torch.equal(hf_sd[key], ref[key]), key


def test_state_dict_errors_name_the_key(hf_model):
    hf_sd = dict(hf_model.state_dict())
    hf_sd["model.layers.0.mlp.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.extra\.weight"):
        hf_to_aria_state_dict(hf_sd, 2)
    hf_sd = dict(hf_model.state_dict())
    del hf_sd["model.layers.1.mlp.router.weight"]
    with pytest.raises(ValueError, match=r"layers\.1\.moe\.router\.weight"):
        hf_to_aria_state_dict(hf_sd, 2)
    with pytest.raises(ValueError, match=r"model\.layers\.1\."):  # more layers than we were told
        hf_to_aria_state_dict(hf_model.state_dict(), 1)


def test_save_hf_checkpoint_loads_in_transformers(hf_model, tokens, tmp_path):
    ours = _ours_from_hf(hf_model)
    save_hf_checkpoint(ours, tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "model.layers.0.mlp.experts.fc1.weight" in f.keys()  # the on-disk (original Aria) names
    loaded = AriaTextForCausalLM.from_pretrained(str(tmp_path), local_files_only=True).float().eval()
    for key, value in hf_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    diff = (_hf_logits(loaded, tokens).logits - _our_logits(ours, tokens)).abs().max().item()
    assert diff < TOL


def test_transformers_save_pretrained_loads_here(hf_model, tokens, tmp_path):
    hf_model.save_pretrained(str(tmp_path))
    ours = load_hf_checkpoint(tmp_path)
    assert ours.cfg.num_layers == 2 and ours.rope.inv_freq.device.type == "cpu"
    for key, value in hf_to_aria_state_dict(hf_model.state_dict(), 2).items():
        assert torch.equal(ours.state_dict()[key], value), key
    diff = (_hf_logits(hf_model, tokens).logits - _our_logits(ours.eval(), tokens)).abs().max().item()
    assert diff < TOL


def test_cli_round_trip(hf_model, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / "convert_hf.py"
    spec = importlib.util.spec_from_file_location("convert_hf", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    hf_model.save_pretrained(str(tmp_path / "hf"))
    cli.main(["--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours" / "model.pt")])
    sd = torch.load(tmp_path / "ours" / "model.pt", weights_only=True)
    for key, value in hf_to_aria_state_dict(hf_model.state_dict(), 2).items():
        assert torch.equal(sd[key], value), key
    cli.main(["--to-hf", "--state-dict", str(tmp_path / "ours" / "model.pt"),
              "--config", str(tmp_path / "ours" / "model.yaml"), "--out", str(tmp_path / "hf2")])
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "hf" / "model.safetensors")), load_file(str(tmp_path / "hf2" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
