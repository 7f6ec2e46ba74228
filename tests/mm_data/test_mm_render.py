"""Renderer: exact token layout per kind, loss mask exactly on captions/answers (+ EOD), image
blocks of crops x queries tokens per resolution mode, no forged image tokens."""

import io

import pytest
import torch
from PIL import Image

from aria_train.data.multimodal import ImageConfig, RawSample, SampleRenderer, timestamp
from aria_train.model.vision import patchify


def _img(w=70, h=70, color=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def _sample(meta, n_images=1, **sizes):
    return RawSample("s.tar", "k", meta, {i: _img(*sizes.get(f"i{i}", (70, 70))) for i in range(n_images)})


def _block(tok, n):
    return [tok.fim_prefix] + [tok.img] * n + [tok.fim_suffix]


def _check_loss(out, r, loss_ids_positions):
    """loss_mask[i] == 1 exactly where labels[i] is a loss token (index i+1 of the sample)."""
    expected = torch.zeros(len(r.tokens) - 1)
    for j in loss_ids_positions:
        expected[j - 1] = 1
    assert torch.equal(out["loss_mask"], expected)
    assert torch.equal(out["labels"], torch.as_tensor(r.tokens[1:]))


def test_caption_layout(tok, renderer):
    meta = {"kind": "caption", "image": 0, "caption": "two red circles on the left"}
    out = renderer.render(_sample(meta))
    r = out["rendered"]
    cap = tok.encode(meta["caption"])
    assert r.tokens.tolist() == _block(tok, 4) + cap + [tok.eod]
    assert r.tokens[0] == tok.fim_prefix and r.tokens[5] == tok.fim_suffix
    assert (r.images[0].start, r.images[0].end) == (0, 6)
    _check_loss(out, r, range(6, 6 + len(cap) + 1))
    assert out["grid"] == [(5, 5)] and out["patches"].shape == (25, 3 * 14 * 14)


def test_caption_prompt_gets_no_loss(tok, renderer):
    meta = {"kind": "caption", "image": 0, "caption": "one blue square", "prompt": "Describe:"}
    out = renderer.render(_sample(meta))
    prompt, cap = tok.encode("Describe:"), tok.encode("one blue square")
    assert out["rendered"].tokens.tolist() == _block(tok, 4) + prompt + cap + [tok.eod]
    first = 6 + len(prompt)
    _check_loss(out, out["rendered"], range(first, first + len(cap) + 1))


@pytest.mark.parametrize("kind", ["ocr_qa", "doc_qa"])
def test_qa_layout(tok, renderer, kind):
    meta = {"kind": kind, "image": 0, "question": "How many circles?", "answer": "two"}
    out = renderer.render(_sample(meta))
    q, a = tok.encode("How many circles?\n"), tok.encode("two")
    assert out["rendered"].tokens.tolist() == _block(tok, 4) + q + a + [tok.eod]
    first = 6 + len(q)
    _check_loss(out, out["rendered"], range(first, first + len(a) + 1))


def test_interleaved_layout(tok, renderer):
    meta = {"kind": "interleaved", "segments": [
        {"text": "First"}, {"image": 1}, {"text": "no loss here", "loss": False}, {"image": 0}, {"text": "end"}]}
    out = renderer.render(_sample(meta, 2, i1=(140, 70)))
    t1, t2, t3 = tok.encode("First"), tok.encode("no loss here"), tok.encode("end")
    r = out["rendered"]
    assert r.tokens.tolist() == t1 + _block(tok, 4) + t2 + _block(tok, 4) + t3 + [tok.eod]
    assert [img.index for img in r.images] == [1, 0]
    n1 = len(t1)
    b2 = n1 + 6 + len(t2) + 6
    loss = list(range(1, n1)) + list(range(b2, len(r.tokens)))  # token 0 is never a label here
    _check_loss(out, r, loss)
    # image 1 (140x70: 5x3 patches after the 70 px resize, short side >= 48 px -> 4 rows) comes first
    assert out["grid"] == [(4, 5), (5, 5)]


def test_video_layout(tok, renderer):
    meta = {"kind": "video", "frames": [{"image": 0, "time": 0}, {"image": 1, "time": 65.5}],
            "question": "What moves?", "answer": "a circle"}
    out = renderer.render(_sample(meta, 2))
    assert timestamp(65.5) == "[01:05]"
    ts0, ts1 = tok.encode("[00:00]"), tok.encode("[01:05]")
    q, a = tok.encode("What moves?\n"), tok.encode("a circle")
    r = out["rendered"]
    assert r.tokens.tolist() == ts0 + _block(tok, 4) + ts1 + _block(tok, 4) + q + a + [tok.eod]
    first = len(ts0) + 6 + len(ts1) + 6 + len(q)
    _check_loss(out, r, range(first, len(r.tokens)))
    assert len(out["grid"]) == 2


@pytest.mark.parametrize("mode, size, crops, queries, grid", [
    ("medium", (70, 70), 1, 4, [(5, 5)]),
    ("high", (70, 70), 1, 8, [(10, 10)]),
    ("ultra-high", (70, 70), 5, 4, [(5, 5)] * 5),  # 2x2 tiles + global view
    ("ultra-high", (140, 70), 3, 4, [(4, 5), (5, 5), (5, 5)]),  # 1x2 tiles + global view
])
def test_resolution_modes(tok, tiny_projector, mode, size, crops, queries, grid):
    from aria_train.model.projector import Projector

    r = SampleRenderer(tok, ImageConfig.from_projector(tiny_projector, mode=mode))
    out = r.render(_sample({"kind": "caption", "image": 0, "caption": "x"}, i0=size))
    n = crops * queries
    assert out["rendered"].tokens.tolist()[: n + 2] == _block(tok, n)
    assert out["grid"] == grid
    # the projector gives every crop exactly the queries the text reserved
    proj = Projector(32, 64, 2, tiny_projector)
    assert sum(proj.num_queries(out["grid"])) == n


def test_patches_are_the_crops_pixels(renderer):
    out = renderer.render(_sample({"kind": "caption", "image": 0, "caption": "x"}))
    # a flat red 70 px image stays 70 px: every patch is the normalised colour
    expected = torch.tensor([200, 10, 10]).float() / 255 * 2 - 1
    img = out["patches"].view(25, 3, 14, 14)
    assert torch.allclose(img[:, :, 0, 0], expected.expand(25, 3))
    crop = renderer.image_cfg.crops(Image.open(io.BytesIO(_img()))).crops[0]
    assert torch.equal(patchify(crop, 14)[0], out["patches"])


def test_text_cannot_forge_image_tokens(tok, renderer):
    meta = {"kind": "caption", "image": 0, "caption": "a <|img|> and <fim_prefix> and <fim_suffix>"}
    r = renderer.plan(_sample(meta))
    assert (r.tokens == tok.img).sum() == 4 and (r.tokens == tok.fim_prefix).sum() == 1
    assert "img" in tok.decode(r.tokens[6:].tolist())


def test_siglip_sizes_by_default(tok):
    cfg = ImageConfig()
    assert (cfg.crop_size, cfg.queries, cfg.effective_min_size) == (490, 128, 336)
    r = SampleRenderer(tok, cfg).plan(_sample({"kind": "caption", "image": 0, "caption": "x"}))
    assert (r.tokens == tok.img).sum() == 128
