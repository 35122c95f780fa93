"""`norm`: BN-adapt — normalise with test-batch statistics (Schneider et al., NeurIPS 2020;
Nado et al. 2020). The "norm" baseline of Tent (Wang et al., ICLR 2021), matching tent's `norm.py`
with its default of pure batch statistics (no source prior)."""

from __future__ import annotations

import torch

from methods import register
from methods.base import Adapter, use_batch_stats


@register("norm")
class Norm(Adapter):
    """BN-adapt: every BatchNorm layer uses the current test batch's mean and variance."""

    defaults = {}

    def configure(self) -> None:
        use_batch_stats(self.model)
        self.model.requires_grad_(False)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)
