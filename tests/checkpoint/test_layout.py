"""The on-disk rules of aria_train.checkpoint.layout: the `latest` pointer, commit order,
keep_last pruning, and the one-line errors for missing / incomplete / corrupt checkpoints."""

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from aria_train.checkpoint import layout
from aria_train.errors import UserError


def _fake_partial(root: Path, iteration: int, with_dcp_index: bool = True) -> Path:
    """What every rank leaves before the commit: a .partial dir with DCP's files."""
    partial = layout.partial_dir(root, iteration)
    partial.mkdir(parents=True)
    (partial / "__0_0.distcp").write_bytes(b"x" * 8)
    if with_dcp_index:
        (partial / layout.DCP_METADATA_FILE).write_bytes(b"index")
    return partial


def _commit(root: Path, iteration: int, keep_last: int = 3, saved_at: float | None = None) -> Path:
    _fake_partial(root, iteration)
    meta = {"format": layout.FORMAT_NAME, "format_version": layout.FORMAT_VERSION, "iteration": iteration}
    if saved_at is not None:
        meta["saved_at"] = saved_at
    return layout.commit(root, iteration, meta, keep_last)


def test_names():
    assert layout.iteration_dir_name(100) == "iter_0000100"
    assert layout.parse_iteration("iter_0000100") == 100
    assert layout.parse_iteration("iter_12345678") == 12345678
    for name in ("iter_0000100.partial", "iter_100", "latest", "iter_0000100.old.12"):
        assert layout.parse_iteration(name) is None


def test_latest_pointer_is_atomic(tmp_path):
    assert layout.read_latest(tmp_path) is None
    layout.write_latest(tmp_path, 100)
    assert (tmp_path / "latest").read_text() == "100\n"
    layout.write_latest(tmp_path, 200)
    assert layout.read_latest(tmp_path) == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]  # no temporary files left
    (tmp_path / "latest").write_text("garbage")
    with pytest.raises(UserError, match="latest.*corrupt"):
        layout.read_latest(tmp_path)


def test_commit_order(tmp_path):
    final = _commit(tmp_path, 10)
    assert final == tmp_path / "iter_0000010" and layout.is_complete(final)
    assert not layout.partial_dir(tmp_path, 10).exists()
    assert layout.read_latest(tmp_path) == 10
    meta = layout.read_metadata(final)
    assert meta["iteration"] == 10 and "saved_at" in meta
    # saving the same iteration again replaces it and leaves no leftovers
    _commit(tmp_path, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000010", "latest"]


def test_interrupted_save_never_becomes_latest(tmp_path):
    _commit(tmp_path, 10)
    _fake_partial(tmp_path, 20, with_dcp_index=False)  # killed while writing
    assert layout.read_latest(tmp_path) == 10
    assert layout.resolve_load_dir(tmp_path) == tmp_path / "iter_0000010"
    assert [it for it, _ in layout.list_complete(tmp_path)] == [10]
    with pytest.raises(UserError, match="incomplete"):
        layout.read_metadata(layout.partial_dir(tmp_path, 20))
    _commit(tmp_path, 30)  # the next good save cleans the leftover up
    assert not layout.partial_dir(tmp_path, 20).exists()
    assert layout.read_latest(tmp_path) == 30


def test_keep_last(tmp_path):
    for it in (10, 20, 30, 40):
        _commit(tmp_path, it, keep_last=2)
    assert [it for it, _ in layout.list_complete(tmp_path)] == [30, 40]
    assert layout.read_latest(tmp_path) == 40
    # keep_last <= 0 keeps everything
    for it in (50, 60, 70):
        _commit(tmp_path, it, keep_last=0)
    assert [it for it, _ in layout.list_complete(tmp_path)] == [30, 40, 50, 60, 70]


def test_prune_by_save_time_and_never_latest(tmp_path):
    """A run rewound to an older checkpoint writes lower iterations later: pruning keeps the most
    recently SAVED ones, and never the one `latest` names."""
    now = time.time()
    _commit(tmp_path, 100, keep_last=0, saved_at=now - 100)
    _commit(tmp_path, 200, keep_last=0, saved_at=now - 90)
    _commit(tmp_path, 110, keep_last=0, saved_at=now - 10)
    _commit(tmp_path, 120, keep_last=2, saved_at=now)
    assert [it for it, _ in layout.list_complete(tmp_path)] == [110, 120]
    # latest protected even when it is not among the newest
    layout.write_latest(tmp_path, 110)
    (tmp_path / "iter_0000110" / "metadata.json").write_text(
        json.dumps({"format": layout.FORMAT_NAME, "format_version": 1, "saved_at": 0.0}))
    layout.prune(tmp_path, keep_last=1)
    assert [it for it, _ in layout.list_complete(tmp_path)] == [110, 120]


def test_resolve_load_dir_errors(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "missing")):
        layout.resolve_load_dir(tmp_path / "missing")
    with pytest.raises(UserError, match="no 'latest'"):
        layout.resolve_load_dir(tmp_path)
    layout.write_latest(tmp_path, 5)
    with pytest.raises(UserError, match="iter_0000005"):
        layout.resolve_load_dir(tmp_path)
    # an explicit iteration directory is taken as it is
    _commit(tmp_path / "other", 7)
    assert layout.resolve_load_dir(tmp_path / "other" / "iter_0000007") == tmp_path / "other" / "iter_0000007"


def test_metadata_checks(tmp_path):
    final = _commit(tmp_path, 3)
    meta = json.loads((final / "metadata.json").read_text())
    (final / "metadata.json").write_text(json.dumps({**meta, "format_version": layout.FORMAT_VERSION + 1}))
    with pytest.raises(UserError, match="format version"):
        layout.read_metadata(final)
    (final / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        layout.read_metadata(final)
    with pytest.raises(UserError, match="corrupt.*metadata"):
        layout.check_dcp_files(final)  # our fake index is not a DCP index


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_check_dcp_files_detects_truncation(tmp_path):
    dcp.save({"w": torch.arange(1000.0), "obj": "text"}, checkpoint_id=str(tmp_path), no_dist=True)
    layout.check_dcp_files(tmp_path)
    data = next(tmp_path.glob("*.distcp"))
    os.truncate(data, data.stat().st_size - 100)
    with pytest.raises(UserError, match="truncated"):
        layout.check_dcp_files(tmp_path)
