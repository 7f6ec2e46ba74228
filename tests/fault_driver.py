"""Runs launch/pretrain.py's main() with a fault injected by monkeypatching, for the tests only
(no hook in the production code). Under torchrun:

    ARIA_TEST_FAULT=nan:3 torchrun ... tests/fault_driver.py --stage 1 ...
        the LM loss of every step >= 3 is NaN (so are the gradients), on every rank
    ARIA_TEST_FAULT=hang:2:1:20 torchrun ... tests/fault_driver.py --stage 1 ...
        rank 1 sleeps 20 s in the forward of step 2: the other ranks wait in a collective
    ARIA_TEST_FAULT=ckpt-kill:20 torchrun ... tests/fault_driver.py --stage 1 --save DIR ...
        every rank SIGKILLs itself right after writing its data files of checkpoint 20 (before
        the save is committed)
    ARIA_TEST_FAULT=enospc:4:1 torchrun ... tests/fault_driver.py --stage 1 --save DIR ...
        rank 1's checkpoint writer fails with ENOSPC (No space left on device) for checkpoint 4
    ARIA_TEST_FAULT=disk-free:1000 ...
        the filesystem free-space query answers 1000 bytes
    ARIA_TEST_FAULT=raise:2:1 ...
        rank 1 raises RuntimeError("injected fault") in the forward of step 2 (an unexpected error)
"""

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aria_train.train import trainer as trainer_module  # noqa: E402


def install(spec: str) -> None:
    kind, *params = spec.split(":")
    rank = int(os.environ.get("RANK", "0"))
    if kind == "ckpt-kill":
        kill_after_checkpoint_data(int(params[0]))
        return
    if kind == "enospc":
        fail_checkpoint_write(int(params[0]), int(params[1]) if len(params) > 1 else rank, rank)
        return
    if kind == "disk-free":
        report_free_space(int(params[0]))
        return
    original = trainer_module.Trainer.forward_losses

    def faulty_forward(self, batch):
        lm_sum, balance, z, stats = original(self, batch)
        step = self.state.step + 1
        if kind == "nan" and step >= int(params[0]):
            lm_sum = lm_sum * float("nan")
        if kind == "hang" and step == int(params[0]) and rank == int(params[1]):
            time.sleep(float(params[2]))
        if kind == "raise" and step == int(params[0]) and rank == int(params[1]):
            raise RuntimeError("injected fault")
        return lm_sum, balance, z, stats

    trainer_module.Trainer.forward_losses = faulty_forward


def kill_after_checkpoint_data(iteration: int) -> None:
    import torch.distributed.checkpoint as dcp

    from aria_train.checkpoint import layout

    target = layout.partial_dir(Path("."), iteration).name
    original = dcp.FileSystemWriter.write_data

    def write_data(self, plan, planner):
        future = original(self, plan, planner)
        if Path(str(self.path)).name == target:
            future.wait()  # this rank's .distcp files are on disk; the commit never comes
            os.kill(os.getpid(), signal.SIGKILL)
        return future

    dcp.FileSystemWriter.write_data = write_data


def fail_checkpoint_write(iteration: int, failing_rank: int, rank: int) -> None:
    import errno

    import torch.distributed.checkpoint as dcp

    from aria_train.checkpoint import layout

    target = layout.partial_dir(Path("."), iteration).name
    original = dcp.FileSystemWriter.write_data

    def write_data(self, plan, planner):
        if Path(str(self.path)).name == target and rank == failing_rank:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, plan, planner)

    dcp.FileSystemWriter.write_data = write_data


def report_free_space(free_bytes: int) -> None:
    import shutil

    original = shutil.disk_usage

    def disk_usage(path):
        usage = original(path)
        return type(usage)(usage.total, usage.total - free_bytes, free_bytes)

    shutil.disk_usage = disk_usage


def main() -> int:
    install(os.environ["ARIA_TEST_FAULT"])
    spec = importlib.util.spec_from_file_location("aria_pretrain", ROOT / "launch" / "pretrain.py")
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    return pretrain.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
