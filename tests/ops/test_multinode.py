"""Two "nodes" on loopback: two torchrun agents (2 processes each) meet through a c10d rendezvous,
as torchrun_from_slurm.sh starts them on a SLURM allocation, and train stage 1 at world size 4.
The same run checks the throughput metrics: keys, sanity, and that the phases add up."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ops_helpers import PRETRAIN, TINY, free_port, start, stop, torchrun_cmd, train_records  # noqa: E402

PHASES = ["data", "forward", "backward", "grad_sync_wait", "optimizer", "other"]


def test_two_nodes_of_two_processes_train_at_world_size_four(tmp_path):
    port, log_dir = free_port(), tmp_path / "log"
    procs = []
    try:
        for node in range(2):
            rdzv = ["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                    "--rdzv-id=ops-multinode", f"--rdzv-conf=is_host={int(node == 0)}", "--max-restarts=0"]
            cmd = torchrun_cmd(2, PRETRAIN, ["--stage", "1", "--train-iters", "3", *TINY, "--global-batch-size", "8",
                                             "--log-interval", "1", "--log-dir", log_dir,
                                             "--save", tmp_path / "ckpt"], rdzv=rdzv)
            procs.append(start(cmd, tmp_path / f"node{node}.out"))
        codes = [proc.wait(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            stop(proc)
    outputs = [(tmp_path / f"node{node}.out").read_text() for node in range(2)]
    assert codes == [0, 0], "\n".join(out[-2000:] for out in outputs)
    banner = [line for out in outputs for line in out.splitlines() if line.startswith("stage 1 |")]
    assert len(banner) == 1 and "| world 4 |" in banner[0], banner  # only global rank 0 prints

    records = train_records(log_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and not r["skipped"]
        # throughput: tokens of the global batch over training time, per rank = / world
        assert r["tokens_per_s"] > 0
        assert r["tokens_per_s_per_rank"] * 4 == pytest.approx(r["tokens_per_s"])
        assert r["tokens_per_s"] == pytest.approx(8 * 32 / r["step_time_s"], rel=1e-6)
        assert "mfu" not in r  # CPU: no peak FLOPs to compare with
        phases = [r[f"time_{p}_s"] for p in PHASES]
        assert all(t >= 0 for t in phases)
        assert sum(phases) == pytest.approx(r["step_time_s"], rel=1e-6, abs=1e-6)
        assert r["time_forward_s"] > 0 and r["time_backward_s"] > 0
        assert r["peak_memory_gib"] > 0
        assert r["skipped_steps"] == 0
        # routing: per layer (tiny preset: 2 layers, 16 experts, top-4), counts over the 4 ranks
        assert len(r["router_counts"]["tokens_per_expert"]) == 2
        assert sum(r["router_counts"]["tokens_per_expert"][0]) == 8 * 32 * 4
        assert 1.0 <= r["router/load_max_over_mean_worst"] <= 16
    console = [line for line in outputs[0].splitlines() + outputs[1].splitlines() if line.startswith("step 3/3 |")]
    assert len(console) == 1
    for piece in ("tok/s/gpu", "time ", "[data ", " fwd ", " bwd ", " sync ", " opt ", "elapsed ", " eta 0:00", "mem ",
                  "route worst L"):
        assert piece in console[0], console[0]
