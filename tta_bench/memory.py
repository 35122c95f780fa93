"""Memory of one adaptation step, two ways.

- `adapt_mb` (device-independent, comparable with the EcoTTA paper's tables):
  parameters and buffers of the adapted model + gradients of the trained parameters + optimizer state
  + extra model copies the adapter holds (teachers, anchors, ...) + bytes saved for backward during one
  step. Saved tensors are captured with `torch.autograd.graph.saved_tensors_hooks`; each underlying
  storage is counted once, storages that are parameters/buffers are not counted again, and the figure
  is the peak of what is alive at once (so two forward/backward passes in one step count as the larger).
  The source checkpoint an adapter keeps for `reset()` is not counted (it can live on disk).
- `peak_device_mb`: `torch.cuda.max_memory_allocated` during the step (CUDA only, else None).

`measure(adapter, x)` runs the step on a deep copy, so the adapter itself is not changed; `StepMemory` measures
a step the caller runs (the harness: the stream's first batch, so no extra step is paid).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

MB = 2.0**20


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    s = t.untyped_storage()
    return (str(t.device), s.data_ptr())


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views and shared tensors counted once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is not None:
            seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def module_tensors(m: nn.Module) -> list[torch.Tensor]:
    return [p.data for p in m.parameters()] + [b for b in m.buffers()]


def optimizer_tensors(opt: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    if opt is None:
        return []
    return [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]


class SavedTensorTracker:
    """Context manager tracking bytes saved for backward that are alive at once (peak), per storage."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.exclude = {_storage_key(t) for t in exclude}
        self.live: dict[tuple[str, int], list] = {}  # key -> [bytes, refcount]
        self.current = 0
        self.peak = 0

    def _pack(self, t: torch.Tensor) -> Any:
        key = _storage_key(t)
        if key in self.exclude or t.untyped_storage().nbytes() == 0:
            return t
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [t.untyped_storage().nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        return _Held(t, self, key)

    def _release(self, key: tuple[str, int]) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __enter__(self) -> SavedTensorTracker:
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


class _Held:
    """Wraps a saved tensor; when autograd frees it (after backward), its bytes stop being live."""

    __slots__ = ("t", "__weakref__")

    def __init__(self, t: torch.Tensor, tracker: SavedTensorTracker, key: tuple[str, int]) -> None:
        self.t = t
        weakref.finalize(self, tracker._release, key)


def _unpack(obj: Any) -> torch.Tensor:
    return obj.t if isinstance(obj, _Held) else obj


class StepMemory:
    """Context manager measuring the adaptation step run inside it on `adapter` itself (no copy, no extra step).

    The harness wraps the stream's first real step in it, so `adapt_mb` costs no additional adaptation step:

        with StepMemory(adapter, x) as mem:
            out = adapter(x)
        mem.result  # the dict `measure` returns

    Saved-tensor hooks only wrap what autograd saves; the step's numbers are unchanged.
    """

    def __init__(self, adapter: nn.Module, x: torch.Tensor) -> None:
        self.adapter, self.x = adapter, x
        self.result: dict[str, float | None] = {}

    def __enter__(self) -> StepMemory:
        a = self.adapter
        self.model_t = module_tensors(getattr(a, "model", a))
        self.all_t = module_tensors(a)
        self.cuda = self.x.is_cuda
        if self.cuda:
            torch.cuda.synchronize(self.x.device)
            torch.cuda.reset_peak_memory_stats(self.x.device)
        self.tracker = SavedTensorTracker(exclude=self.all_t).__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.tracker.__exit__(*exc)
        if exc[0] is not None:
            return
        a = self.adapter
        model_keys = {_storage_key(t) for t in self.model_t}
        copies = [t for t in self.all_t if _storage_key(t) not in model_keys]
        trainable = (
            a.trainable_parameters()
            if hasattr(a, "trainable_parameters")
            else [p for p in a.parameters() if p.requires_grad]
        )
        peak = None
        if self.cuda:
            torch.cuda.synchronize(self.x.device)
            peak = torch.cuda.max_memory_allocated(self.x.device) / MB
        parts = {
            "params_mb": tensor_bytes(self.model_t) / MB,
            "grads_mb": sum(p.numel() * p.element_size() for p in trainable) / MB,
            "optimizer_mb": tensor_bytes(optimizer_tensors(getattr(a, "optimizer", None))) / MB,
            "copies_mb": tensor_bytes(copies) / MB,
            "saved_mb": self.tracker.peak / MB,
        }
        self.result = {"adapt_mb": sum(parts.values()), **parts, "peak_device_mb": peak}


def measure(adapter: nn.Module, x: torch.Tensor) -> dict[str, float | None]:
    """Memory (MB, 2^20 bytes) of one adaptation step of `adapter` on batch `x`, on a deep copy.

    Returns `adapt_mb` and its parts (`params_mb`, `grads_mb`, `optimizer_mb`, `copies_mb`, `saved_mb`)
    and `peak_device_mb` (None off CUDA). The harness measures its first real step instead (`StepMemory`).
    """
    a = copy.deepcopy(adapter)
    with StepMemory(a, x) as mem:
        a(x)
    del a
    return mem.result
