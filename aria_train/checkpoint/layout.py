"""Where checkpoints live on disk, and the rules that keep a half-written one from being used.

    SAVE/
      latest                    text: the iteration of the newest COMPLETE checkpoint ("100\\n")
      iter_0000100/             one checkpoint
        .metadata               torch.distributed.checkpoint (DCP) index of every tensor chunk
        __0_0.distcp ...        DCP data, one file per writing rank
        config.yaml             the resolved run config
        metadata.json           format version, iteration, RoPE base, layout it was written at;
                                written LAST, after every rank finished: marks the dir complete
      iter_0000200.partial/     a save in progress (or one that was interrupted)

A save writes into `iter_N.partial/`; once every rank is done, rank 0 writes metadata.json,
renames the directory to `iter_N/` and only then replaces `latest` (tmp file + os.replace), so a
process killed at any moment leaves `latest` on the previous complete checkpoint. Pruning keeps
the `keep_last` newest complete checkpoints (by save time) and never the one `latest` names.

Everything here is plain filesystem logic run by one process; the distributed part lives in
aria_train.checkpoint.checkpointer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

from aria_train.errors import UserError

FORMAT_NAME = "aria-train-dcp"
FORMAT_VERSION = 1
LATEST_FILE = "latest"
METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.yaml"
DCP_METADATA_FILE = ".metadata"
PARTIAL_SUFFIX = ".partial"
_ITER_RE = re.compile(r"^iter_(\d{7,})$")


def iteration_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def parse_iteration(name: str) -> Optional[int]:
    """The iteration of a complete-checkpoint directory name `iter_0000100`, else None."""
    match = _ITER_RE.match(name)
    return int(match.group(1)) if match else None


def partial_dir(root: Path, iteration: int) -> Path:
    return Path(root) / (iteration_dir_name(iteration) + PARTIAL_SUFFIX)


def final_dir(root: Path, iteration: int) -> Path:
    return Path(root) / iteration_dir_name(iteration)


# ---- small atomic-write helpers -------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `text` to `path` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# ---- the latest pointer ---------------------------------------------------------------------
def read_latest(root: Path) -> Optional[int]:
    """The iteration `root/latest` names; None when there is no such file."""
    path = Path(root) / LATEST_FILE
    if not path.is_file():
        return None
    text = path.read_text().strip()
    try:
        iteration = int(text)
    except ValueError:
        raise UserError(f"checkpoint pointer {path} is corrupt: expected an iteration number, found {text[:40]!r}")
    if iteration < 0:
        raise UserError(f"checkpoint pointer {path} is corrupt: negative iteration {iteration}")
    return iteration


def write_latest(root: Path, iteration: int) -> None:
    atomic_write_text(Path(root) / LATEST_FILE, f"{iteration}\n")


# ---- completeness ---------------------------------------------------------------------------
def is_complete(path: Path) -> bool:
    """A directory both DCP (.metadata) and our commit step (metadata.json) have finished."""
    path = Path(path)
    return (path / METADATA_FILE).is_file() and (path / DCP_METADATA_FILE).is_file()


def read_metadata(path: Path) -> dict:
    """metadata.json of a checkpoint dir, checked for format and version; UserError otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist")
    if not is_complete(path):
        missing = [name for name in (DCP_METADATA_FILE, METADATA_FILE) if not (path / name).is_file()]
        raise UserError(f"checkpoint {path} is incomplete (no {' or '.join(missing)}): the save was interrupted")
    try:
        meta = json.loads((path / METADATA_FILE).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"checkpoint {path} is corrupt: {METADATA_FILE} unreadable ({error})")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise UserError(
            f"checkpoint {path} is not an aria-train checkpoint ({METADATA_FILE} has no format {FORMAT_NAME!r})"
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format version {version!r}; this aria-train reads up to {FORMAT_VERSION}"
        )
    return meta


def check_dcp_files(path: Path) -> object:
    """Reads the DCP index and checks every data file it names is there and long enough
    (catches truncated or missing shards before the collective load). Returns the DCP Metadata."""
    from torch.distributed.checkpoint import FileSystemReader

    path = Path(path)
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as error:  # pickle errors, EOF, ...
        raise UserError(f"checkpoint {path} is corrupt: cannot read {DCP_METADATA_FILE} ({type(error).__name__})")
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = int(info.offset) + int(info.length)
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for relative, end in sorted(needed.items()):
        data = path / relative
        if not data.is_file():
            raise UserError(f"checkpoint {path} is corrupt: data file {relative} is missing")
        size = data.stat().st_size
        if size < end:
            raise UserError(f"checkpoint {path} is corrupt: data file {relative} is truncated ({size} < {end} bytes)")
    return metadata


