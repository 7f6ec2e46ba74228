"""What goes into a checkpoint, as one flat DCP state dict whose keys never depend on the layout.

    model.<param name>                       dense parameters and persistent buffers (replicated
                                             on every rank; DCP writes each once)
    model.<experts module>.<w>.expert_<g>    routed experts, one key per GLOBAL expert index g
                                             (e.g. model.layers.1.moe.experts.w_down.expert_5);
                                             a rank saves/loads the experts it holds
    optim.<param name>.<master|exp_avg|exp_avg_sq>
                                             1-D [numel of the full parameter]: each rank
                                             contributes the flat ranges its (ZeRO-1) optimizer
                                             holds, at their global offsets; DCP reshards on load
    optim.step                               optimizer steps (int64)
    optim.format                             the optimizer state format ("aria-flat-v1")
    train.state                              {"step", "consumed_samples"} (JSON text)
    train.data                               the data iterator's state_dict() (pickled)
    rng.rank_00003                           python / numpy / torch / CUDA RNG of rank 3 (pickled)

The optimizer's "aria-flat-v1" pieces (aria_train.optim.flat_state.FlatShard) become DCP objects
here: a piece covering the whole parameter is a plain tensor (replicated copies are deduplicated
by DCP), a partial one a 1-D ShardedTensor whose local shard is the piece. ShardedTensor insists
that its metadata cover the full tensor, so the rest is described by placeholder shards placed on
another rank; DCP only ever reads a ShardedTensor's LOCAL shards and global size, so the
placeholders are never written or read (each rank's real pieces are, and DCP checks at save time
that the real pieces of all ranks tile every tensor exactly).
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import random
import warnings
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from aria_train.moe.experts import expert_parameter_layouts

MODEL_PREFIX = "model."
OPTIM_PREFIX = "optim."
OPTIM_STEP_KEY = "optim.step"
OPTIM_FORMAT_KEY = "optim.format"
TRAIN_STATE_KEY = "train.state"
DATA_STATE_KEY = "train.data"
RNG_PREFIX = "rng.rank_"


def rng_key(rank: int) -> str:
    return f"{RNG_PREFIX}{rank:05d}"


# ---- model ----------------------------------------------------------------------------------
def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under layout-independent keys (routed experts: one key per global
    expert, from their ExpertLayout). The values share storage with the model, so a DCP load
    into them loads the model in place."""
    expert_layouts = expert_parameter_layouts(model)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        layout = expert_layouts.get(name)
        if layout is None:
            state[MODEL_PREFIX + name] = tensor
            continue
        for local in range(layout.num_local_experts):
            state[f"{MODEL_PREFIX}{name}.expert_{layout.global_index(local)}"] = tensor[local]
    return state


DECODER_PREFIX = "language_model."  # where the multimodal model keeps the text decoder


def map_decoder_keys(entries: dict, saved_keys) -> dict[str, str]:
    """A text-only checkpoint (stage 1: model.layers...) loads into the multimodal model
    (model.language_model.layers...) and the other way round: entries the checkpoint lacks under
    their own name are renamed (in place) to the decoder's name in the other convention when the
    checkpoint has that. Returns {saved key: model key} of the renamed ones."""
    saved_keys = set(saved_keys)
    mm = MODEL_PREFIX + DECODER_PREFIX
    renamed = {}
    for key in [k for k in entries if k.startswith(MODEL_PREFIX) and k not in saved_keys]:
        if key.startswith(mm):
            other = MODEL_PREFIX + key[len(mm):]
        else:
            other = mm + key[len(MODEL_PREFIX):]
        if other in saved_keys and other not in entries:
            entries[other] = entries.pop(key)
            renamed[other] = key
    return renamed


