"""`tent`: fully test-time adaptation by entropy minimisation (Wang et al., ICLR 2021).

Matches DequanWang/tent `tent.py`: BN layers use test-batch statistics (running stats dropped), only
their affine parameters are trained, the loss is the mean softmax entropy of the batch, and the
prediction returned is the one computed *before* the update in the same forward pass (tent's
`forward_and_adapt` returns `outputs` of the pre-step forward). Defaults are those of tent's CIFAR-10-C
config (`cfgs/cifar10/tent.yaml`: Adam, lr 1e-3, betas (0.9, 0.999), wd 0, 1 step); its ImageNet-C config
uses SGD lr 0.00025, momentum 0.9 (`--set method.optimizer=sgd --set method.lr=0.00025`).
"""

from __future__ import annotations

import torch

from methods import register
from methods.base import (
    Adapter,
    make_optimizer,
    norm_affine_params,
    optimizer_defaults,
    softmax_entropy_mean,
    train_only,
    use_batch_stats,
)


@register("tent")
class Tent(Adapter):
    """Entropy minimisation on BatchNorm affine parameters with test-batch statistics."""

    defaults = {**optimizer_defaults("adam", lr=1e-3), "steps": 1}

    def configure(self) -> None:
        use_batch_stats(self.model)
        params = train_only(self.model, norm_affine_params(self.model))
        self.optimizer = make_optimizer(params, self.hp)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            outputs = self.model(x)
            loss = softmax_entropy_mean(outputs)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return outputs
