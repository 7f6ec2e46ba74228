import importlib.util
import shutil

import numpy as np
import pytest

from aria_train.data.megatron_import import build_helpers_cpp, import_megatron


def test_shipped_helpers_import():
    helpers = import_megatron("megatron.core.datasets.helpers")
    assert callable(helpers.build_blending_indices)


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_fallback_build_matches_the_shipped_extension(tmp_path):
    # the path a source install of megatron-core (no prebuilt helpers_cpp) would take
    shipped = import_megatron("megatron.core.datasets.helpers_cpp")
    path = build_helpers_cpp(tmp_path, optimize="-O0")  # -O0: the same code, compiled faster
    spec = importlib.util.spec_from_file_location("megatron.core.datasets.helpers_cpp", path)
    built = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(built)

    def blend(module):
        index, sample = np.zeros(1000, np.int16), np.zeros(1000, np.int64)
        module.build_blending_indices(index, sample, np.array([0.6, 0.3, 0.1]), 3, 1000, False)
        return index, sample

    for a, b in zip(blend(shipped), blend(built)):
        assert np.array_equal(a, b)
    sizes = np.array([5, 9, 3, 12], np.int32)
    docs = np.array([2, 0, 3, 1, 0, 1, 2, 3], np.int32)
    args = (sizes, docs, 4, 2, int(sizes.sum()), True, 1)
    expected = shipped.build_sample_idx_int32(*args)
    assert np.array_equal(built.build_sample_idx_int32(*args), expected)
