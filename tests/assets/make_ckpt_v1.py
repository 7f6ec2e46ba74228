"""Writes tests/assets/ckpt_v1/: a checkpoint of the format before the issue-9 refactor, made by
that code (commit 8aa3d2a): launch/pretrain.py under torchrun, 2 ranks, expert parallel size 2,
ZeRO-1, a 1-layer 8-expert model of width 32 (arguments in tests/golden_runs.py), saved at step 3
of a 4-step run. It prints the step-4 losses of the uninterrupted run, which
tests/checkpoint/test_ckpt_v1_compat.py expects a resume from the asset to reproduce. Run from
the repository root:

    python tests/assets/make_ckpt_v1.py

Never regenerate it with newer code: its point is to be written by the old one.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from golden_runs import main_ckpt_v1  # noqa: E402

if __name__ == "__main__":
    main_ckpt_v1()
