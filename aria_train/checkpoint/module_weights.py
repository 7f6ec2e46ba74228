"""Reading one module's weights out of a training checkpoint, in one process and without the
rest of the run: how a stage starts a part of its model from another stage's run (stage 2's
ViT from stage 0's, through `vision.init_from`).

The tensors are read with DCP in no-dist mode, so every rank reads them by itself (no
collective: other ranks may be elsewhere), at the shapes the checkpoint holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from aria_train.checkpoint import layout
from aria_train.checkpoint import state as ckpt_state
from aria_train.errors import UserError


@dataclass
class SavedModule:
    path: Path  # the iter_ directory read
    metadata: dict  # its metadata.json (stage, iteration, ...)
    tensors: dict  # name inside the module -> tensor, at the saved shape


def holds_training_checkpoint(path) -> bool:
    """A run's save directory (with `latest`) or one of its iter_ directories."""
    path = Path(path)
    return path.is_dir() and (layout.read_latest(path) is not None or (path / layout.DCP_METADATA_FILE).is_file())


def read_module(path, prefix: str, names) -> SavedModule:
    """The checkpoint tensors `model.<prefix><name>` for each of `names` (the module's state-dict
    keys), at their saved shapes. UserError (one line) when the checkpoint lacks any of them."""
    directory = layout.resolve_load_dir(path)
    meta = layout.read_metadata(directory)
    saved = layout.check_dcp_files(directory).state_dict_metadata
    keys = {name: f"{ckpt_state.MODEL_PREFIX}{prefix}{name}" for name in names}
    missing = [key for key in keys.values() if key not in saved]
    if missing:
        raise UserError(f"checkpoint {directory} (stage {meta.get('stage')}) holds no {prefix.rstrip('.')} weights: "
                        f"{missing[0]} is missing" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    entries = {key: torch.empty(tuple(saved[key].size), dtype=saved[key].properties.dtype) for key in keys.values()}
    try:
        with ckpt_state.quiet_sharded_tensor():
            dcp.load(entries, checkpoint_id=str(directory), no_dist=True)
    except Exception as error:
        raise UserError(f"checkpoint {directory} could not be read: {str(error).strip().splitlines()[0][:300]}")
    return SavedModule(directory, meta, {name: entries[key] for name, key in keys.items()})
