"""Run directories: names, placeholders, refusing another run's checkpoints and metrics, the write
probe, the free-space check, truncating metrics after a resume, and run directories accepted
wherever a checkpoint is named."""

import json
import os
import time

import pytest

from aria_train.checkpoint import layout
from aria_train.checkpoint.resume import holds_checkpoint, same_dir
from aria_train.errors import UserError
from aria_train.train import run_dir
from aria_train.train.config import LoggingConfig
from aria_train.train.metrics import MetricsLogger
from aria_train.train.run_config import build_config


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return build_config(1)


def _fake_checkpoint(root, iteration):
    """A directory `holds_checkpoint` recognises: `latest` and a complete iter_N."""
    final = layout.final_dir(root, iteration)
    final.mkdir(parents=True)
    (final / layout.DCP_METADATA_FILE).write_bytes(b"x")
    (final / layout.METADATA_FILE).write_text(json.dumps({"format": layout.FORMAT_NAME, "format_version": 1}))
    layout.write_latest(root, iteration)


def test_default_name_is_the_stage_and_start_time(cfg):
    now = time.mktime((2025, 3, 4, 5, 6, 7, 0, 0, -1))
    assert run_dir.default_run_name(2, now) == "stage2-20250304-050607"
    paths = run_dir.resolve_paths(cfg)
    assert paths.run_dir.startswith("runs/stage1-") and len(paths.run_dir) == len("runs/stage1-20250304-050607")
    assert paths.log_dir == paths.run_dir and paths.save == f"{paths.run_dir}/checkpoints"


def test_a_taken_default_name_gets_a_suffix(cfg, monkeypatch):
    monkeypatch.setattr(run_dir, "default_run_name", lambda stage: "stage1-20250304-050607")
    (run_dir.Path("runs") / "stage1-20250304-050607").mkdir(parents=True)
    (run_dir.Path("runs") / "stage1-20250304-050607-2").mkdir()
    assert str(run_dir.choose_run_dir(cfg)) == "runs/stage1-20250304-050607-3"


def test_named_runs_and_explicit_paths(cfg):
    cfg.run.name, cfg.run.root = "exp/a", "out"
    paths = run_dir.resolve_paths(cfg)
    assert (paths.run_dir, paths.log_dir, paths.save) == ("out/exp/a", "out/exp/a", "out/exp/a/checkpoints")
    cfg.logging.log_dir, cfg.checkpoint.save = "logs", ""
    paths = run_dir.resolve_paths(cfg)
    assert (paths.run_dir, paths.log_dir, paths.save) == (None, "logs", "")
    assert paths.describe() == "no checkpoints (checkpoint.save is empty), metrics in logs/metrics.jsonl"


def test_another_runs_checkpoints_are_refused_unless_resumed_or_overwritten(cfg):
    cfg.run.name = "r"
    paths = run_dir.resolve_paths(cfg)
    _fake_checkpoint(paths.save, 40)
    with pytest.raises(UserError) as error:
        run_dir.check_paths(paths, cfg)
    assert str(error.value) == (
        "checkpoint.save=runs/r/checkpoints already holds another run's checkpoints (latest: iteration 40); "
        "resume it with --load runs/r/checkpoints, choose another --run-name or --save, or pass --overwrite")
    for load in ("runs/r", "runs/r/checkpoints", "runs/r/checkpoints/iter_0000040", "runs/r/iter_0000040"):
        cfg.checkpoint.load = load
        assert same_dir(load, paths.save)
        run_dir.check_paths(paths, cfg)  # resuming it
    cfg.checkpoint.load = ""
    cfg.run.overwrite = True
    run_dir.check_paths(paths, cfg)


def test_another_runs_metrics_are_refused(cfg):
    cfg.run.name, cfg.checkpoint.save = "m", ""
    paths = run_dir.resolve_paths(cfg)
    os.makedirs(paths.log_dir)
    (run_dir.Path(paths.log_dir) / "metrics.jsonl").write_text('{"step": 1, "loss": 7.0}\n')
    with pytest.raises(UserError, match=r"^logging.log_dir=runs/m already holds another run's metrics.jsonl; "):
        run_dir.check_paths(paths, cfg)
    _fake_checkpoint(run_dir.Path("runs/other/checkpoints"), 5)
    cfg.checkpoint.load = "runs/other"  # a resumed run keeps its records up to the step it resumes
    run_dir.check_paths(paths, cfg)


