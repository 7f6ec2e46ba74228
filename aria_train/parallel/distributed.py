"""Starting and stopping torch.distributed for a run launched by torchrun (or alone)."""

import datetime
import gc
import os

import torch
import torch.distributed as dist

from aria_train.parallel.groups import ParallelGroups


def init_distributed(backend: str = "auto", timeout_minutes: float = 10.0) -> torch.device:
    """Initialises the default process group when WORLD_SIZE is set; returns this rank's device."""
    use_cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    device = torch.device("cpu")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return device


def all_reduce_sum(tensor: torch.Tensor, groups: ParallelGroups) -> torch.Tensor:
    """Sums `tensor` over the world of `groups` in place (NCCL needs it on the GPU; the result
    stays put). Without torch.distributed the tensor is returned as it is."""
    if not groups.distributed:
        return tensor
    if dist.get_backend(groups.world_group) == "nccl" and not tensor.is_cuda:
        on_gpu = tensor.cuda()
        dist.all_reduce(on_gpu, group=groups.world_group)
        tensor.copy_(on_gpu.cpu())
    else:
        dist.all_reduce(tensor, group=groups.world_group)
    return tensor


def shutdown() -> None:
    """Destroys every process group so that their worker threads are joined now, not during
    interpreter exit.

    A gloo worker thread that drops the last reference to a finished asynchronous collective
    (e.g. ZeRO-1's parameter all-gather, still held by a later barrier) decrefs Python-visible
    tensors and so needs the GIL; if that happens after Python finalisation began, the thread
    is torn down inside a noexcept destructor and the process aborts ("terminate called without
    an active exception", SIGABRT) after a successful run. A process group's destructor joins
    its threads with the GIL released, but it only runs once nothing references the group:
    reference cycles (the optimizer's gradient hooks hold the optimizer, which holds its
    groups) are collected before destroy_process_group drops the registry's references, and
    once more after it. Call this after the objects of the run have gone out of scope."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
