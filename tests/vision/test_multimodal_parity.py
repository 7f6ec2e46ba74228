"""Our multimodal model against transformers' AriaForConditionalGeneration on tiny random configs:
same weights in (through aria_train.convert.hf_multimodal), same logits out; state dicts and
checkpoint directories round-trip exactly."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AriaConfig  # noqa: E402
from transformers import AriaForConditionalGeneration as HFAria  # noqa: E402

from aria_train.convert.hf_multimodal import (  # noqa: E402
    aria_to_hf_state_dict,
    configs_from_hf,
    hf_to_aria_state_dict,
    load_hf_checkpoint,
    save_hf_checkpoint,
)
from aria_train.data.image_tokens import image_token_ids, process_image  # noqa: E402
from aria_train.model.multimodal import AriaForConditionalGeneration  # noqa: E402
from aria_train.model.vision import pack_images  # noqa: E402

TOL = 1e-5
IMG, PREFIX, SUFFIX = 9, 7, 8
VOCAB = 128


def _hf_config(image_size: int, patch_to_query: dict) -> AriaConfig:
    return AriaConfig(
        vision_config=dict(
            model_type="idefics3_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, patch_size=14, image_size=image_size,
        ),
        text_config=dict(
            model_type="aria_text", vocab_size=VOCAB, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, moe_num_experts=8, moe_topk=2, moe_num_shared_experts=2,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=False,
        ),
        projector_patch_to_query_dict=patch_to_query,
        image_token_index=IMG,
    )


def _hf_model(image_size: int, patch_to_query: dict, seed: int = 1) -> HFAria:
    torch.manual_seed(0)
    model = HFAria(_hf_config(image_size, patch_to_query)).float().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every weight random, norms around 1 (so a swapped norm would show)
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    return model


def _ours_from_hf(hf: HFAria) -> AriaForConditionalGeneration:
    text, vision, projector, image_token_id = configs_from_hf(hf.config)
    model = AriaForConditionalGeneration(text, vision, projector, image_token_id)
    model.load_state_dict(hf_to_aria_state_dict(hf.state_dict(), text.num_layers), strict=True)
    return model.eval()


def _hf_pixels(crops, side: int):
    """Crops [3, H, W] -> transformers' padded pixel_values [N, 3, side, side] and pixel_mask."""
    pv = torch.zeros(len(crops), 3, side, side)
    pm = torch.zeros(len(crops), side, side, dtype=torch.long)
    for i, c in enumerate(crops):
        pv[i, :, : c.shape[1], : c.shape[2]] = c
        pm[i, : c.shape[1], : c.shape[2]] = 1
    return pv, pm


def _prompt(text_ids: list[list[int]], images_per_seq: list[list[list[int]]]) -> torch.Tensor:
    """Interleaves text chunks and image token blocks: seq = t0 img0 t1 img1 ... t_n."""
    rows = []
    for chunks, images in zip(text_ids, images_per_seq):
        row = []
        for i, chunk in enumerate(chunks):
            row += chunk
            if i < len(images):
                row += images[i]
        rows.append(row)
    assert len({len(r) for r in rows}) == 1
    return torch.tensor(rows)


def _compare(hf, ours, ids, crops, side):
    pv, pm = _hf_pixels(crops, side)
    patches, grid = pack_images(crops, 14)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pv, pixel_mask=pm).logits
        out = ours.logits(ours(ids, patches=patches, grid=grid).hidden)
    assert out.shape == ref.shape
    return (out - ref).abs().max().item()


