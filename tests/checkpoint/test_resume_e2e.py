"""End to end through launch/pretrain.py under torchrun (world 2, gloo, tiny sizes):

* exact resume: 20 steps straight vs 10 steps + stop (--exit-interval, async save) + resume +
  10 steps give bit-identical losses, learning rates and gradient norms at every step;
* a run SIGKILLed in the middle of writing a checkpoint leaves `latest` on the previous complete
  one, and resuming from it continues bit-identically (and cleans the leftover up);
* a missing --load directory is a one-line error.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ckpt_workers as workers  # noqa: E402

from aria_train.checkpoint import layout  # noqa: E402


def _args(base: Path, log: str, *extra) -> list:
    return ["--stage", "1", "--set", "train.micro_batch_size=2", "--global-batch-size", "4",
            "--seq-length", "32", "--log-interval", "1", "--set", "train.eval_interval=0",
            "--set", f"data.cache_dir={base / 'data_cache'}", "--log-dir", str(base / log), *extra]


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four runs: straight 20 steps; 10 steps + stop; resume to 20, SIGKILLed while writing the
    step-20 checkpoint (after the step-15 one completed); resume from there to 20."""
    base = tmp_path_factory.mktemp("resume_e2e")
    out = {"base": base}
    out["straight"] = _ok(workers.pretrain(2, _args(base, "straight", "--train-iters", "20"), base))
    save = ["--train-iters", "20", "--save", base / "save", "--save-interval", "5"]
    out["stop"] = _ok(workers.pretrain(
        2, _args(base, "stop", *save, "--set", "checkpoint.async_save=true", "--exit-interval", "10"), base))
    out["stop_latest"] = layout.read_latest(base / "save")
    out["resume"] = workers.pretrain(2, _args(base, "resume", *save, "--load", base / "save"), base,
                                     env_extra={"ARIA_TEST_FAULT": "ckpt-kill:20"},
                                     script=workers.REPO / "tests" / "fault_driver.py")
    out["after_kill_listing"] = sorted(p.name for p in (base / "save").iterdir())
    out["after_kill_partial"] = sorted(p.name for p in layout.partial_dir(base / "save", 20).iterdir())
    out["after_kill_latest"] = layout.read_latest(base / "save")
    out["kill_resume"] = _ok(workers.pretrain(2, _args(base, "kill_resume", *save, "--load", base / "save"), base))
    return out


def _metrics(base: Path, log: str) -> dict:
    import json

    records = {}
    for line in (base / log / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            records[record["step"]] = (record["loss"], record["lr"], record["grad_norm"], record["consumed_samples"])
    return records


def test_exact_resume_after_stop(runs):
    base = runs["base"]
    straight = _metrics(base, "straight")
    assert sorted(straight) == list(range(1, 21))
    stop, resume = _metrics(base, "stop"), _metrics(base, "resume")
    assert sorted(stop) == list(range(1, 11)) and runs["stop_latest"] == 10
    assert "resumed from" in runs["resume"].stdout and "iter_0000010" in runs["resume"].stdout
    assert sorted(resume) == list(range(11, 21))
    for step in range(1, 21):  # bit for bit: loss, lr, grad norm, consumed samples
        assert (stop if step <= 10 else resume)[step] == straight[step], step


def test_kill_mid_save_keeps_previous_latest(runs):
    base = runs["base"]
    assert runs["resume"].returncode != 0  # SIGKILLed while writing the step-20 checkpoint
    assert runs["after_kill_latest"] == 15
    assert "iter_0000020" not in runs["after_kill_listing"]
    assert "iter_0000020.partial" in runs["after_kill_listing"]
    assert any(name.endswith(".distcp") for name in runs["after_kill_partial"])  # data was being written
    assert layout.DCP_METADATA_FILE not in runs["after_kill_partial"]

    straight, resumed = _metrics(base, "straight"), _metrics(base, "kill_resume")
    assert "iter_0000015" in runs["kill_resume"].stdout
    assert sorted(resumed) == list(range(16, 21))
    for step in resumed:
        assert resumed[step] == straight[step], step
    assert layout.read_latest(base / "save") == 20
    # keep_last 3; the interrupted .partial is gone
    assert sorted(p.name for p in (base / "save").iterdir()) == [
        "iter_0000010", "iter_0000015", "iter_0000020", "latest"]


def test_missing_load_dir_is_one_line_error(runs, capsys, monkeypatch):
    import importlib.util

    base = runs["base"]
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("pretrain_cli", workers.REPO / "launch" / "pretrain.py")
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    missing = base / "no_such_checkpoint"
    assert pretrain.main(_args(base, "missing", "--train-iters", "2", "--load", str(missing))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(missing) in err[0], err
