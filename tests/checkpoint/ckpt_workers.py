"""Functions the checkpoint tests run on every rank of a spawned gloo world, and for torchrun runs.

Test modules run under pytest's importlib mode, so spawned children cannot import them; every
function a child runs lives here (the tests put this directory on sys.path, which spawn passes on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from spawn_world import free_port, run_world  # noqa: E402,F401  (re-exported for the tests)


# ---- a tiny run without the data pipeline ---------------------------------------------------
def tiny_run_config(save: str = "", load: str = "", ep_size: int = 1, async_save: bool = False,
                    load_optim: bool = True, keep_last: int = 3):
    from aria_train.train.run_config import build_config

    overrides = {
        "parallel.ep_size": ep_size,
        "checkpoint.save": save,
        "checkpoint.load": load,
        "checkpoint.async_save": async_save,
        "checkpoint.load_optim": load_optim,
        "checkpoint.keep_last": keep_last,
        "model.num_layers": 1,
        "model.moe.num_experts": 8,
        "model.moe.top_k": 2,
        "model.moe.balance_group_size": 4,
    }
    return build_config(1, overrides=overrides)


def build_parts(cfg):
    """Model (EP applied, deterministic init) and optimizer exactly as launch/pretrain.py does."""
    from aria_train.model.decoder import build_model
    from aria_train.optim.build import build_optimizer
    from aria_train.parallel.expert_parallel import apply_expert_parallel
    from aria_train.parallel.groups import init_parallel_groups

    groups = init_parallel_groups(cfg.parallel.ep_size)
    model = build_model(cfg.model, device="meta")
    apply_expert_parallel(model, groups)
    model.to_empty(device="cpu")
    model.init_weights(cfg.train.seed)
    optimizer = build_optimizer(model, cfg.optimizer, groups, bucket_size_mb=0.02)
    return groups, model, optimizer


def train_steps(model, optimizer, groups, steps: int, first_step: int = 0) -> list[float]:
    """Optimizer steps on a fixed synthetic global batch (each rank its slice); returns losses."""
    losses = []
    vocab = model.cfg.vocab_size
    for step in range(first_step, first_step + steps):
        g = torch.Generator().manual_seed(100 + step)
        tokens = torch.randint(0, vocab, (4, 16), generator=g)  # global batch, split over ranks
        per = tokens.shape[0] // groups.world_size
        mine = tokens[groups.rank * per:(groups.rank + 1) * per]
        optimizer.zero_grad()
        optimizer.begin_microbatch(is_last=True)
        out = model(mine)
        logits = model.logits(out.hidden).float()
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), mine[:, 1:].flatten(), reduction="sum")
        loss = ce / (tokens.shape[0] * 15) + (out.balance_loss + out.z_loss) / groups.world_size
        loss.backward()
        optimizer.finish_grad_sync()
        optimizer.step(1e-2)
        total = loss.detach().double().clone()
        if dist.is_initialized():
            dist.all_reduce(total)
        losses.append(total.item())
    return losses


def dump_state(model, optimizer, path: Path) -> None:
    """This rank's model tensors by global key and optimizer pieces by global offset."""
    from aria_train.checkpoint import state as ckpt_state

    flat = optimizer.sharded_state_dict()
    pieces = {}
    for name, per_state in flat["state"].items():
        for key, piece in per_state.items():
            pieces[f"{name}.{key}"] = (piece.global_numel, piece.offset, piece.local.detach().clone())
    torch.save({
        "model": {k: v.detach().clone() for k, v in ckpt_state.model_state(model).items()},
        "optim": pieces,
        "step": flat["step"],
    }, path)


