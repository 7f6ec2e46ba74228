"""Device tests: every test here needs a CUDA GPU and is skipped elsewhere with the reason
"needs CUDA" (bench/gpu_suite.sh runs them where a GPU is lent)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    here = Path(__file__).resolve().parent
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
