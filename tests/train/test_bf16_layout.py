"""train.precision: bf16, Megatron's mixed-precision layout (issue 15): bf16 parameters, fp32 main
gradients accumulated over micro-batches and reduce-scattered, fp32 masters and moments in the
ZeRO-1 shards, fp32 masters in checkpoints. Both optimizers; the loss follows the fp32 run, the
bytes per rank are the accounting's, and a run resumes bit for bit."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bf16_workers  # noqa: E402
from launch_runs import pretrain, step_records  # noqa: E402
from spawn_world import run_world  # noqa: E402

from aria_train.model.config import ModelConfig  # noqa: E402
from aria_train.model.decoder import build_model  # noqa: E402
from aria_train.moe.config import MoEConfig  # noqa: E402
from aria_train.optim.config import OptimizerConfig  # noqa: E402
from aria_train.optim.replicated import ReplicatedAdamW  # noqa: E402
from aria_train.optim.zero1 import Zero1Optimizer  # noqa: E402
from aria_train.parallel.groups import ParallelGroups  # noqa: E402

RUN = ["--stage", "1", "--log-interval", "1", "--eval-interval", "0", "--set", "checkpoint.save="]


def _run(tmp_path, name, nproc, *extra):
    args = RUN + ["--set", f"data.cache_dir={tmp_path / 'data'}", "--log-dir", name, *extra]
    result = pretrain(nproc, args, tmp_path, timeout=600)
    return result, step_records(tmp_path / name)


@pytest.mark.parametrize("layout", ["zero1-ep2-2ranks", "replicated-1process"])
def test_bf16_loss_follows_the_fp32_run_over_20_steps(tmp_path, layout):
    nproc, extra = (2, ["--ep-size", "2"]) if layout.startswith("zero1") else (0, [])
    runs = {}
    for precision in ("fp32", "bf16"):
        result, runs[precision] = _run(tmp_path, precision, nproc, "--train-iters", "20",
                                       "--set", f"train.precision={precision}", *extra)
        assert f"precision {precision}" in result.stdout
    worst = max(abs(runs["bf16"][s]["loss"] / runs["fp32"][s]["loss"] - 1) for s in range(1, 21))
    print(f"[{layout}] loss: fp32 {runs['fp32'][20]['loss']:.4f} bf16 {runs['bf16'][20]['loss']:.4f} at step 20; "
          f"largest relative difference over 20 steps {worst:.2e}")
    assert worst <= 2e-2
    assert runs["bf16"][20]["loss"] < runs["bf16"][1]["loss"] - 0.5  # it learns


def test_zero1_bytes_per_rank_match_the_accounting(tmp_path):
    run_world(bf16_workers.bytes_worker, 2, str(tmp_path), 2)
    for rank in range(2):
        report = json.loads((tmp_path / f"bytes_{rank}.json").read_text())
        for name, measured, accounted in zip(("weights", "gradients", "optimizer"), report["measured"],
                                             report["accounted"]):
            print(f"rank {rank} {name}: measured {measured} B, accounted {accounted:.0f} B")
            assert abs(measured / accounted - 1) <= 0.05, name


def test_replicated_bytes_match_the_accounting():
    report = bf16_workers.measured_and_accounted(ep_size=1, zero1=False)
    for measured, accounted in zip(report["measured"], report["accounted"]):
        assert abs(measured / accounted - 1) <= 0.05, (measured, accounted)


def test_bf16_run_resumes_bit_for_bit(tmp_path):
    bf16 = ["--set", "train.precision=bf16", "--ep-size", "2", "--seq-length", "32",
            "--set", "train.micro_batch_size=2", "--global-batch-size", "8"]
    _, straight = _run(tmp_path, "straight", 2, "--train-iters", "8", *bf16)
    save = ["--train-iters", "8", "--set", f"checkpoint.save={tmp_path / 'ckpt'}", "--save-interval", "4"]
    _run(tmp_path, "first", 2, *save, "--exit-interval", "4", *bf16)
    result, resumed = _run(tmp_path, "resumed", 2, *save, "--load", str(tmp_path / "ckpt"), *bf16)
    assert "resumed from" in result.stdout and sorted(resumed) == [5, 6, 7, 8]
    for step in resumed:
        for key in ("loss", "grad_norm", "lr"):
            assert resumed[step][key] == straight[step][key], (step, key)
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(tmp_path / "ckpt" / "iter_0000004")).read_metadata()
    dtypes = {key: md.properties.dtype for key, md in metadata.state_dict_metadata.items()
              if hasattr(md, "properties")}
    assert dtypes["model.embed_tokens.weight"] == torch.bfloat16
    assert dtypes["optim.embed_tokens.weight.master"] == torch.float32  # the masters, not the rounded weights


def _tiny():
    moe = MoEConfig(num_experts=4, top_k=2, expert_ffn_size=8, balance_group_size=2)
    return build_model(ModelConfig(vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, head_dim=8, moe=moe),
                       seed=1)


@pytest.mark.parametrize("kind", ["replicated", "zero1"])
def test_masters_are_the_fp32_values_and_gradients_accumulate_in_fp32(kind):
    model = _tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt_cfg = OptimizerConfig(lr=1e-2, clip_grad=0.0)
    opt = (ReplicatedAdamW(model, opt_cfg, param_dtype=torch.bfloat16) if kind == "replicated"
           else Zero1Optimizer(model, opt_cfg, ParallelGroups(), param_dtype=torch.bfloat16))
    state = opt.sharded_state_dict()["state"]
    for name, param in model.named_parameters():
        assert param.dtype == torch.bfloat16
        master = state[name]["master"].local
        assert master.dtype == torch.float32 and torch.equal(master, before[name].reshape(-1))
    # two micro-batches: the main gradient is the fp32 sum of the two bf16 gradients
    tokens = [torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    grads = []
    opt.zero_grad()
    for index, batch in enumerate(tokens):
        opt.begin_microbatch(is_last=index == 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
            loss = model.logits(out.hidden).float().logsumexp(-1).mean()
        grads.append(torch.autograd.grad(loss, model.embed_tokens.weight, retain_graph=True)[0].float())
        loss.backward()
        assert model.embed_tokens.weight.grad is None  # moved into the fp32 main gradient
    opt.finish_grad_sync()
    if kind == "replicated":
        embed_index = [i for i, info in enumerate(opt.infos) if info.name == "embed_tokens.weight"][0]
        main = opt.main_grads[embed_index]
    else:
        main = opt._grad_view(*opt._bucket_of[id(model.embed_tokens.weight)])
    assert main.dtype == torch.float32
    torch.testing.assert_close(main, grads[0] + grads[1])
    opt.step(1e-2)
    state = opt.sharded_state_dict()["state"]
    for name, param in model.named_parameters():  # the parameters are the masters, rounded
        master = state[name]["master"].local
        assert torch.equal(param.detach().reshape(-1), master.to(torch.bfloat16))
        assert not torch.equal(master, before[name].reshape(-1))
    opt.close()
