"""`norm`: BN-adapt — normalise with test-batch statistics (Schneider et al., NeurIPS 2020;
Nado et al. 2020). The "norm" baseline of Tent (Wang et al., ICLR 2021), matching tent's `norm.py`
with its default of pure batch statistics (no source prior).

A model without BatchNorm (ViT: LayerNorm; GroupNorm ResNets) is refused with a UserError: there are no batch
statistics to adapt (the suite's `methods/norm.py` would silently run the source model). Presets record the
official batch sizes (the method has no hyper-parameter): DequanWang/tent `cfgs/norm.yaml` (CIFAR-10-C, 200),
the suite's `cfgs/*/norm_test.yaml` (CIFAR-100-C 200, ImageNet-C 64, segmentation 1).
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods._norms import require_batchnorm
from tta_bench.methods.base import Adapter, use_batch_stats

SUITE = "mariodoebler/test-time-adaptation:classification/cfgs"


@register("norm")
class Norm(Adapter):
    """BN-adapt: every BatchNorm layer uses the current test batch's mean and variance."""

    options = {}  # nothing to set: the batch statistics are the method
    presets = {
        "cifar10-c": {"source": "DequanWang/tent:cfgs/norm.yaml@e9e926a", "batch_size": 200, "options": {}},
        "cifar100-c": {"source": f"{SUITE}/cifar100_c/norm_test.yaml@8b2ed63", "batch_size": 200, "options": {}},
        "imagenet-c": {"source": f"{SUITE}/imagenet_c/norm_test.yaml@8b2ed63", "batch_size": 64, "options": {}},
        "segmentation": {"source": "mariodoebler/test-time-adaptation:segmentation/cfgs/norm_test.yaml@8b2ed63",
                         "batch_size": 1, "options": {}},
    }  # fmt: skip

    def configure(self) -> None:
        require_batchnorm(self.model, "norm", "'tent' (trains LayerNorm/GroupNorm affine parameters) or 'source'")
        use_batch_stats(self.model)
        self.model.requires_grad_(False)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)
