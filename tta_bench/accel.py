"""Faster adaptation steps without other results: `--compile` (torch.compile of the adapted model).

`compile_adapter(adapter)` compiles the adapter's `model` in place (`nn.Module.compile`: parameter names,
`state_dict`, optimizer parameter references and the adapter's source snapshot are unchanged, so `reset()`,
caches and checkpoints work as in eager mode). Forward and backward of the model run as compiled graphs; the
method's own code (losses, filters, EMA teachers, optimizer step) stays eager. Where compiling fails (no C++
compiler for inductor on CPU, an unsupported op), the step falls back to eager with a warning
(`torch._dynamo.config.suppress_errors`), so `--compile` never stops a run.

Tolerance (tests/test_throughput.py): on a small BatchNorm CNN, 3 Tent steps compiled give logits within 1e-4
(absolute) of eager fp32 (measured 3e-7 with inductor on CPU); bf16 autocast (`--precision amp`) within 0.02 of
the fp32 logits (|logits| ~ 0.6; measured 2e-3), argmax agreeing on >= 90 % of images.
Channels-last memory format is used on CUDA by the runner (`build_adapter`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn


def compile_adapter(adapter: nn.Module, backend: str = "inductor", mode: str | None = None) -> dict[str, Any]:
    """Compile `adapter.model` in place; returns what was done (recorded in config.json's execution)."""
    model = getattr(adapter, "model", None)
    if not isinstance(model, nn.Module) or not hasattr(model, "compile"):
        warnings.warn("--compile: this adapter has no `model` module to compile; running eager.", stacklevel=2)
        return {"compiled": False, "reason": "no model module"}
    try:
        import torch._dynamo as dynamo

        dynamo.config.suppress_errors = True  # a failed compilation runs that frame eagerly, with a warning
        model.compile(backend=backend, mode=mode)
    except Exception as e:  # noqa: BLE001 - any failure to set up compilation: eager, said once
        warnings.warn(f"--compile: torch.compile is unavailable here ({type(e).__name__}: {e}); running eager.",
                      stacklevel=2)  # fmt: skip
        return {"compiled": False, "reason": f"{type(e).__name__}: {e}"}
    return {"compiled": True, "backend": backend, "mode": mode, "torch": torch.__version__}
