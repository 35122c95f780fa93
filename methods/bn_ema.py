"""`bn_ema`: BatchNorm statistics updated at test time by an exponential moving average ("norm_ema" / BN-EMA).

Matches mariodoebler/test-time-adaptation@8b2ed63 (`classification/methods/norm.py` `BNEMA` with
`classification/methods/bn.py` `EMABatchNorm`, and `segmentation/methods/norm_ema.py` `NormEMA`): per test batch,

1. the whole model in train mode, one forward whose output is discarded: every BatchNorm layer normalises with the
   batch statistics and updates its running statistics, running <- (1 - m)·running + m·batch (PyTorch's BN
   update: the batch variance is the unbiased one, `num_batches_tracked` counts the batch);
2. the whole model in eval mode, a second forward: the prediction, normalised by the updated running statistics.

Nothing is trained (no gradient, no optimizer). The running statistics start at the source's and are never reset
by the method (continual), so they drift toward the stream's. Like the official, the first forward runs the
*whole* model in train mode (dropout, if any, is active in that pass, as in the official; the prediction pass
is in eval mode).

Momentum: the official keeps each layer's own `momentum` (PyTorch's default 0.1 in every model the suite loads);
`momentum=None` (the default) does the same, a number sets every BN layer's momentum to it. A layer whose momentum
is None (PyTorch's cumulative average) keeps it under `momentum=None`, as the official.

`predict(x)` is the eval-mode forward (the current running statistics, nothing updated). A model without
BatchNorm is refused with a UserError (the official would silently run the source model). Batch size 1 works
on BN layers that see spatial positions (a BatchNorm1d on (1, D) features fails in train mode, as in PyTorch).

Presets record the suite's official batch sizes (the method's only setting there): `classification/cfgs/
{cifar10_c,cifar100_c,imagenet_c}/norm_ema.yaml` (200, 200, 64) and `segmentation/cfgs/norm_ema.yaml` (1).
"""

from __future__ import annotations

import torch

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._norms import require_batchnorm
from tta_bench.methods.base import Adapter, bn_layers, opt

_SUITE = "mariodoebler/test-time-adaptation:"


@register("bn_ema")
class BNEMA(Adapter):
    """BN running statistics updated by an EMA of the test batches' statistics; predictions use the updated ones."""

    options = {
        "momentum": opt(
            None,
            "EMA momentum m of the BN running statistics (running <- (1-m)·running + m·batch); None: each layer's "
            "own momentum (the official; 0.1 in PyTorch models)",
            "(0,1]",
        ),
    }
    presets = {
        fam: {"source": f"{_SUITE}{path}/norm_ema.yaml@8b2ed63", "batch_size": bs, "options": {}}
        for fam, path, bs in (("cifar10-c", "classification/cfgs/cifar10_c", 200),
                              ("cifar100-c", "classification/cfgs/cifar100_c", 200),
                              ("imagenet-c", "classification/cfgs/imagenet_c", 64),
                              ("segmentation", "segmentation/cfgs", 1))
    }  # fmt: skip

    def configure(self) -> None:
        require_batchnorm(self.model, "bn_ema", "'tent' (trains LayerNorm/GroupNorm affine parameters) or 'source'")
        self.model.eval()
        self.model.requires_grad_(False)
        for name, m in bn_layers(self.model):
            if m.running_mean is None:
                raise UserError(
                    f"Method 'bn_ema' updates BatchNorm running statistics but layer '{name}' has none "
                    "(track_running_stats=False). Use 'norm' (batch statistics) or a model with running statistics."
                )
            if self.hp.momentum is not None:
                m.momentum = float(self.hp.momentum)

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        self.model.train()
        self.model(x)  # updates the running statistics; its output is discarded
        self.model.eval()
        return self.model(x)
