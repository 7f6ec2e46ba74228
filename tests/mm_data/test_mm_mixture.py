"""Mixing + packing + DP split + resume of the stage-2 stream."""

import json

import numpy as np
import pytest
import torch

from aria_train.data.errors import DataError
from aria_train.data.multimodal import (
    LanguageSource,
    MultimodalMicroBatchIterator,
    MultimodalMixture,
    ShardSource,
    write_synthetic_shards,
)

# language documents: tokens 300.. (never special ids), lengths 3..150, each ending with EOD (2)
DOC_LENS = [37, 150, 3, 64, 90, 12, 128, 45, 7, 100, 66, 20]


def language_docs():
    docs, nxt = [], 300
    for n in DOC_LENS:
        docs.append(np.append(np.arange(nxt, nxt + n - 1) % 700 + 300, 2))
        nxt += n
    return docs


def make_mixture(tok, renderer, syn_dir, seq_length=64, seed=11, weights=(0.4, 0.6), **kw):
    sources = [(weights[0], LanguageSource(language_docs())), (weights[1], ShardSource(syn_dir, seed=seed))]
    return MultimodalMixture(sources, seq_length, seed, renderer=renderer, **kw)


def check_image_blocks(tok, seq, queries=4):
    """Every image block is whole inside tokens[:S]: prefix, k*queries img, suffix."""
    t = seq.tokens.tolist()
    S = len(t) - 1
    assert t[S] not in (tok.img, tok.fim_prefix, tok.fim_suffix)
    i, blocks = 0, 0
    while i < S:
        if t[i] == tok.fim_prefix:
            j = i + 1
            while j < S and t[j] == tok.img:
                j += 1
            assert j < S and t[j] == tok.fim_suffix, f"image block cut at {i}..{j}"
            assert (j - i - 1) % queries == 0 and j - i - 1 > 0
            assert not seq.target[i : j + 1].any()  # no loss on markers / image tokens
            blocks += 1
            i = j + 1
        else:
            assert t[i] not in (tok.img, tok.fim_suffix)
            i += 1
    return blocks


@pytest.mark.parametrize("seq_length", [24, 64])
def test_packing_never_cuts_an_image_block(tok, renderer, syn_dir, seq_length):
    mix = make_mixture(tok, renderer, syn_dir, seq_length=seq_length)
    text = []
    blocks = 0
    for _ in range(40):
        seq = mix.next_sequence(materialize=False)
        blocks += check_image_blocks(tok, seq)
        assert sum(len(img_list) for img_list in [seq.images]) == sum(
            1 for p in seq.placed for im in p.sample.images if im.end <= p.length)
        # placed multimodal samples are copied whole (or a prefix when truncated)
        mm = np.zeros(seq_length, dtype=bool)
        for p in seq.placed:
            assert seq.tokens[p.offset : p.offset + p.length].tolist() == p.sample.tokens[: p.length].tolist()
            assert p.truncated == (p.length < len(p.sample))
            mm[p.offset : p.offset + p.length] = True
        toks = seq.tokens[:seq_length]
        text.extend(toks[~mm & (toks != tok.pad)].tolist())
    assert blocks > 10
    # text documents are split across sequences but never lost or reordered
    stream = np.concatenate(language_docs() * 20).tolist()
    assert len(text) > 100 and text == stream[: len(text)]
    if seq_length == 24:
        assert mix.stats["truncated"] > 0  # interleaved samples exceed 24 tokens


def test_too_long_policies(tok, renderer, syn_dir, tmp_path):
    write_synthetic_shards(tmp_path, 5, seed=0, kind="caption")
    # captions start with their image block (6 tokens): nothing fits 5 tokens, and nothing hangs
    mix = make_mixture(tok, renderer, tmp_path, seq_length=5, weights=(0, 1), max_consecutive_skips=20)
    with pytest.raises(DataError, match="in a row longer than seq_length"):
        mix.next_sequence()
    mix = make_mixture(tok, renderer, syn_dir, seq_length=10, weights=(0.2, 0.8), too_long="skip")
    for _ in range(30):
        seq = mix.next_sequence()
        assert not seq.placed  # every multimodal sample is > 10 tokens: skipped
    assert mix.stats["too_long_skipped"] > 0 and mix.stats["truncated"] == 0


