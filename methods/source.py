"""`source`: the unadapted source model (the baseline every table starts from)."""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods.base import Adapter


@register("source")
class Source(Adapter):
    """No adaptation: the source model in eval mode."""

    options = {}  # nothing to set: no adaptation

    def configure(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)
