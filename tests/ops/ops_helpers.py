"""Helpers for the cluster-operations tests: run the real launcher under torchrun (CPU, gloo,
loopback), find its workers, read what a run left behind.

Test modules run under pytest's importlib mode; they add this directory to sys.path to import it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))  # slurm_templates
from spawn_world import free_port  # noqa: E402,F401  (re-exported for the tests)

PRETRAIN = ROOT / "launch" / "pretrain.py"
FAULT_DRIVER = Path(__file__).resolve().parents[1] / "fault_driver.py"
# Runs start here, not in the repository, so their relative paths (data cache, default run
# directories) stay out of the checkout; the data cache is shared by the session's runs.
WORKDIR = Path(tempfile.mkdtemp(prefix="aria-ops-"))
# The tiny preset at tiny sizes: a step takes a few hundredths of a second on one core.
TINY = ["--seq-length", "32", "--set", "train.micro_batch_size=2", "--set", "train.eval_interval=0",
        "--set", "data.synthetic_samples=64"]


def child_env(**extra) -> dict:
    env = dict(os.environ)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TORCHELASTIC_ERROR_FILE": ""})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def torchrun_cmd(nproc: int, script: Path, args: list, rdzv: list | None = None) -> list:
    """torchrun on loopback; `rdzv` replaces the default static rendezvous on a free port."""
    rdzv = rdzv or ["--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", *rdzv,
            str(script), *map(str, args)]


def start(cmd: list, log_path: Path, env: dict | None = None) -> subprocess.Popen:
    handle = open(log_path, "w")
    return subprocess.Popen(cmd, cwd=WORKDIR, env=env or child_env(), stdout=handle, stderr=subprocess.STDOUT)


def run(cmd: list, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=WORKDIR, env=env or child_env(), capture_output=True, text=True, timeout=timeout)


def read_metrics(log_dir: Path) -> list[dict]:
    path = Path(log_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            pass
    return records


def train_records(log_dir: Path) -> list[dict]:
    return [r for r in read_metrics(log_dir) if "loss" in r]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return sorted(out)


def stop(proc: subprocess.Popen) -> None:
    """Cleanup for a test that failed half-way: the process we started and its workers only."""
    if proc.poll() is None:
        for pid in children(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait(timeout=30)


def exit_status(log_dir: Path) -> tuple[str, int]:
    reason, step = (Path(log_dir) / "exit_status").read_text().split()
    return reason, int(step)


def latest(ckpt_dir: Path) -> int:
    return int((Path(ckpt_dir) / "latest").read_text().strip())
