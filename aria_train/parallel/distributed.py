"""Starting and stopping torch.distributed for a run launched by torchrun (or alone)."""

import datetime
import os

import torch
import torch.distributed as dist


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


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums `tensor` over all ranks in place (NCCL needs it on the GPU; the result stays put)."""
    if not dist.is_initialized():
        return tensor
    if dist.get_backend() == "nccl" and not tensor.is_cuda:
        on_gpu = tensor.cuda()
        dist.all_reduce(on_gpu)
        tensor.copy_(on_gpu.cpu())
    else:
        dist.all_reduce(tensor)
    return tensor


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