def _text(gen, *lengths):
    return [torch.randint(10, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def test_logits_match_two_sequences_three_images():
    # Small patch_to_query so CPU is quick: 70 px crops (5x5 patches) -> 4 queries, inside a
    # 10x10 position grid (140 px), so positions are bucketed as for 490 px crops in ARIA's 70x70.
    hf = _hf_model(140, {25: 4, 100: 8})
    ours = _ours_from_hf(hf)
    gen = torch.Generator().manual_seed(2)
    crops = [torch.randn(3, 70, 42, generator=gen), torch.randn(3, 28, 70, generator=gen), torch.randn(3, 70, 70, generator=gen)]
    block = image_token_ids(1, 4, IMG, PREFIX, SUFFIX)
    ids = _prompt([_text(gen, 3, 5, 4), _text(gen, 6, 12)], [[block, block], [block]])
    diff = _compare(hf, ours, ids, crops, 70)
    print(f"tiny dict, 2 seqs x 3 images: max |logits diff| = {diff:.3g}")
    assert diff < TOL


def test_logits_match_aria_query_dict_490px():
    # ARIA's own {1225: 128, 4900: 256}: a 490 x 336 px crop (35x24 patches) -> 128 queries,
    # positions bucketed into the 70x70 grid of a 980 px ViT.
    hf = _hf_model(980, {1225: 128, 4900: 256})
    ours = _ours_from_hf(hf)
    gen = torch.Generator().manual_seed(3)
    crops = [torch.randn(3, 336, 490, generator=gen)]
    ids = _prompt([_text(gen, 4, 6)], [[image_token_ids(1, 128, IMG, PREFIX, SUFFIX)]])
    diff = _compare(hf, ours, ids, crops, 490)
    print(f"ARIA dict, 490 px crop: max |logits diff| = {diff:.3g}")
    assert diff < TOL


def test_logits_match_ultra_high_crops():
    # One image split ARIA-style (global view + tiles) with the image-token block built by
    # aria_train.data.image_tokens; transformers sees the same crops as one image of N crops.
    hf = _hf_model(140, {25: 4, 100: 8})
    ours = _ours_from_hf(hf)
    gen = torch.Generator().manual_seed(4)
    image = torch.randint(0, 256, (3, 40, 90), dtype=torch.uint8, generator=gen)
    crops = process_image(image, "ultra-high", tile_size=70, min_size=14, size_to_queries={70: 4})
    assert crops.split == (1, 2) and crops.num_crops == 3 and crops.grid == [(3, 5), (5, 5), (5, 5)]
    ids = _prompt([_text(gen, 3, 4)], [[crops.token_ids(IMG, PREFIX, SUFFIX)]])
    diff = _compare(hf, ours, ids, crops.crops, 70)
    print(f"ultra-high 3 crops: max |logits diff| = {diff:.3g}")
    assert diff < TOL


def test_state_dict_round_trip_exact():
    hf = _hf_model(140, {25: 4, 100: 8})
    ours = _ours_from_hf(hf)
    sd = ours.state_dict()
    for on_disk in (False, True):
        back = hf_to_aria_state_dict(aria_to_hf_state_dict(sd, 2, on_disk=on_disk), 2)
        assert set(back) == set(sd)
        assert all(torch.equal(back[k], v) for k, v in sd.items())
    hf_sd = hf.state_dict()
    to_hf = aria_to_hf_state_dict(sd, 2)
    assert set(to_hf) == set(hf_sd)
    assert all(torch.equal(to_hf[k], v) for k, v in hf_sd.items())
    with pytest.raises(ValueError, match="unexpected"):
        hf_to_aria_state_dict({**hf_sd, "model.extra.weight": torch.zeros(1)}, 2)


def test_checkpoint_directories_round_trip(tmp_path):
    hf = _hf_model(140, {25: 4, 100: 8})
    ours = _ours_from_hf(hf)
    # ours -> directory -> transformers
    save_hf_checkpoint(ours, tmp_path / "ours")
    loaded_hf = HFAria.from_pretrained(tmp_path / "ours").float().eval()
    assert all(torch.equal(loaded_hf.state_dict()[k], v) for k, v in hf.state_dict().items())
    # transformers' own save_pretrained -> ours
    hf.save_pretrained(tmp_path / "hf")
    back = load_hf_checkpoint(tmp_path / "hf")
    assert back.projector_cfg.patch_to_query == {25: 4, 100: 8} and back.image_token_id == IMG
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items())
