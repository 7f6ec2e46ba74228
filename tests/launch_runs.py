"""Running launch/pretrain.py from tests: under torchrun on loopback (or as one plain process),
and reading back what the run logged."""

import json
import os
import subprocess
import sys
from pathlib import Path

from spawn_world import free_port

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "launch" / "pretrain.py"


def pretrain(nproc: int, args: list, workdir: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """nproc 0 = one plain process (no torch.distributed); else torchrun with nproc ranks."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if nproc == 0:
        cmd = [sys.executable, str(PRETRAIN)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}", str(PRETRAIN)]
    result = subprocess.run(cmd + [str(a) for a in args], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def step_records(log_dir: Path) -> dict[int, dict]:
    """Training-step records of metrics.jsonl by step (the last one wins after a resume)."""
    records = {}
    for line in (Path(log_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            records[record["step"]] = record
    return records
