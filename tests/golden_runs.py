"""Reference runs of launch/pretrain.py whose numbers are kept in tests/assets and must not change:

* the golden loss curve: the tiny preset's first 50 steps of stage 1 on CPU, 2 ranks under
  torchrun, expert parallel size 2 (all-to-all dispatch, ZeRO-1 over gloo), every step logged.
  On CPU with one thread per rank every reduction of this run has a fixed order, so the numbers
  repeat bit for bit (tests/test_golden_loss.py compares them with ==);
* the v1 checkpoint: a small 2-rank / ep 2 / ZeRO-1 run saved at step 3 by the code before the
  issue-9 refactor (tests/checkpoint/test_ckpt_v1_compat.py resumes it).

The expected values were produced by the generator scripts in tests/assets/ at the base commit;
they depend on the CPU build of torch and on the Python version (the demo corpus is cut from the
standard library's text), which the golden file records.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

from launch_runs import REPO, pretrain, step_records

ASSETS = REPO / "tests" / "assets"
GOLDEN_FILE = ASSETS / "golden" / "tiny_stage1_50.json"
GOLDEN_FIELDS = ("loss", "lm_loss", "balance_loss", "z_loss", "grad_norm")
GOLDEN_NPROC = 2
GOLDEN_ARGS = ["--stage", "1", "--ep-size", "2", "--train-iters", "50", "--log-interval", "1",
               "--eval-interval", "0", "--set", "checkpoint.save=", "--log-dir", "golden_run"]

CKPT_V1_DIR = ASSETS / "ckpt_v1"
CKPT_V1_NPROC = 2
# A model small enough that the checkpoint (weights + fp32 masters + two moments) stays near 1 MB.
CKPT_V1_ARGS = ["--stage", "1", "--ep-size", "2", "--seq-length", "32", "--micro-batch-size", "2",
                "--global-batch-size", "4", "--eval-interval", "0", "--log-interval", "1",
                "--set", "model.hidden_size=32", "--set", "model.num_heads=2", "--set", "model.head_dim=16",
                "--set", "model.num_layers=1", "--set", "model.moe.num_experts=8", "--set", "model.moe.top_k=2",
                "--set", "model.moe.balance_group_size=4", "--set", "model.moe.expert_ffn_size=16"]
CKPT_V1_SAVED_STEP = 3


def environment() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__}


def same_environment(recorded: dict) -> bool:
    """Same torch build and Python minor version as the run that recorded the numbers."""
    here = environment()
    return (recorded["torch"] == here["torch"]
            and recorded["python"].split(".")[:2] == here["python"].split(".")[:2])


def golden_run(workdir: Path, extra_args: list = ()) -> list[dict]:
    """The golden configuration (plus `extra_args`), run in `workdir`; per-step records."""
    pretrain(GOLDEN_NPROC, GOLDEN_ARGS + list(extra_args), workdir, timeout=600)
    records = step_records(Path(workdir) / "golden_run")
    return [{"step": step, **{name: records[step][name] for name in GOLDEN_FIELDS}} for step in sorted(records)]


def read_golden() -> dict:
    return json.loads(GOLDEN_FILE.read_text())


def golden_mismatches(records: list[dict], golden_steps: list[dict]) -> list[str]:
    """Every (step, field) whose value is not bit-identical to the golden one."""
    if [r["step"] for r in records] != [g["step"] for g in golden_steps]:
        return [f"steps {[r['step'] for r in records]} != golden steps {[g['step'] for g in golden_steps]}"]
    out = []
    for record, gold in zip(records, golden_steps):
        for name in GOLDEN_FIELDS:
            if record[name] != gold[name]:  # exact: bit for bit
                out.append(f"step {gold['step']} {name}: {record[name]!r} != golden {gold[name]!r}")
    return out


def main_golden() -> None:
    """Regenerates GOLDEN_FILE (only when a change of the numbers is intended)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aria-golden-") as workdir:
        steps = golden_run(Path(workdir))
    payload = {
        "description": "tiny preset, stage 1, first 50 steps on CPU; see tests/golden_runs.py",
        "command": f"torchrun --nproc_per_node={GOLDEN_NPROC} launch/pretrain.py " + " ".join(GOLDEN_ARGS),
        "generated_by": "python tests/assets/make_golden.py",
        **environment(),
        "steps": steps,
    }
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {GOLDEN_FILE}: step 1 loss {steps[0]['loss']!r}, step 50 loss {steps[-1]['loss']!r}")


def main_ckpt_v1() -> None:
    """Regenerates CKPT_V1_DIR and prints the uninterrupted run's next-step record."""
    import shutil
    import tempfile

    from aria_train.checkpoint import layout

    with tempfile.TemporaryDirectory(prefix="aria-ckpt-v1-") as workdir:
        workdir = Path(workdir)
        args = CKPT_V1_ARGS + ["--train-iters", str(CKPT_V1_SAVED_STEP + 1), "--save", "ckpt",
                               "--save-interval", str(CKPT_V1_SAVED_STEP), "--log-dir", "run"]
        pretrain(CKPT_V1_NPROC, args, workdir, timeout=600)
        records = step_records(workdir / "run")
        saved = layout.final_dir(workdir / "ckpt", CKPT_V1_SAVED_STEP)
        if CKPT_V1_DIR.exists():
            shutil.rmtree(CKPT_V1_DIR)
        shutil.copytree(saved, CKPT_V1_DIR / saved.name)
        layout.write_latest(CKPT_V1_DIR, CKPT_V1_SAVED_STEP)
    nxt = records[CKPT_V1_SAVED_STEP + 1]
    print(f"wrote {CKPT_V1_DIR}; the uninterrupted run's step {CKPT_V1_SAVED_STEP + 1}: "
          + ", ".join(f"{name}={nxt[name]!r}" for name in GOLDEN_FIELDS))


if __name__ == "__main__":
    sys.exit("run tests/assets/make_golden.py or tests/assets/make_ckpt_v1.py")