# ---- optimizer ------------------------------------------------------------------------------
def as_pieces(value) -> list:
    """One FlatShard or a list of them, as a list."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def optimizer_state(optimizer) -> tuple[dict[str, Any], dict]:
    """(DCP entries, the optimizer's own sharded state dict). The DCP tensors are views of the
    optimizer's live state (as its sharded_state_dict() returns them)."""
    flat = optimizer.sharded_state_dict()
    entries: dict[str, Any] = {
        OPTIM_STEP_KEY: torch.tensor(int(flat["step"]), dtype=torch.int64),
        OPTIM_FORMAT_KEY: str(flat["format"]),
    }
    for name, per_state in flat["state"].items():
        for key, value in per_state.items():
            dcp_value = flat_pieces_to_dcp(as_pieces(value))
            if dcp_value is not None:
                entries[f"{OPTIM_PREFIX}{name}.{key}"] = dcp_value
    return entries, flat


def flat_pieces_to_dcp(pieces: list) -> Optional[torch.Tensor]:
    """FlatShards of one full tensor -> a DCP-saveable/loadable 1-D object of size [numel]
    (None when this rank holds none of it)."""
    pieces = [p for p in pieces if p.local.numel() > 0]
    if not pieces:
        return None
    numel = pieces[0].global_numel
    if len(pieces) == 1 and pieces[0].offset == 0 and pieces[0].local.numel() == numel:
        return pieces[0].local.view(-1)
    return _flat_sharded_tensor(numel, [(p.offset, p.local.view(-1)) for p in pieces])


def _flat_sharded_tensor(numel: int, local: list[tuple[int, torch.Tensor]]):
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor, ShardedTensorMetadata
    from torch.distributed._shard.sharded_tensor.metadata import TensorProperties

    if not dist.is_initialized() or dist.get_world_size() < 2:
        raise RuntimeError("a partial optimizer shard needs torch.distributed with at least 2 ranks")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = sorted(local, key=lambda item: item[0])
    shards, shards_md, cursor = [], [], 0
    other = (rank + 1) % world
    for offset, tensor in local:
        if offset < cursor or offset + tensor.numel() > numel:
            raise ValueError(f"optimizer pieces overlap or exceed the tensor: offset {offset}, numel {tensor.numel()}")
        if offset > cursor:  # placeholder for what other ranks hold; never read or written here
            shards_md.append(ShardMetadata([cursor], [offset - cursor], f"rank:{other}/cpu"))
        md = ShardMetadata([offset], [tensor.numel()], f"rank:{rank}/{tensor.device}")
        shards_md.append(md)
        shards.append(Shard(tensor, md))
        cursor = offset + tensor.numel()
    if cursor < numel:
        shards_md.append(ShardMetadata([cursor], [numel - cursor], f"rank:{other}/cpu"))
    properties = TensorProperties(dtype=local[0][1].dtype)
    metadata = ShardedTensorMetadata(shards_md, torch.Size([numel]), properties)
    return ShardedTensor._init_from_local_shards_and_global_metadata(shards, metadata)


def global_size(value) -> Optional[torch.Size]:
    """The full size of a plain tensor or a sharded one (without ShardedTensor's deprecated
    torch-function path); None for non-tensors."""
    if hasattr(value, "local_shards"):
        return torch.Size(value.metadata().size)
    if isinstance(value, torch.Tensor):
        return value.size()
    return None


@contextlib.contextmanager
def quiet_sharded_tensor():
    """DCP still handles ShardedTensor (this module's flat optimizer pieces) through torch
    functions that warn about its deprecation on every call; keep the log readable."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecating ShardedTensor.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message="torch.distributed is disabled.*", category=UserWarning)
        yield


def local_tensors(value) -> list[torch.Tensor]:
    """The local tensor(s) of what flat_pieces_to_dcp returned, in offset order."""
    if hasattr(value, "local_shards"):
        return [shard.tensor for shard in sorted(value.local_shards(), key=lambda s: s.metadata.shard_offsets[0])]
    return [value]


# ---- RNG --------------------------------------------------------------------------------------
class ProcessRNG:
    """The process's python / numpy / torch / CUDA generators as a Stateful part (saved per rank,
    pickled, under rng_key(rank))."""

    def state_dict(self) -> dict:
        state = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": None,
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


# ---- small serialised values ----------------------------------------------------------------
def encode_json(value: dict) -> str:
    return json.dumps(value, sort_keys=True)


def decode_json(value) -> dict:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    return json.loads(value)


def encode_pickle(value) -> bytes:
    return pickle.dumps(value)


def decode_pickle(value):
    if isinstance(value, io.BytesIO):
        value = value.getvalue()
    return pickle.loads(value)


# ---- staging for async saves ----------------------------------------------------------------
def clone_state(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a DCP state dict that training can no longer change (tensors cloned to CPU,
    sharded tensors rebuilt around cloned local shards)."""
    staged: dict[str, Any] = {}
    for key, value in state.items():
        if hasattr(value, "local_shards"):
            numel = int(value.metadata().size[0])
            local = [(int(s.metadata.shard_offsets[0]), s.tensor.detach().to("cpu", copy=True))
                     for s in value.local_shards()]
            staged[key] = _flat_sharded_tensor(numel, local)
        elif isinstance(value, torch.Tensor):
            staged[key] = value.detach().to("cpu", copy=True)
        else:
            staged[key] = value
    return staged

