"""Writes tests/assets/golden/tiny_stage1_50.json: the per-step loss, LM loss, balance loss,
z-loss and gradient norm of the tiny preset's first 50 steps (2 CPU ranks, ep 2; the exact
command is in tests/golden_runs.py and in the file). Run from the repository root:

    python tests/assets/make_golden.py

Only regenerate it when a change of the numbers is intended, and say why in the commit.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from golden_runs import main_golden  # noqa: E402

if __name__ == "__main__":
    main_golden()
