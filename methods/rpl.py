"""`rpl`: Robust Pseudo-Labeling (Rusak et al., "If your data distribution shifts, use self-learning", TMLR 2022).

Matches mariodoebler/test-time-adaptation `classification/methods/rpl.py` (commit 8b2ed63, which builds on
oripress/CCC `models/rpl.py`) with `classification/utils/losses.py::GeneralizedCrossEntropy` and
`classification/conf.py` (`RPL.Q = 0.8`), step for step:
- the model in eval mode; every BatchNorm layer normalises with the test batch's statistics (running
  statistics dropped) and the affine weight/bias of the normalisation layers (BatchNorm, LayerNorm, GroupNorm)
  are the only trained parameters;
- per batch: logits = model(x); hard pseudo-labels ŷ = argmax logits; loss = mean over the batch of the
  generalised cross-entropy (Zhang & Sabuncu 2018) GCE = (1 - p_ŷ^q) / q with p = softmax(logits), q = 0.8;
  one optimiser step; the prediction returned is the one computed *before* the update (as the official).
Defaults: the suite's `cfgs/cifar10_c/rpl.yaml` (Adam, lr 1e-3, betas (0.9, 0.999), wd 0, 1 step, batch 200);
ImageNet-C: SGD lr 5e-4, momentum 0.9, Nesterov (the suite's `OPTIM.NESTEROV = True` default), batch 64.
Deviations: none in the rule. BatchNorm1d layers use batch statistics through `use_batch_stats` (the suite puts
them in train mode, which normalises with the same batch statistics).
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods.base import (
    Adapter,
    make_optimizer,
    norm_affine_params,
    opt,
    optimizer_options,
    train_only,
    use_batch_stats,
)

_ADAM = {"optimizer": "adam", "lr": 1e-3, "wd": 0.0}
_SUITE = "mariodoebler/test-time-adaptation:classification/cfgs/{}/rpl.yaml@8b2ed63"


def gce_loss(logits: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample generalised cross-entropy against the argmax pseudo-label: (1 - p_ŷ^q) / q, shape (N,)."""
    probs = logits.float().softmax(1)
    p_hat = probs.gather(1, probs.argmax(1, keepdim=True)).squeeze(1)
    return (1.0 - p_hat**q) / q


@register("rpl")
class RPL(Adapter):
    """Generalised cross-entropy on hard pseudo-labels; norm-layer affine parameters, test-batch BN statistics."""

    options = {
        **optimizer_options("adam", lr=1e-3, also=("sgd",)),
        "steps": opt(1, "GCE optimizer steps per test batch (the returned logits are the last step's forward, before "
                        "its update)"),
        "q": opt(0.8, "exponent of the generalised cross-entropy (1 - p^q) / q; q -> 0 is CE, q = 1 is MAE", "(0,1]"),
    }  # fmt: skip
    presets = {
        "cifar10-c": {"source": _SUITE.format("cifar10_c"), "batch_size": 200, "options": _ADAM},
        "cifar100-c": {"source": _SUITE.format("cifar100_c"), "batch_size": 200, "options": _ADAM},
        "imagenet-c": {
            "source": _SUITE.format("imagenet_c"),
            "batch_size": 64,
            "options": {"optimizer": "sgd", "lr": 5e-4, "momentum": 0.9, "nesterov": True, "wd": 0.0},
        },
    }

    def configure(self) -> None:
        use_batch_stats(self.model)
        params = train_only(self.model, norm_affine_params(self.model))
        self.optimizer = make_optimizer(params, self.hp)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            outputs = self.model(x)
            loss = gce_loss(outputs, self.hp.q).mean(0)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return outputs
