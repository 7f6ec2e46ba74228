"""The SLURM templates: valid bash, the exact launch line (torchrun through launch/run.py) for 2
nodes x 8 GPUs, and the job-chaining decision (run the real scripts with stand-ins for
srun/scontrol/sbatch)."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from slurm_templates import SLURM_DIR, dry_run_job, expand_hostlist, render_sbatch  # noqa: E402

ROOT = SLURM_DIR.parents[1]
SCRIPTS = sorted(SLURM_DIR.glob("*.sbatch")) + sorted(SLURM_DIR.glob("*.sh"))


def test_every_template_and_script_is_valid_bash():
    assert [p.name for p in SCRIPTS] == ["stage1.sbatch", "stage2.sbatch", "stage3.sbatch", "stage4.sbatch",
                                         "run_job.sh", "torchrun_from_slurm.sh"]
    for path in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


def test_templates_ask_for_the_early_warning_signal():
    for stage in (1, 2, 3, 4):
        text = (SLURM_DIR / f"stage{stage}.sbatch").read_text()
        assert "#SBATCH --signal=USR1@120" in text
        assert f"STAGE={stage}\n" in text


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu[001-002]", ["gpu001", "gpu002"]),
    ("gpu[001-003,007]", ["gpu001", "gpu002", "gpu003", "gpu007"]),
    ("a1,b[8-10]", ["a1", "b8", "b9", "b10"]),
    ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
    ("127.0.0.1", ["127.0.0.1"]),
])
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


def _job(tmp_path, stage=1, status=None, extra_variables=None, **env):
    variables = {"GPUS_PER_NODE": 8, "ENV_SETUP": "/dev/null", "RUN_DIR": f'"{tmp_path}/run"',
                 "TRAIN_ARGS": "(--model aria-25b --ep-size 8)", "MAX_CHAIN": 3, **(extra_variables or {})}
    script = render_sbatch(stage, {"nodes": 2, "gpus-per-node": 8}, variables)
    if status is not None:  # what rank 0 of the training would leave behind
        (tmp_path / "run" / "logs" / "4242").mkdir(parents=True)
        (tmp_path / "run" / "logs" / "4242" / "exit_status").write_text(status + "\n")
    return dry_run_job(script, job_id=4242, nodelist="gpu[001-002]", workdir=tmp_path, extra_env=env)


def test_rendered_stage1_runs_exactly_this_torchrun_line_on_each_node(tmp_path):
    job = _job(tmp_path)
    assert job.returncode == 0, job.stderr
    run, logs = f"{tmp_path}/run", f"{tmp_path}/run/logs/4242"
    expected = (
        f"python {ROOT}/launch/run.py --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=gpu001:29500 "
        "--rdzv-id=4242 --max-restarts=0 --log-dir={logs}/torchrun/node{node} --tee=3 "
        f"{ROOT}/launch/pretrain.py --save {run}/checkpoints --load {run}/checkpoints --log-dir {logs} "
        "--stage 1 --model aria-25b --ep-size 8"
    )
    assert job.torchrun_lines == [expected.format(logs=logs, node=0), expected.format(logs=logs, node=1)]
    assert job.sbatch_calls == []  # no exit_status: nothing to chain


def test_the_template_variables_win_over_the_environment(tmp_path):
    job = _job(tmp_path, MASTER_PORT=29777, GPUS_PER_NODE=4)
    assert "--nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=gpu001:29500" in job.torchrun_lines[0]


def test_stage2_first_job_starts_from_the_previous_stage(tmp_path):
    job = _job(tmp_path, stage=2, extra_variables={"INIT_FROM": '"/ckpt/stage1"'})
    assert job.torchrun_lines[0].endswith(
        "--stage 2 --model aria-25b --ep-size 8 --set checkpoint.init_from=/ckpt/stage1")
    job = _job(tmp_path / "relative", stage=2, extra_variables={"INIT_FROM": "runs/s1"})
    assert job.torchrun_lines[0].endswith(f"--set checkpoint.init_from={tmp_path}/relative/runs/s1")


@pytest.mark.parametrize("status, chained", [
    ("signal 120", True), ("exit-duration 77", True),
    ("finished 1000", False), ("exit-interval 50", False), ("nonfinite 12", False), ("error 3", False),
])
def test_chaining_decision_follows_the_exit_status(tmp_path, status, chained):
    job = _job(tmp_path, status=status)
    assert job.returncode == 0, job.stderr
    if chained:
        assert len(job.sbatch_calls) == 1
        args = job.sbatch_calls[0]
        assert "--dependency=afterany:4242" in args
        assert any(a.startswith("--export=ALL,ARIA_CHAIN_INDEX=1,") for a in args)
        assert args[-1] == str(tmp_path / "job.sbatch")  # the script as submitted (scontrol's Command=)
    else:
        assert job.sbatch_calls == []
    assert f"training stopped at step {status.split()[1]}: {status.split()[0]}" in job.stdout


def test_chain_stops_at_max_chain(tmp_path):
    job = _job(tmp_path, status="signal 120", ARIA_CHAIN_INDEX=2)  # MAX_CHAIN=3: this is the last
    assert job.sbatch_calls == []
    assert "MAX_CHAIN=3 jobs reached" in job.stdout
