"""An optimizer's state as plain named tensors, so a prepared adapter can keep it in its `state_dict()`.

The harness caches the prepare stage as `adapter.state_dict()` (tensors only) and loads it into a fresh adapter;
an adapter whose official code carries the optimizer state from its warm-up into the stream (RMT: Adam's moments,
or SGD's momentum buffers, are saved in the warm-up checkpoint and kept) registers these tensors as buffers after
the warm-up and puts them back into its optimizer when a cached state is loaded, so a cached run equals a fresh one.
"""

from __future__ import annotations

import torch


def _params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def state_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """{"<flat parameter index>_<state key>": tensor copy}: every tensor of the optimizer's per-parameter state."""
    out = {}
    for i, p in enumerate(_params(optimizer)):
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):  # SGD without momentum keeps momentum_buffer=None: nothing to save
                out[f"{i}_{key}"] = value.detach().clone()
    return out


def load_state_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the optimizer's per-parameter state by `tensors` (as `state_tensors` names them), copied.

    Each tensor goes to its parameter's device, except Adam's `step`, which torch keeps on the CPU (no
    capturable/fused optimizers here), whatever device the cached state was loaded to.
    """
    params = _params(optimizer)
    optimizer.state.clear()
    for name, value in tensors.items():
        index, key = name.split("_", 1)
        p = params[int(index)]
        device = "cpu" if key == "step" else p.device
        optimizer.state[p][key] = value.detach().to(device, copy=True)
