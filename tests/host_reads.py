"""Counting what would synchronise a CUDA device with the host, on CPU.

On CPU nothing waits for a device, so torch.cuda.set_sync_debug_mode cannot count; instead every
op that reads device data back to the host, or whose output size depends on device data, is
recorded as it is dispatched (TorchDispatchMode sees every aten op, in forward and backward):
  - `.item()`, `bool(t)`, `int(t)`, `float(t)` (aten._local_scalar_dense);
  - `.tolist()` (no aten op: the method is wrapped while counting);
  - torch.bincount, nonzero, masked_select, unique, boolean-mask indexing (output size);
  - repeat_interleave without output_size (reads the sum of the repeats);
  - a tensor made from Python data (aten.lift_fresh: on CUDA a host-to-device copy).
tests/gpu/test_sync_count.py counts the same layer with torch.cuda.set_sync_debug_mode.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_ALWAYS = {
    aten._local_scalar_dense.default: "item/bool/int/float",
    aten.bincount.default: "bincount",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.lift_fresh.default: "tensor from host data",
}


class HostReads(TorchDispatchMode):
    """with HostReads() as reads: ...; reads.events lists what would sync, in order."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []
        self._tolist = None

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        events, original = self.events, self._tolist

        def counting_tolist(tensor):
            events.append("tolist")
            return original(tensor)

        torch.Tensor.tolist = counting_tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if func in _ALWAYS:
            self.events.append(_ALWAYS[func])
        elif packet in (aten._unique2, aten.unique_consecutive, aten.unique_dim):
            self.events.append("unique")
        elif packet is aten.index and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.events.append("boolean-mask index")
        elif packet is aten.repeat_interleave and kwargs.get("output_size") is None and len(args) < 3:
            self.events.append("repeat_interleave without output_size")
        return func(*args, **kwargs)
