"""Checkpointer across layouts, in spawned gloo worlds (no data pipeline): the state a checkpoint
written at world 4 / ep 2 (ZeRO-1, async save) loads back EXACTLY at world 2 / ep 1, world 4 /
ep 4 and in a single process, model and optimizer; weights-only loads; DCP writes replicated
tensors once; load errors are one-line UserErrors naming the path."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ckpt_workers as workers  # noqa: E402

from aria_train.checkpoint import layout  # noqa: E402
from aria_train.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint saved at world 4 / ep 2 with async_save, and the state it was taken from."""
    base = tmp_path_factory.mktemp("dist_ckpt")
    root, ref = base / "save", base / "ref"
    ref.mkdir()
    workers.run_world(workers.save_worker, 4, 2, str(root), str(ref), True)
    return base, root, workers.assemble(ref, 4)


def _assert_same_state(expected: dict, got: dict, what: str) -> None:
    assert got["model"].keys() == expected["model"].keys(), what
    for key, value in expected["model"].items():
        assert torch.equal(value, got["model"][key]), f"{what}: model {key}"
    assert got["optim"].keys() == expected["optim"].keys(), what
    for key, value in expected["optim"].items():
        assert torch.equal(value, got["optim"][key]), f"{what}: optimizer {key}"


def test_layout_on_disk(saved):
    _, root, _ = saved
    assert layout.read_latest(root) == 2
    ckpt = root / "iter_0000002"
    assert sorted(p.name for p in root.iterdir()) == ["iter_0000002", "latest"]
    names = {p.name for p in ckpt.iterdir()}
    assert {".metadata", "config.yaml", "metadata.json"} <= names
    meta = json.loads((ckpt / "metadata.json").read_text())
    assert meta["format_version"] == layout.FORMAT_VERSION and meta["iteration"] == 2
    assert (meta["world_size"], meta["ep_size"], meta["rope_base"]) == (4, 2, 100000.0)


def test_replicated_tensors_written_once(saved):
    """Dense weights live on all 4 ranks; DCP deduplicates plain tensors by key, so the data
    files hold about one copy of every tensor (not four)."""
    _, root, ref = saved
    unique = sum(t.numel() * t.element_size() for t in ref["model"].values())
    unique += sum(t.numel() * t.element_size() for t in ref["optim"].values())
    written = sum(p.stat().st_size for p in (root / "iter_0000002").glob("*.distcp"))
    assert unique <= written < 1.25 * unique, (written, unique)


@pytest.mark.parametrize("world,ep", [(2, 1), (4, 4)])
def test_reshard_exact(saved, world, ep):
    base, root, ref = saved
    out, weights_only = base / f"load_w{world}_ep{ep}", base / f"weights_w{world}_ep{ep}"
    out.mkdir()
    weights_only.mkdir()
    workers.run_world(workers.load_worker, world, ep, str(root), str(out), str(weights_only) if world == 2 else "")
    got = workers.assemble(out, world)
    _assert_same_state(ref, got, f"world {world} / ep {ep}")
    assert got["steps"] == ref["steps"] == {2}
    # the loaded state trains on like the original layout (float summation order differs)
    expected = json.loads((base / "ref" / "next_loss.json").read_text())
    loss = json.loads((out / "next_loss.json").read_text())
    assert loss == pytest.approx(expected, rel=1e-5)
    if world == 2:  # --no-load-optim: weights only; fresh moments, step 0, masters = weights
        fresh = workers.assemble(weights_only, world)
        assert fresh["steps"] == {0}
        for key, value in ref["model"].items():
            assert torch.equal(value, fresh["model"][key]), key
        for key, value in fresh["optim"].items():
            name, state = key.rsplit(".", 1)
            if state == "master":
                assert torch.equal(value, ref["optim"][key]), key  # fp32 model == fp32 masters
            else:
                assert not value.any(), key


def test_single_process_load(saved, tmp_path):
    """World 1 without torch.distributed (ReplicatedAdamW) reads the world-4 checkpoint."""
    _, root, ref = saved
    cfg = workers.tiny_run_config(load=str(root))
    groups, model, optimizer = workers.build_parts(cfg)
    parts = workers.training_parts(model, optimizer, with_data=False)
    assert workers.checkpointer(cfg, groups).maybe_resume(parts) == 2
    state = parts.train_state
    assert (state.step, state.consumed_samples) == (2, 8)
    workers.dump_state(model, optimizer, tmp_path / "rank0.pt")
    _assert_same_state(ref, workers.assemble(tmp_path, 1), "world 1")


def _resume_error(load) -> str:
    cfg = workers.tiny_run_config(load=str(load))
    groups, model, optimizer = workers.build_parts(cfg)
    with pytest.raises(UserError) as info:
        workers.checkpointer(cfg, groups).maybe_resume(workers.training_parts(model, optimizer, with_data=False))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_load_errors(saved, tmp_path):
    _, root, _ = saved
    missing = tmp_path / "nothing_here"
    assert str(missing) in _resume_error(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in _resume_error(empty) and "latest" in _resume_error(empty)

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "latest").write_text("7\n")  # names a checkpoint that is not there
    assert "iter_0000007" in _resume_error(broken)
    (broken / "latest").write_text("2\n")
    data = sorted((broken / "iter_0000002").glob("*.distcp"))[-1]
    with open(data, "r+b") as handle:
        handle.truncate(data.stat().st_size // 2)
    message = _resume_error(broken)
    assert "corrupt" in message and str(broken / "iter_0000002") in message
    data.unlink()
    assert "missing" in _resume_error(broken)
    (broken / "iter_0000002" / "metadata.json").unlink()  # what an interrupted save leaves
    message = _resume_error(broken / "iter_0000002")
    assert "incomplete" in message and str(broken / "iter_0000002") in message


def test_model_mismatch_is_user_error(saved):
    _, root, _ = saved
    cfg = workers.tiny_run_config(load=str(root))
    cfg.model.hidden_size, cfg.model.num_heads = 32, 2
    groups, model, optimizer = workers.build_parts(cfg)
    with pytest.raises(UserError) as info:
        workers.checkpointer(cfg, groups).maybe_resume(workers.training_parts(model, optimizer, with_data=False))
    assert "does not fit this model" in str(info.value) and "\n" not in str(info.value)


def test_text_checkpoint_into_multimodal_model(saved):
    """Stage 2 starts from stage 1's checkpoint with --no-load-optim: the decoder's tensors load
    under `language_model.`, modules the checkpoint lacks keep their values."""
    from torch import nn

    from aria_train.optim.build import build_optimizer

    _, root, ref = saved
    cfg = workers.tiny_run_config(load=str(root), load_optim=False)
    groups, decoder, _ = workers.build_parts(cfg)
    model = nn.Module()
    model.language_model = decoder
    model.vision_tower = nn.Linear(3, 5)
    before = model.vision_tower.weight.detach().clone()
    optimizer = build_optimizer(model, cfg.optimizer, groups)
    assert workers.checkpointer(cfg, groups).maybe_resume(workers.training_parts(model, optimizer, with_data=False)) is None
    assert torch.equal(model.vision_tower.weight, before)
    from aria_train.checkpoint import state as ckpt_state

    loaded = ckpt_state.model_state(decoder)
    for key, value in ref["model"].items():
        assert torch.equal(loaded[key], value), key
    # the optimizer's masters follow the loaded weights (ReplicatedAdamW: they are the weights)
    flat = optimizer.sharded_state_dict()
    assert flat["step"] == 0
    head = flat["state"]["language_model.lm_head.weight"]["master"].local
    assert torch.equal(head, ref["model"]["model.lm_head.weight"].view(-1))
