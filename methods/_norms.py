"""Which normalisation layers a model has, and the refusal of adapters that need BatchNorm statistics.

Adapters built on BatchNorm's batch statistics (`norm`, `alpha_bn`, `core`) have nothing to act on in a model
normalised by LayerNorm/GroupNorm only (ViTs, ConvNeXt, GN ResNets): they would silently return the source
model. They refuse such a model with a UserError naming the method, the model's normalisation layers and what
to use instead.
"""

from __future__ import annotations

import re

import torch.nn as nn

from tta_bench.kernel import UserError
from tta_bench.methods.base import BN_TYPES


def norm_layer_types(model: nn.Module) -> list[str]:
    """Sorted class names of the model's normalisation layers (BatchNorm*, LayerNorm, GroupNorm, ...)."""
    return sorted({type(m).__name__ for m in model.modules() if re.search(r"Norm(\dd)?$", type(m).__name__)})


def require_batchnorm(model: nn.Module, method: str, instead: str) -> None:
    """Raise a UserError unless `model` has at least one BatchNorm layer (with or without running statistics)."""
    if any(isinstance(m, BN_TYPES) for m in model.modules()):
        return
    found = ", ".join(norm_layer_types(model)) or "no normalisation layers"
    raise UserError(
        f"Method '{method}' adapts BatchNorm statistics, but this model has no BatchNorm layer ({found}). "
        f"Use {instead}, or a BatchNorm model."
    )