# ---- finding checkpoints --------------------------------------------------------------------
def list_complete(root: Path) -> list[tuple[int, Path]]:
    """(iteration, dir) of every complete checkpoint under root, by iteration."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        iteration = parse_iteration(child.name)
        if iteration is not None and child.is_dir() and is_complete(child):
            found.append((iteration, child))
    return sorted(found)


RUN_CHECKPOINTS = "checkpoints"  # a run directory's save directory (aria_train.train.run_dir)


def checkpoint_root(path: str | Path) -> Path:
    """The save directory `path` stands for: a run directory (one holding `checkpoints/` and no
    `latest` of its own) means its `checkpoints/`; `RUN/iter_N` means `RUN/checkpoints/iter_N`;
    anything else is itself."""
    path = Path(path)
    inner = path / RUN_CHECKPOINTS
    if inner.is_dir() and not (path / LATEST_FILE).exists() and not (path / DCP_METADATA_FILE).exists():
        return inner
    if not path.exists() and parse_iteration(path.name) is not None:
        nested = path.parent / RUN_CHECKPOINTS / path.name
        if nested.is_dir():
            return nested
    return path


def resolve_load_dir(path: str | Path, key: str = "checkpoint.load") -> Path:
    """The checkpoint directory `--load PATH` means: PATH/latest's target, or PATH itself when it
    is a checkpoint directory; PATH may also be a run directory (see checkpoint_root). UserError
    (one line, naming `key` and the path) when there is none."""
    given = Path(path)
    if not given.exists() and not checkpoint_root(given).exists():
        hint = ""
        if "init_from" in key:
            hint = " (the run this stage starts from: --set checkpoint.init_from=runs/<run name>)"
        raise UserError(f"{key}={given}: no such directory{hint}")
    path = checkpoint_root(given)
    if not path.is_dir():
        raise UserError(f"{key}={path}: not a directory")
    latest = read_latest(path)
    if latest is not None:
        target = final_dir(path, latest)
        if not target.is_dir():
            raise UserError(
                f"checkpoint pointer {path / LATEST_FILE} names iteration {latest}, but {target} does not exist"
            )
        return target
    if (path / DCP_METADATA_FILE).exists() or (path / METADATA_FILE).exists() or path.name.startswith("iter_"):
        return path
    raise UserError(f"{key}={path}: no '{LATEST_FILE}' file and not a checkpoint directory")


# ---- commit and pruning (rank 0 only) -------------------------------------------------------
def commit(root: Path, iteration: int, metadata: dict, keep_last: int) -> Path:
    """Turns `iter_N.partial` (every rank done) into the complete `iter_N` and points `latest` at it.

    Order: metadata.json into the partial dir -> rename to iter_N -> latest -> prune. A kill
    before the rename leaves only a .partial dir; between the rename and `latest` a complete but
    not-yet-latest dir, which pruning handles like any other."""
    root = Path(root)
    partial, final = partial_dir(root, iteration), final_dir(root, iteration)
    meta = dict(metadata)
    meta.setdefault("saved_at", time.time())
    atomic_write_text(partial / METADATA_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    _fsync_dir(partial)
    replaced = None
    if final.exists():  # the same iteration saved again (e.g. a run rewound to an older checkpoint)
        replaced = final.with_name(final.name + f".old.{os.getpid()}")
        os.replace(final, replaced)
    os.replace(partial, final)
    _fsync_dir(root)
    write_latest(root, iteration)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    prune(root, keep_last)
    return final


def prune(root: Path, keep_last: int) -> list[Path]:
    """Deletes complete checkpoints beyond the `keep_last` most recently saved, and leftovers of
    interrupted saves (`*.partial`, `*.old.*`). Never deletes the one `latest` names.
    keep_last <= 0 keeps every complete checkpoint. Returns what was deleted."""
    root = Path(root)
    try:
        protected = read_latest(root)
    except UserError:
        protected = None
    removed = []
    for child in list(root.iterdir()) if root.is_dir() else []:
        name = child.name
        if child.is_dir() and name.startswith("iter_") and (name.endswith(PARTIAL_SUFFIX) or ".old." in name):
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    if keep_last > 0:
        complete = list_complete(root)
        by_recency = sorted(complete, key=lambda item: (_saved_at(item[1]), item[0]), reverse=True)
        for iteration, path in by_recency[keep_last:]:
            if iteration == protected:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _saved_at(path: Path) -> float:
    try:
        return float(json.loads((path / METADATA_FILE).read_text()).get("saved_at", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0
