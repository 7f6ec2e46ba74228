"""Train -> export -> evaluate. Runs trained at world 2 / ep 2 through launch/run.py (stage 1 for
5 steps, then stage 2 from it) export with tools/convert_hf.py --to-hf --checkpoint to transformers
directories that AutoModelForCausalLM + AutoTokenizer (stage 1) and AriaForConditionalGeneration
(stage 2) load, and give our model's logits (fp32, both models rebuilt from the checkpoint)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from aria_train.data.stdlib_text import stdlib_documents  # noqa: E402
from aria_train.data.tokenizer import load_tokenizer  # noqa: E402
from aria_train.eval.trained_model import load_trained_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--seq-length", "32", "--set", "train.micro_batch_size=2", "--global-batch-size", "4",
        "--set", "train.eval_interval=0", "--set", "data.synthetic_samples=64", "--ep-size", "2"]
TOL = 1e-5


def _run(cmd, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, *map(str, cmd)], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("export")
    launch = [ROOT / "launch/run.py", "--standalone", "--nproc_per_node=2", ROOT / "launch/pretrain.py"]
    _run([*launch, "--stage", "1", *TINY, "--train-iters", "5", "--run-name", "s1"], work)
    _run([*launch, "--stage", "2", *TINY, "--train-iters", "2", "--run-name", "s2",
          "--set", "checkpoint.init_from=runs/s1"], work)
    return work


def _export(work, checkpoint, output):
    result = _run([ROOT / "tools/convert_hf.py", "--to-hf", "--checkpoint", checkpoint, "--output", output], work)
    return result.stdout


def test_stage1_export_loads_in_transformers_with_our_logits(work):
    out = _export(work, "runs/s1", "hf_s1")
    assert out.startswith("wrote hf_s1: AriaTextForCausalLM from runs/s1/checkpoints/iter_0000005 "
                          "(stage 1, iteration 5)")
    meta = json.loads((work / "runs/s1/checkpoints/iter_0000005/metadata.json").read_text())
    assert (meta["world_size"], meta["ep_size"]) == (2, 2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(work / "hf_s1").eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(work / "hf_s1")
    assert type(hf).__name__ == "AriaTextForCausalLM" and hf.dtype == torch.float32
    ours, cfg = load_trained_model(str(work / "runs/s1"))
    texts = [doc[:200] for doc in stdlib_documents(max_chars=20_000)[:4]]
    encoded = [hf_tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    assert encoded == [load_tokenizer("").encode(text) for text in texts]
    length = min(len(ids) for ids in encoded)
    tokens = torch.tensor([ids[:length] for ids in encoded])
    with torch.no_grad():
        theirs = hf(input_ids=tokens).logits
        mine = ours.logits(ours(tokens).hidden)
    assert theirs.shape == mine.shape == (4, length, cfg.model.vocab_size)
    assert (theirs - mine).abs().max().item() < TOL
    assert hf.config.eos_token_id == load_tokenizer("").eod and hf.config.bos_token_id is None


def test_stage2_export_loads_as_aria_for_conditional_generation(work):
    from aria_train.data.multimodal import ImageConfig, MultimodalMixture, ShardSource
    from aria_train.model.vision import pack_images

    out = _export(work, "runs/s2/checkpoints/iter_0000002", "hf_s2")
    assert out.startswith("wrote hf_s2: AriaForConditionalGeneration from runs/s2/checkpoints/iter_0000002 (stage 2")
    hf = transformers.AriaForConditionalGeneration.from_pretrained(work / "hf_s2").eval()
    ours, cfg = load_trained_model(str(work / "runs/s2"))
    image_cfg = ImageConfig.from_projector(cfg.projector, patch_size=cfg.vision.patch_size, mode=cfg.data.image_mode)
    shards = work / "data_cache" / "synthetic_mixed_64"
    mixture = MultimodalMixture([(1.0, ShardSource(str(shards)))], 48, 0, tokenizer=load_tokenizer(""),
                                image_cfg=image_cfg)
    seq = mixture.next_sequence()
    assert seq.crops, "the synthetic sample has images"
    tokens = torch.as_tensor(seq.tokens[:-1]).unsqueeze(0)
    side = image_cfg.crop_size  # transformers counts the queries of a crop from its padded size
    pixels = torch.zeros(len(seq.crops), 3, side, side)
    mask = torch.zeros(len(seq.crops), side, side, dtype=torch.long)
    for i, crop in enumerate(seq.crops):
        pixels[i, :, : crop.shape[1], : crop.shape[2]] = crop
        mask[i, : crop.shape[1], : crop.shape[2]] = 1
    patches, grid = pack_images(seq.crops, cfg.vision.patch_size)
    with torch.no_grad():
        theirs = hf(input_ids=tokens, pixel_values=pixels, pixel_mask=mask).logits
        mine = ours.logits(ours(tokens, patches=patches, grid=grid).hidden)
    assert (theirs - mine).abs().max().item() < TOL