def first_with_images(it):
    for _ in range(20):
        for mb in it.next_global_batch():
            if mb["patches"] is not None:
                return mb
    raise AssertionError("no micro-batch with images")


def _flatten(batches):
    keys = ("tokens", "labels", "loss_mask", "position_ids", "is_visual")
    out = {k: torch.cat([mb[k] for mb in batches]) for k in keys}
    patches = [mb["patches"] for mb in batches if mb["patches"] is not None]
    out["patches"] = torch.cat(patches) if patches else None
    out["grid"] = [g for mb in batches for g in mb["grid"]]
    out["num_image_tokens"] = sum(mb["num_image_tokens"] for mb in batches)
    return out


def _assert_same(a, b):
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_dp_split_union_equals_single_rank(tok, renderer, syn_dir):
    G, steps = 8, 2
    single = MultimodalMicroBatchIterator(make_mixture(tok, renderer, syn_dir), G, 2, 0, 1)
    ref = [_flatten(single.next_global_batch()) for _ in range(steps)]
    assert ref[0]["patches"] is not None and ref[0]["num_image_tokens"] == int(ref[0]["is_visual"].sum())
    for W, mbs in ((2, 2), (4, 1)):
        its = [MultimodalMicroBatchIterator(make_mixture(tok, renderer, syn_dir), G, mbs, r, W) for r in range(W)]
        for step in range(steps):
            per_rank = [it.next_global_batch() for it in its]
            assert all(len(mbl) == G // (W * mbs) for mbl in per_rank)
            _assert_same(_flatten([mb for mbl in per_rank for mb in mbl]), ref[step])


def test_micro_batch_fields(tok, renderer, syn_dir):
    it = MultimodalMicroBatchIterator(make_mixture(tok, renderer, syn_dir, seq_length=32), 4, 2, 0, 1)
    mb = first_with_images(it)
    B, S = 2, 32
    assert it.num_micro_batches == 2
    for k, dtype in (("tokens", torch.int64), ("labels", torch.int64), ("position_ids", torch.int64),
                     ("loss_mask", torch.float32), ("is_visual", torch.bool)):
        assert mb[k].shape == (B, S) and mb[k].dtype == dtype, k
    assert torch.equal(mb["tokens"][:, 1:], mb["labels"][:, :-1])
    assert torch.equal(mb["is_visual"], mb["tokens"] == tok.img)
    assert torch.equal(mb["position_ids"][1], torch.arange(S))
    assert mb["patches"].shape == (sum(h * w for h, w in mb["grid"]), 588) and mb["patches"].dtype == torch.float32
    assert mb["num_image_tokens"] == 4 * len(mb["grid"])


def test_resume_from_state_dict(tok, renderer, syn_dir):
    G = 4
    a = MultimodalMicroBatchIterator(make_mixture(tok, renderer, syn_dir), G, 2, 1, 2)
    for _ in range(3):
        a.next_global_batch()
    state = json.loads(json.dumps(a.state_dict()))  # plain JSON: checkpoint-friendly
    assert state["consumed_samples"] == 12
    ref = [_flatten(a.next_global_batch()) for _ in range(3)]

    b = MultimodalMicroBatchIterator(make_mixture(tok, renderer, syn_dir), G, 2, 1, 2)
    b.load_state_dict(state)
    for r in ref:
        _assert_same(_flatten(b.next_global_batch()), r)
    # only consumed_samples (e.g. an older checkpoint): replayed without pixels, same batches
    c = MultimodalMicroBatchIterator(make_mixture(tok, renderer, syn_dir), G, 2, 1, 2, consumed_samples=12)
    for r in ref:
        _assert_same(_flatten(c.next_global_batch()), r)
    d = MultimodalMicroBatchIterator(make_mixture(tok, renderer, syn_dir), G, 2, 1, 2)
    d.load_state_dict({"consumed_samples": 12})
    _assert_same(_flatten(d.next_global_batch()), ref[0])


def test_state_mismatch_is_rejected(tok, renderer, syn_dir):
    state = make_mixture(tok, renderer, syn_dir).state_dict()
    with pytest.raises(DataError, match="seed"):
        make_mixture(tok, renderer, syn_dir, seed=12).load_state_dict(state)


def test_mixing_is_seeded_and_weighted(tok, renderer, syn_dir):
    mix = make_mixture(tok, renderer, syn_dir, weights=(0.3, 0.7))
    picks = np.array([mix.choose(j) for j in range(3000)])
    assert abs(picks.mean() - 0.7) < 0.03
    again = make_mixture(tok, renderer, syn_dir, weights=(0.3, 0.7))
    assert [again.choose(j) for j in range(200)] == picks[:200].tolist()
    other = make_mixture(tok, renderer, syn_dir, seed=12, weights=(0.3, 0.7))
    assert [other.choose(j) for j in range(200)] != picks[:200].tolist()
    s1 = [mix.next_sequence(False).tokens.tolist() for _ in range(5)]
    s2 = [again.next_sequence(False).tokens.tolist() for _ in range(5)]
    assert s1 == s2


def test_forged_image_tokens_in_language_data_are_neutralised(tok, renderer):
    src = LanguageSource([np.array([300, tok.img, 301, 2])])
    mix = MultimodalMixture([(1.0, src)], 16, 0, renderer=renderer)
    seq = mix.next_sequence()
    assert tok.img not in seq.tokens.tolist() and mix.stats["forged_image_tokens"] == 4


def test_gpt_dataset_style_samples(tok, renderer):
    class Fake:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            t = torch.arange(8) + 300 + 100 * i
            return {"tokens": t, "labels": t + 1, "loss_mask": torch.ones(8), "position_ids": torch.arange(8)}

    mix = MultimodalMixture([(1.0, LanguageSource(Fake()))], 12, 0, renderer=renderer)
    seq = mix.next_sequence()
    # the 9-token chunk (tokens + last label), then the next chunk, continued in the next sequence
    assert seq.tokens.tolist() == list(range(300, 309)) + [400, 401, 402, 403]
    assert seq.target.all()
    assert mix.next_sequence().tokens.tolist()[:6] == [403, 404, 405, 406, 407, 408]


def test_batches_run_through_the_tiny_model(tok, renderer, syn_dir, tiny_projector):
    from aria_train.config.presets import MODEL_PRESETS
    from aria_train.model.config import ModelConfig
    from aria_train.moe.config import MoEConfig
    from aria_train.model.vision_config import vision_preset
    from aria_train.model.multimodal import build_multimodal_model

    p = dict(MODEL_PRESETS["tiny"])
    cfg = ModelConfig(preset="tiny", **{k: v for k, v in p.items() if k != "moe"}, moe=MoEConfig(**p["moe"]))
    vision, projector = vision_preset("tiny")
    model = build_multimodal_model(cfg, vision, projector, tok.img)
    it = MultimodalMicroBatchIterator(make_mixture(tok, renderer, syn_dir, seq_length=48), 2, 2, 0, 1)
    mb = first_with_images(it)
    with torch.no_grad():
        out = model(mb["tokens"], mb["position_ids"], mb["patches"], mb["grid"])
    assert out.hidden.shape == (2, 48, cfg.hidden_size)


def test_resume_at_every_step_boundary(tok, renderer, syn_dir):
    """Whatever is pending at the boundary (a split text document, a multimodal sample that did
    not fit, nothing), the resumed stream continues exactly."""
    G, pending = 2, set()
    a = MultimodalMicroBatchIterator(make_mixture(tok, renderer, syn_dir, seq_length=40), G, 1, 0, 1)
    states, batches = [], []
    for _ in range(8):
        states.append(a.state_dict())
        p = states[-1]["mixture"]["pending"]
        pending.add("none" if p is None else "text" if p["source"] == 0 else "multimodal")
        batches.append(_flatten(a.next_global_batch()))
    assert pending == {"none", "text", "multimodal"} or pending >= {"text", "multimodal"}
    for k in (1, 3, 5, 6):
        b = MultimodalMicroBatchIterator(make_mixture(tok, renderer, syn_dir, seq_length=40), G, 1, 0, 1)
        b.load_state_dict(states[k])
        for ref in batches[k : k + 2]:
            _assert_same(_flatten(b.next_global_batch()), ref)
