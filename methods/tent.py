"""`tent`: fully test-time adaptation by entropy minimisation (Wang et al., ICLR 2021).

Matches DequanWang/tent `tent.py`: BN layers use test-batch statistics (running stats dropped), only
their affine parameters are trained, the loss is the mean softmax entropy of the batch, and the
prediction returned is the one computed *before* the update in the same forward pass (tent's
`forward_and_adapt` returns `outputs` of the pre-step forward). Defaults are those of tent's CIFAR-10-C
config (`cfgs/tent.yaml`: Adam, lr 1e-3, betas (0.9, 0.999), wd 0, 1 step).

Presets (applied by the harness per benchmark family, see tta_bench/presets.py): CIFAR-10-C is tent's own
config; tent has no CIFAR-100-C or ImageNet file, so CIFAR-100-C is CoTTA's Tent baseline config and ImageNet-C
the common suite's (SGD lr 0.00025, momentum 0.9, Nesterov — the `NESTEROV: True` default of tent's, CoTTA's
and the suite's `conf.py`; the paper: "SGD with momentum", lr 0.00025, batch 64).

Normalisation layers: BatchNorm, LayerNorm and GroupNorm affine parameters are trained (as the suite's
`methods/tent.py` does for ViTs); only BatchNorm switches to test-batch statistics, LN/GN normalise per sample
anyway. Commits read: DequanWang/tent e9e926a, qinenergy/cotta c212a20, mariodoebler/test-time-adaptation 8b2ed63.
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
    softmax_entropy_mean,
    train_only,
    use_batch_stats,
)


@register("tent")
class Tent(Adapter):
    """Entropy minimisation on BatchNorm affine parameters with test-batch statistics."""

    options = {
        **optimizer_options("adam", lr=1e-3, also=("sgd",)),
        "steps": opt(1, "entropy-minimisation steps per test batch (the returned logits are the first forward's)"),
    }
    presets = {
        "cifar10-c": {"source": "DequanWang/tent:cfgs/tent.yaml@e9e926a", "batch_size": 200,
                      "options": {"optimizer": "adam", "lr": 1e-3, "betas": (0.9, 0.999), "wd": 0.0, "steps": 1}},
        "cifar100-c": {"source": "qinenergy/cotta:cifar/cfgs/cifar100/tent.yaml@c212a20", "batch_size": 200,
                       "options": {"optimizer": "adam", "lr": 1e-3, "betas": (0.9, 0.999), "wd": 0.0, "steps": 1}},
        "imagenet-c": {"source": "mariodoebler/test-time-adaptation:classification/cfgs/imagenet_c/tent.yaml@8b2ed63",
                       "batch_size": 64, "options": {"optimizer": "sgd", "lr": 0.00025, "momentum": 0.9,
                                                     "nesterov": True, "wd": 0.0, "steps": 1}},
        "segmentation": {"source": "mariodoebler/test-time-adaptation:segmentation/cfgs/tent.yaml@8b2ed63",
                         "batch_size": 1,
                         "options": {"optimizer": "sgd", "lr": 2.5e-4, "momentum": 0.9, "nesterov": False,
                                     "wd": 5e-4, "steps": 1},
                         "note": "the suite resets Tent after every image there (EPISODIC: True); not applied"},
    }  # fmt: skip

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
