"""--init-from-hf: a tiny random transformers Aria checkpoint, saved with save_pretrained together
with a transformers tokenizer, starts stage 4 (two ranks, experts split over them, so each rank
reads only its own experts), and the first step's loss equals the loss transformers computes on
the same batch in fp32. Also: the checkpoint's shapes reach --dry-run, and bad directories fail
with one line."""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from launch_runs import REPO, pretrain, step_records  # noqa: E402

transformers = pytest.importorskip("transformers")
from transformers import AriaConfig, AriaForConditionalGeneration  # noqa: E402

from aria_train.data.stage_data import build_stage_data  # noqa: E402
from aria_train.train.run_config import build_config  # noqa: E402

SPECIALS = ["<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|img|>", "<fim_prefix>", "<fim_suffix>"]
IMG = SPECIALS.index("<|img|>")
VOCAB = 512


def _save_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from aria_train.data.stdlib_text import stdlib_documents

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(stdlib_documents(max_chars=200_000), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<|endoftext|>", additional_special_tokens=SPECIALS[3:])
    fast.save_pretrained(directory)


def _hf_model() -> AriaForConditionalGeneration:
    config = AriaConfig(
        vision_config=dict(model_type="idefics3_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, patch_size=14, image_size=140),
        text_config=dict(model_type="aria_text", vocab_size=VOCAB, hidden_size=64, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=4, moe_num_experts=8, moe_topk=2,
                         moe_num_shared_experts=2, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0}),
        projector_patch_to_query_dict={25: 4, 100: 8},
        image_token_index=IMG,
    )
    torch.manual_seed(0)
    model = AriaForConditionalGeneration(config).float().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every weight random, norms around 1
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf") / "aria-tiny"
    model = _hf_model()
    model.save_pretrained(directory)
    _save_tokenizer(directory)
    return directory, model


def _overrides(work: Path) -> list:
    return ["--set", f"data.cache_dir={work / 'cache'}", "--set", "data.synthetic_samples=48",
            "--set", "train.global_batch_size=2", "--set", "train.micro_batch_size=1", "--set", "train.eval_interval=0",
            "--set", "checkpoint.save=", "--set", "model.moe.aux_loss_coeff=0", "--set", "model.moe.z_loss_coeff=0",
            "--set", "train.precision=fp32", "--log-interval", "1", "--log-dir", str(work / "run")]


def _unpatchify(patches: torch.Tensor, grid, patch: int = 14) -> list:
    crops, start = [], 0
    for h, w in grid:
        p = patches[start : start + h * w].reshape(h, w, 3, patch, patch)
        crops.append(p.permute(2, 0, 3, 1, 4).reshape(3, h * patch, w * patch))
        start += h * w
    return crops


def _transformers_loss(model, micro_batches) -> float:
    """Token-mean cross-entropy over the global batch's loss tokens, transformers' logits."""
    total, count = 0.0, 0.0
    for batch in micro_batches:
        crops = _unpatchify(batch["patches"], batch["grid"])
        pixels = torch.zeros(len(crops), 3, 70, 70)
        mask = torch.zeros(len(crops), 70, 70, dtype=torch.long)
        for i, crop in enumerate(crops):
            pixels[i, :, : crop.shape[1], : crop.shape[2]] = crop
            mask[i, : crop.shape[1], : crop.shape[2]] = 1
        with torch.no_grad():
            logits = model(input_ids=batch["tokens"], pixel_values=pixels, pixel_mask=mask).logits
        losses = F.cross_entropy(logits.flatten(0, 1).double(), batch["labels"].flatten(), reduction="none")
        total += float((losses * batch["loss_mask"].flatten().double()).sum())
        count += float(batch["loss_mask"].sum())
    return total / count


def test_stage4_first_step_loss_equals_transformers(checkpoint, tmp_path):
    directory, hf = checkpoint
    # Stage 4 packs conversations with document masking on; transformers' forward has no document
    # mask, so this check of the loaded weights runs plain causal attention (the masked path has
    # its own equivalence test against documents run one by one: tests/model/test_document_mask.py).
    plain = ["--set", "data.reset_attention_mask=false", "--set", "data.reset_position_ids=false"]
    args = ["--stage", 4, "--init-from-hf", directory, "--ep-size", 2, "--train-iters", 1, *_overrides(tmp_path), *plain]
    result = pretrain(2, args, tmp_path, timeout=600)
    assert f"weights from transformers checkpoint {directory}: " in result.stdout
    ours = step_records(tmp_path / "run")[1]

    # the same global batch, built here from the same config (one rank holds the whole batch)
    overrides = {"checkpoint.init_from_hf": str(directory), "checkpoint.init_from": "",
                 "data.tokenizer_model": str(directory), "data.tokenizer_type": "huggingface",
                 "data.cache_dir": str(tmp_path / "cache"), "data.synthetic_samples": 48,
                 "train.global_batch_size": 2, "train.micro_batch_size": 2,
                 "data.reset_attention_mask": False, "data.reset_position_ids": False}
    from aria_train.convert.hf_init import with_hf_shapes

    cfg = with_hf_shapes(build_config(4, overrides=overrides), directory).validate()
    groups = SimpleNamespace(rank=0, world_size=1, distributed=False)
    data = build_stage_data(cfg, groups, SimpleNamespace(info=lambda message: None))
    assert data.tokenizer.img == IMG and cfg.model.vocab_size == VOCAB
    micro_batches = data.train.next_global_batch()
    assert sum(len(b["grid"]) for b in micro_batches) > 0  # the batch has images
    reference = _transformers_loss(hf, micro_batches)
    print(f"first-step loss: ours {ours['lm_loss']:.7f} (total {ours['loss']:.7f}), transformers {reference:.7f}")
    assert abs(ours["lm_loss"] - reference) < 1e-4
    assert abs(ours["loss"] - reference) < 1e-4  # balance and z-loss coefficients are 0 here
    assert math.isfinite(ours["grad_norm"]) and ours["grad_norm"] > 0


def test_stage1_takes_the_language_model_and_each_rank_only_its_experts(checkpoint):
    from aria_train.convert.hf_init import load_hf_weights, with_hf_shapes
    from aria_train.convert.hf_multimodal import hf_to_aria_state_dict
    from aria_train.model.decoder import build_model
    from aria_train.moe.experts import GroupedExperts
    from aria_train.moe.layout import ExpertLayout

    directory, hf = checkpoint
    cfg = with_hf_shapes(build_config(1), directory).validate()
    assert (cfg.model.vocab_size, cfg.model.moe.num_experts, cfg.model.rope_base) == (VOCAB, 8, 100_000.0)
    expected = hf_to_aria_state_dict(hf.state_dict(), cfg.model.num_layers)
    for ep_rank in (0, 1):  # the two ranks of an EP group of 2: experts [0, 4) and [4, 8)
        model = build_model(cfg.model, device="meta")
        with torch.device("meta"):  # what apply_expert_parallel leaves on this rank
            for block in model.layers:
                block.moe.experts = GroupedExperts(64, 32, ExpertLayout(8, 2, ep_rank))
        model.to_empty(device="cpu")
        model.init_weights(0)
        summary = load_hf_weights(model, directory)
        assert summary.startswith(f"{len(dict(model.named_parameters()))} tensors loaded")
        assert "RoPE base 100,000 (the stage's), the checkpoint was trained at 5,000,000" in summary
        for name, param in model.named_parameters():
            reference = expected["language_model." + name]
            if ".experts." in name:
                reference = reference[4 * ep_rank : 4 * ep_rank + 4]
            assert torch.equal(param, reference), name


def test_dry_run_takes_the_checkpoint_shapes(checkpoint):
    directory, _ = checkpoint
    import subprocess

    result = subprocess.run([sys.executable, str(REPO / "launch" / "pretrain.py"), "--stage", "4", "--dry-run",
                             "--init-from-hf", str(directory), "--world-size", "2", "--ep-size", "2"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    hf_total = sum(p.numel() for p in _hf_model().parameters())
    assert f"  total{hf_total:>39,}" in result.stdout
    assert "RoPE base                          5,000,000" in result.stdout


def test_bad_directories_fail_with_one_line(tmp_path, checkpoint):
    directory, _ = checkpoint
    empty = tmp_path / "empty"
    empty.mkdir()
    result = pretrain_error(["--stage", "4", "--init-from-hf", str(empty), "--dry-run"])
    assert result.strip() == f"error: --init-from-hf {empty}: no config.json (a transformers checkpoint directory is needed)"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((directory / "config.json").read_text())
    result = pretrain_error(["--stage", "4", "--init-from-hf", str(broken), "--train-iters", "1",
                             *map(str, _overrides(tmp_path))])
    assert result.startswith("error: ") and len(result.strip().splitlines()) == 1, result


def pretrain_error(args: list) -> str:
    import subprocess

    result = subprocess.run([sys.executable, str(REPO / "launch" / "pretrain.py"), *args], capture_output=True,
                            text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stderr


def test_the_checkpoint_tokenizer_behaves_as_arias(checkpoint, tmp_path):
    import pickle

    from aria_train.data.errors import DataError
    from aria_train.data.tokenizer import load_tokenizer

    directory, _ = checkpoint
    tok = load_tokenizer(str(directory), "huggingface")
    assert (tok.pad, tok.unk, tok.eod, tok.im_start, tok.im_end, tok.img, tok.fim_prefix, tok.fim_suffix) == tuple(
        range(8))
    text = "a caption <|img|> with <|endoftext|> inside"
    ids = tok.encode(text)
    assert not set(ids) & set(range(8))  # special-token text stays text: only the pipeline places ids
    assert tok.decode(ids) == text and tok.encode_batch([text, "x"]) == [ids, tok.encode("x")]
    assert pickle.loads(pickle.dumps(tok)).encode(text) == ids
    with pytest.raises(DataError, match="no token '<nope>'"):
        tok.token_id("<nope>")
    with pytest.raises(DataError, match="not a directory"):
        load_tokenizer(str(tmp_path / "missing"), "huggingface")
