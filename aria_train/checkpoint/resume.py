"""The parts of resuming that need no communication: what to load, whether a checkpoint fits the
model, and turning what DCP loaded back into the optimizer's state format."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from aria_train.checkpoint import layout
from aria_train.checkpoint import state as ckpt_state
from aria_train.checkpoint.config import CheckpointConfig
from aria_train.checkpoint.parts import TrainingParts
from aria_train.errors import UserError
from aria_train.optim.flat_state import FlatShard


def load_source(ckpt: CheckpointConfig, stage: int, info: Callable[[str], None]) -> tuple[Optional[str], bool, str]:
    """Where this run starts from, whether it takes the optimizer, step and data too, and the
    config key that named the source (for error messages).

    - `load` holding a checkpoint: resume it (weights only with --no-load-optim).
    - `load` naming the `save` directory (or its run directory) while it is still empty: a run's
      first job (SLURM templates pass the same directory to both); start from `init_from` if
      given, else from scratch.
    - `init_from`: a new stage starting from the previous stage's final weights.
    An explicit `load` that holds no checkpoint is an error (resolve_load_dir says why)."""
    load, init_from = ckpt.load, ckpt.init_from
    first_job = bool(load) and same_dir(load, ckpt.save) and not holds_checkpoint(load)
    if load and not first_job:
        return load, bool(ckpt.load_optim), "checkpoint.load"
    if init_from:
        info(f"stage {stage} starts from {init_from} (weights only; fresh optimizer, step 0)")
        return init_from, False, "checkpoint.init_from"
    if first_job:
        info(f"no checkpoint in {load} yet: starting from scratch")
    return None, False, ""


def same_dir(load: str, save: str) -> bool:
    """Whether `load` names the save directory `save`: itself, the run directory holding it, or
    one iter_N checkpoint inside it."""
    if not load or not save:
        return False
    root = layout.checkpoint_root(load).resolve()
    if layout.parse_iteration(root.name) is not None:
        root = root.parent
    return root == Path(save).resolve()


def entries_to_load(parts: TrainingParts, saved, rank: int, load_optim: bool) -> tuple[dict[str, Any], Optional[dict]]:
    """(DCP entries to load into, the optimizer's state dict they view, or None without it)."""
    entries: dict[str, Any] = ckpt_state.model_state(parts.model)
    if not load_optim:
        return entries, None
    optim_entries, flat = ckpt_state.optimizer_state(parts.optimizer)
    entries.update(optim_entries)
    entries[ckpt_state.TRAIN_STATE_KEY] = None
    if ckpt_state.DATA_STATE_KEY in saved and parts.data is not None:
        entries[ckpt_state.DATA_STATE_KEY] = None
    if ckpt_state.rng_key(rank) in saved:
        entries[ckpt_state.rng_key(rank)] = None
    return entries, flat


def restore_parts(parts: TrainingParts, entries: dict, flat: dict, path: Path, rank: int) -> dict:
    """Hands what DCP loaded to the optimizer, train state, data iterator and RNG. Returns the
    train state read."""
    if entries[ckpt_state.OPTIM_FORMAT_KEY] != flat["format"]:
        raise UserError(f"checkpoint {path} holds optimizer state in format "
                        f"{entries[ckpt_state.OPTIM_FORMAT_KEY]!r}; this optimizer reads {flat['format']!r}")
    parts.optimizer.load_sharded_state_dict(loaded_flat_state(entries, flat))
    train = ckpt_state.decode_json(entries[ckpt_state.TRAIN_STATE_KEY])
    parts.train_state.load_state_dict(train)
    if ckpt_state.DATA_STATE_KEY in entries:
        parts.data.load_state_dict(ckpt_state.decode_pickle(entries[ckpt_state.DATA_STATE_KEY]))
    elif parts.data is not None:  # saved without a data state: the position follows the samples
        parts.data.load_state_dict({"consumed_samples": int(train["consumed_samples"])})
    if ckpt_state.rng_key(rank) in entries:
        parts.rng.load_state_dict(ckpt_state.decode_pickle(entries[ckpt_state.rng_key(rank)]))
    return train


def skip_new_modules(path: Path, entries: dict, saved, info: Callable[[str], None]) -> None:
    """Weights-only loads start a new stage, whose model may have modules the checkpoint
    lacks (stage 2 adds the ViT and projector to stage 1's decoder): those keep their
    initial values. Only whole top-level modules are skipped; anything else missing (e.g. more
    experts than the checkpoint has) is an error in check_keys."""
    prefix = ckpt_state.MODEL_PREFIX

    def module_of(key: str) -> str:
        return key[len(prefix):].split(".")[0]

    saved_modules = {module_of(key) for key in saved if key.startswith(prefix)}
    if not saved_modules:
        return
    missing = [key for key in entries if key.startswith(prefix) and module_of(key) not in saved_modules]
    if not missing:
        return
    for key in missing:
        del entries[key]
    modules = sorted({module_of(key) for key in missing})
    info(f"{len(missing)} model tensors are not in {path} and keep their initial values "
               f"(modules {', '.join(modules)})")


def check_keys(path: Path, entries: dict, saved) -> None:
    """Every entry is in the checkpoint, with the same global shape."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    missing = [key for key in entries if key not in saved]
    if missing:
        what = "optimizer state (use --no-load-optim to take weights only)" if all(
            not key.startswith(ckpt_state.MODEL_PREFIX) for key in missing) else "model tensors"
        raise UserError(f"checkpoint {path} lacks {what}: {', '.join(missing[:3])}"
                        f"{' ...' if len(missing) > 3 else ''}")
    for key, value in entries.items():
        md = saved[key]
        size = ckpt_state.global_size(value)
        if isinstance(md, TensorStorageMetadata) and size is not None and md.size != size:
            raise UserError(f"checkpoint {path} does not fit this model: {key} has shape "
                            f"{list(md.size)} there, {list(size)} here")


def loaded_flat_state(entries: dict, template: dict) -> dict:
    """The optimizer's sharded state dict rebuilt around the tensors DCP loaded into `entries`
    (`template` is the state dict the entries were made from)."""
    out = {"format": template["format"], "step": int(entries[ckpt_state.OPTIM_STEP_KEY]), "state": {}}
    for name, per_state in template["state"].items():
        out["state"][name] = {}
        for key, value in per_state.items():
            pieces = ckpt_state.as_pieces(value)
            dcp_key = f"{ckpt_state.OPTIM_PREFIX}{name}.{key}"
            if dcp_key in entries:
                locals_ = ckpt_state.local_tensors(entries[dcp_key])
                nonempty = [p for p in pieces if p.local.numel() > 0]
                loaded = [FlatShard(p.global_shape, p.offset, t) for p, t in zip(nonempty, locals_)]
            else:
                loaded = []
            if not loaded:  # this rank holds nothing of it
                loaded = pieces
            out["state"][name][key] = loaded[0] if len(loaded) == 1 else loaded
    return out


def save_failed_message(root: Path, step: int, error: BaseException) -> str:
    """One line for a save that failed: the cause (a full disk said so even when torch's writer
    only reports a short write, "unexpected pos"), and the checkpoint `latest` still names."""
    try:
        latest = layout.read_latest(root)
    except UserError:
        latest = None
    kept = f"latest still names iteration {latest}" if latest is not None else "no earlier checkpoint there"
    return f"checkpoint save at step {step} failed under {root}: {write_error_cause(root, error)}; {kept}"


def write_error_cause(root: Path, error: BaseException) -> str:
    causes = list(_exception_chain(error))
    if any(isinstance(exc, OSError) and exc.errno == errno.ENOSPC for exc in causes):
        return "no space left on device"
    existing = Path(root)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if shutil.disk_usage(existing).free < _NEARLY_FULL_BYTES:  # the short write of a full disk
        return "no space left on device"
    for exc in causes:
        if isinstance(exc, OSError) and exc.strerror:
            return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    root_cause = next((exc for exc in causes if not hasattr(exc, "failures")), error)
    lines = [line.strip() for line in str(root_cause).splitlines() if line.strip()]
    return f"{type(root_cause).__name__}: {lines[0][:300] if lines else ''}"


_NEARLY_FULL_BYTES = 1 << 20  # torch's writer fails with "unexpected pos", not ENOSPC, on a full disk


def _exception_chain(error: BaseException):
    """The error, what caused it, and for DCP's CheckpointException every rank's failure."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        exc = stack.pop(0)
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        failures = getattr(exc, "failures", None)
        if isinstance(failures, dict):
            stack.extend(item[0] if isinstance(item, tuple) else item for item in failures.values())
        stack.extend([exc.__cause__, exc.__context__])


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    for line in text:
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ", "CheckpointException")):
            return line[:300]
    return type(error).__name__


def holds_checkpoint(path: str) -> bool:
    root = layout.checkpoint_root(path)
    if not root.is_dir():
        return False
    return layout.read_latest(root) is not None or layout.is_complete(root) or bool(layout.list_complete(root))
