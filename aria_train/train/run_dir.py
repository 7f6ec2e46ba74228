"""Where a run writes, decided once at start so that two runs never write over each other.

    runs/<run name>/        the run directory: run.root / run.name; the default name is
                            stage<N>-<YYYYmmdd-HHMMSS> (a suffix -2, -3 ... if that exists)
      checkpoints/          checkpoint.save (default "{run_dir}/checkpoints"): latest, iter_N/
      metrics.jsonl         one JSON object per logged step; a resumed run first drops the
                            records after the step it resumed from, so every step appears once
      config.yaml           the resolved config of the run
      exit_status           "<reason> <step>" when training stops (job chaining)
      wandb/                with --wandb: wandb's (offline) files

`logging.log_dir` (default "{run_dir}") and `checkpoint.save` may point elsewhere; "{run_dir}" in
either stands for the run directory, "" as `checkpoint.save` saves nothing. Before any data is
read, rank 0 checks (and every rank learns the outcome):
  - the checkpoint the run starts from (`checkpoint.load`, or `checkpoint.init_from`) exists;
  - the save directory holds no other run's checkpoints and the log directory no other run's
    metrics, unless this run resumes (`checkpoint.load` names the save directory or its run;
    for metrics, any `checkpoint.load`) or `run.overwrite` is set;
  - both directories can be written (a probe file is written and removed; directories created
    for the probe are removed again, so a run that fails before training leaves nothing behind);
and once the model is built, that the save directory's filesystem has room for one checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch.distributed as dist

from aria_train.checkpoint import layout
from aria_train.checkpoint.resume import holds_checkpoint, load_source, same_dir
from aria_train.errors import UserError
from aria_train.parallel.groups import ParallelGroups

PLACEHOLDER = "{run_dir}"
METRICS_FILE = "metrics.jsonl"


@dataclass
class RunPaths:
    run_dir: Optional[str]  # None when neither the logs nor the checkpoints are under it
    log_dir: str
    save: str  # "" = no checkpoints

    def describe(self) -> str:
        where = f"run directory {self.run_dir}: " if self.run_dir else ""
        saves = f"checkpoints in {self.save}" if self.save else "no checkpoints (checkpoint.save is empty)"
        return f"{where}{saves}, metrics in {Path(self.log_dir) / METRICS_FILE}"


def default_run_name(stage: int, now: Optional[float] = None) -> str:
    return f"stage{stage}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


def choose_run_dir(cfg) -> Path:
    """ROOT/NAME; a default (timestamped) name that already exists gets a suffix -2, -3, ..."""
    root = Path(cfg.run.root)
    if cfg.run.name:
        return root / cfg.run.name
    base = default_run_name(cfg.stage)
    candidate, suffix = root / base, 2
    while candidate.exists():
        candidate, suffix = root / f"{base}-{suffix}", suffix + 1
    return candidate


def resolve_paths(cfg) -> RunPaths:
    log_dir, save = cfg.logging.log_dir, cfg.checkpoint.save
    run_dir = choose_run_dir(cfg) if PLACEHOLDER in log_dir + save else None

    def expand(text: str) -> str:
        return text.replace(PLACEHOLDER, str(run_dir)) if run_dir is not None else text

    return RunPaths(None if run_dir is None else str(run_dir), expand(log_dir), expand(save))


def check_paths(paths: RunPaths, cfg) -> None:
    """UserError when the run would write over another run's results, or cannot write."""
    load, overwrite = cfg.checkpoint.load, cfg.run.overwrite
    if paths.save and not overwrite and holds_checkpoint(paths.save) and not same_dir(load, paths.save):
        latest = layout.read_latest(layout.checkpoint_root(paths.save))
        which = f" (latest: iteration {latest})" if latest is not None else ""
        raise UserError(f"checkpoint.save={paths.save} already holds another run's checkpoints{which}; resume "
                        f"it with --load {paths.save}, choose another --run-name or --save, or pass --overwrite")
    metrics = Path(paths.log_dir) / METRICS_FILE
    if not overwrite and not load and _has_records(metrics):
        raise UserError(f"logging.log_dir={paths.log_dir} already holds another run's {METRICS_FILE}; resume "
                        f"that run with --load, choose another --run-name or --log-dir, or pass --overwrite")
    source, _, key = load_source(dataclasses.replace(cfg.checkpoint, save=paths.save), cfg.stage, lambda _: None)
    if source:  # the checkpoint the run starts from exists (the checkpointer reads it later)
        layout.resolve_load_dir(source, key)
    probe_writable(Path(paths.log_dir), "logging.log_dir")
    if paths.save:
        probe_writable(Path(paths.save), "checkpoint.save")


def _has_records(path: Path) -> bool:
    try:
        with open(path) as handle:
            return any(line.strip() for line in handle)
    except FileNotFoundError:
        return False


def probe_writable(directory: Path, key: str) -> None:
    """Creates `directory` (and missing parents), writes and removes a probe file, then removes
    the directories it created. UserError naming `key` when any of it fails."""
    missing = []
    existing = directory
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    created = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
        probe = directory / f".write-probe-{os.getpid()}"
        with open(probe, "wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as error:
        raise UserError(f"{key}={directory} is not writable: {error.strerror or error}") from None
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:
                pass


def free_space_error(save: str, needed_bytes: int) -> Optional[str]:
    """A one-line message when the filesystem of `save` has less room than `needed_bytes`."""
    existing = Path(save)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free >= needed_bytes:
        return None
    return (f"checkpoint.save={save}: {format_bytes(free)} free on its filesystem, one checkpoint needs "
            f"{format_bytes(needed_bytes)} (weights + optimizer state); free some space or save elsewhere")


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def on_rank0(groups: ParallelGroups, compute: Callable[[], object]):
    """Runs `compute` on rank 0 only and returns its value on every rank; a UserError it raises
    is raised on every rank (same message), so all ranks stop together."""
    value, error = None, None
    if groups.rank == 0:
        try:
            value = compute()
        except UserError as exc:
            error = str(exc)
    if groups.distributed:
        box = [(value, error)]
        dist.broadcast_object_list(box, src=0, group=groups.world_group)
        value, error = box[0]
    if error:
        raise UserError(error)
    return value


def prepare_run_paths(cfg, groups: ParallelGroups) -> RunPaths:
    """Every rank: the run's paths, checked on rank 0 (see the module docstring); the config's
    `logging.log_dir` and `checkpoint.save` are replaced by the resolved paths."""

    def decide() -> RunPaths:
        paths = resolve_paths(cfg)
        check_paths(paths, cfg)
        return paths

    paths = on_rank0(groups, decide)
    cfg.logging.log_dir, cfg.checkpoint.save = paths.log_dir, paths.save
    return paths


def check_checkpoint_fits(save: str, needed_bytes: int, groups: ParallelGroups) -> None:
    """Every rank: UserError when the save directory's filesystem cannot hold one checkpoint."""
    if not save:
        return

    def check() -> None:
        message = free_space_error(save, needed_bytes)
        if message:
            raise UserError(message)

    on_rank0(groups, check)


def truncate_records(path: Path, last_step: int) -> int:
    """Drops the records of `path` (JSON lines with a "step") after `last_step`, keeping the file
    otherwise as it was (an unreadable line, e.g. cut by a kill, is dropped too). Returns the
    number of records dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) > last_step:
            dropped += 1
            continue
        kept.append(line + "\n")
    if dropped:
        layout.atomic_write_text(path, "".join(kept))
    return dropped