def assemble(dump_dir: Path, world: int) -> dict:
    """Global model tensors and optimizer tensors from every rank's dump."""
    model, optim, steps = {}, {}, set()
    for rank in range(world):
        data = torch.load(Path(dump_dir) / f"rank{rank}.pt")
        steps.add(data["step"])
        for key, value in data["model"].items():
            if key in model:
                assert torch.equal(model[key], value), f"replicas of {key} differ"
            model[key] = value
        for key, (numel, offset, local) in data["optim"].items():
            full = optim.setdefault(key, torch.full((numel,), float("nan")))
            full[offset:offset + local.numel()] = local
    for key, full in optim.items():
        assert not torch.isnan(full).any(), f"optimizer state {key} not fully covered"
    return {"model": model, "optim": optim, "steps": steps}


def training_parts(model, optimizer, step: int = 0, with_data: bool = True):
    """What the trainer hands the checkpointer: the model, the optimizer, the train state at
    `step` (4 samples a step) and a stand-in data iterator."""
    from aria_train.checkpoint import TrainingParts
    from aria_train.train.state import TrainState

    batches = None
    if with_data:
        batches = SimpleNamespace(consumed=step * 4)
        batches.state_dict = lambda: {"consumed_samples": batches.consumed}
        batches.load_state_dict = lambda s: setattr(batches, "consumed", s["consumed_samples"])
    return TrainingParts(model, optimizer, TrainState(step=step, consumed_samples=step * 4), batches)


def checkpointer(cfg, groups):
    from aria_train.checkpoint import Checkpointer
    from aria_train.train.run_config import describe_run

    return Checkpointer(cfg.checkpoint, groups, describe_run(cfg))


def save_worker(rank: int, world: int, ep: int, root: str, dump_dir: str, async_save: bool) -> None:
    """2 steps, dump the state, save iter 2, one more step, finalize."""
    cfg = tiny_run_config(save=root, ep_size=ep, async_save=async_save)
    groups, model, optimizer = build_parts(cfg)
    train_steps(model, optimizer, groups, 2)
    dump_state(model, optimizer, Path(dump_dir) / f"rank{rank}.pt")
    saver = checkpointer(cfg, groups)
    saver.save(training_parts(model, optimizer, 2))
    # the step after the checkpoint in the original layout (with async_save it runs while the
    # background thread writes, changing the live state the checkpoint was taken from)
    losses = train_steps(model, optimizer, groups, 1, first_step=2)
    saver.finalize()
    if rank == 0:
        (Path(dump_dir) / "next_loss.json").write_text(json.dumps(losses))


def load_worker(rank: int, world: int, ep: int, load: str, dump_dir: str, weights_only_dir: str = "") -> None:
    """Loads `load` into a fresh model + optimizer at this layout and dumps the state; then one
    more step. With weights_only_dir, first also a --no-load-optim load, dumped there."""
    if weights_only_dir:
        cfg = tiny_run_config(load=load, ep_size=ep, load_optim=False)
        groups, model, optimizer = build_parts(cfg)
        parts = training_parts(model, optimizer)
        assert checkpointer(cfg, groups).maybe_resume(parts) is None
        assert parts.data.consumed == 0
        dump_state(model, optimizer, Path(weights_only_dir) / f"rank{rank}.pt")

    cfg = tiny_run_config(load=load, ep_size=ep)
    groups, model, optimizer = build_parts(cfg)
    parts = training_parts(model, optimizer)
    assert checkpointer(cfg, groups).maybe_resume(parts) == 2
    state = parts.train_state
    assert (state.step, state.consumed_samples) == (2, 8), state
    assert parts.data.consumed == 8
    dump_state(model, optimizer, Path(dump_dir) / f"rank{rank}.pt")
    losses = train_steps(model, optimizer, groups, 1, first_step=2)  # the loaded state trains on
    if rank == 0:
        (Path(dump_dir) / "next_loss.json").write_text(json.dumps(losses))


# ---- torchrun runs of launch/pretrain.py ----------------------------------------------------
def pretrain(nproc: int, args: list, workdir: Path, env_extra: dict | None = None, timeout: int = 180,
             script: Path = REPO / "launch" / "pretrain.py"):
    """Runs launch/pretrain.py (or a driver wrapping it) under torchrun; returns the CompletedProcess."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
           str(script), *map(str, args)]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)

