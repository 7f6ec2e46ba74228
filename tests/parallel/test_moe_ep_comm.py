"""What one expert-parallel MoE layer exchanges and reads back (2 gloo ranks, ep 2).

Issue 15, defect 2: under bf16 autocast the rows cross the all-to-all in bf16, in dispatch and
combine and in both backward exchanges: bytes = rows x hidden x 2. Defect 3: the layer reads the
device once per forward (the all-to-all's split sizes); backward reads nothing."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import moe_workers  # noqa: E402
from dist_utils import run_world  # noqa: E402


def test_rows_cross_the_all_to_all_in_bf16_under_autocast(tmp_path):
    run_world(moe_workers.row_bytes_worker, 2, str(tmp_path))
    for rank in range(2):
        report = json.loads((tmp_path / f"sent_{rank}.json").read_text())
        sent = report["sent"]
        print(f"rank {rank}: {sent}")
        assert len(sent) == 4  # dispatch, combine, and the two backward exchanges
        for dtype, rows, nbytes in sent:
            assert dtype == "torch.bfloat16"
            assert nbytes == rows * moe_workers.H * 2
        assert sent[0][1] == report["routed_rows"]  # dispatch sends every routed (token, slot) row once


def test_one_host_read_per_layer_forward(tmp_path):
    run_world(moe_workers.host_reads_worker, 2, str(tmp_path))
    for rank in range(2):
        assert json.loads((tmp_path / f"reads_{rank}.json").read_text()) == ["tolist"]