def test_probe_leaves_nothing_behind_and_names_an_unwritable_directory(tmp_path):
    run_dir.probe_writable(tmp_path / "a" / "b" / "c", "checkpoint.save")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as error:
        run_dir.probe_writable(tmp_path / "file" / "ckpt", "checkpoint.save")
    assert str(error.value) == f"checkpoint.save={tmp_path}/file/ckpt is not writable: Not a directory"


def test_free_space_is_compared_with_one_checkpoint(tmp_path):
    free = run_dir.shutil.disk_usage(tmp_path).free
    assert run_dir.free_space_error(str(tmp_path / "new" / "ckpt"), 1000) is None
    message = run_dir.free_space_error(str(tmp_path / "ckpt"), free * 4)
    assert message.startswith(f"checkpoint.save={tmp_path}/ckpt: ")
    assert "free on its filesystem, one checkpoint needs" in message
    assert run_dir.format_bytes(6_198_272) == "5.9 MiB" and run_dir.format_bytes(512) == "512 B"


def test_records_after_the_resume_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 10 - s}) for s in (1, 2, 3, 4)] + ['{"step": 5, "lo']  # cut by a kill
    path.write_text("\n".join(lines) + "\n")
    assert run_dir.truncate_records(path, 2) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert run_dir.truncate_records(path, 2) == 0


def test_metrics_logger_start_truncates_and_appends(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    logger = MetricsLogger(LoggingConfig(log_dir=str(tmp_path)), rank=0, run_config={"stage": 1})
    logger.start(2)
    logger.log({"step": 3, "loss": 1.0})
    logger.close()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert f"{tmp_path}/metrics.jsonl: dropped 1 records after step 2" in capsys.readouterr().out


def test_run_directories_stand_for_their_checkpoints(tmp_path):
    _fake_checkpoint(tmp_path / "run" / "checkpoints", 7)
    assert holds_checkpoint(str(tmp_path / "run"))
    assert layout.resolve_load_dir(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "iter_0000007"
    nested = tmp_path / "run" / "checkpoints" / "iter_0000007"
    assert layout.resolve_load_dir(tmp_path / "run" / "iter_0000007") == nested
    with pytest.raises(UserError) as error:
        layout.resolve_load_dir(tmp_path / "none", "checkpoint.init_from")
    assert str(error.value) == (f"checkpoint.init_from={tmp_path}/none: no such directory (the run this stage "
                                "starts from: --set checkpoint.init_from=runs/<run name>)")


def test_the_checkpoint_a_run_starts_from_is_checked_first(cfg):
    cfg.stage, cfg.checkpoint.init_from, cfg.run.name = 2, "runs/stage1", "s2"
    paths = run_dir.resolve_paths(cfg)
    with pytest.raises(UserError) as error:
        run_dir.check_paths(paths, cfg)
    assert str(error.value) == ("checkpoint.init_from=runs/stage1: no such directory (the run this stage starts "
                                "from: --set checkpoint.init_from=runs/<run name>)")
    _fake_checkpoint(run_dir.Path("runs/stage1/checkpoints"), 3)
    run_dir.check_paths(paths, cfg)
    cfg.checkpoint.load = "runs/s2"  # a resumed stage continues its own run: it must exist
    with pytest.raises(UserError, match=r"^checkpoint.load=runs/s2: no such directory$"):
        run_dir.check_paths(paths, cfg)


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_the_aria_25b_recipes_name_their_runs_and_chain(cfg, stage):
    """Each recipe writes under runs/aria-25b/stageN (its own run) and stages 2-4 start from the
    previous stage's run, not from a shared default directory."""
    recipe = build_config(stage, None, "aria-25b", [])
    paths = run_dir.resolve_paths(recipe)
    assert paths.run_dir == f"runs/aria-25b/stage{stage}"
    assert (paths.save, paths.log_dir) == (f"runs/aria-25b/stage{stage}/checkpoints", f"runs/aria-25b/stage{stage}")
    assert recipe.checkpoint.init_from == ("" if stage == 1 else f"runs/aria-25b/stage{stage - 1}")


@pytest.mark.parametrize("model", ["aria-25b-finetune", "aria-25b-finetune-1gpu"])
def test_the_finetune_recipes_name_their_runs(cfg, model):
    paths = run_dir.resolve_paths(build_config(4, None, model, []))
    assert (paths.run_dir, paths.save) == (f"runs/{model}", f"runs/{model}/checkpoints")
