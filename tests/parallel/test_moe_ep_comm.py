"""What one expert-parallel MoE layer exchanges and reads back (2 gloo ranks, ep 2).

Issue 15, defect 3: the layer reads the device once per forward (the all-to-all's split sizes);
backward reads nothing."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import moe_workers  # noqa: E402
from dist_utils import run_world  # noqa: E402


def test_one_host_read_per_layer_forward(tmp_path):
    run_world(moe_workers.host_reads_worker, 2, str(tmp_path))
    for rank in range(2):
        assert json.loads((tmp_path / f"reads_{rank}.json").read_text()) == ["tolist"]
