"""`santa`: source anchoring network and target alignment for continual TTA (Chakrabarty et al., TMLR 2023).

The authors' repository goirik-chakrabarty/SANTA (commit 9909833) holds only a README that points to their
implementation inside mariodoebler/test-time-adaptation; this matches that implementation,
`classification/methods/santa.py` (commit 8b2ed63), with `utils/losses.py` (AugCrossEntropy), `conf.py` (SANTA,
CONTRAST defaults) and `cfgs/{cifar10_c,cifar100_c,imagenet_c}/santa.yaml`, step for step:
- model in eval mode, BatchNorm on test-batch statistics, only the normalisation layers' affine parameters trained
  (Adam lr 1e-3 on CIFAR; SGD lr 0.01, momentum 0.9, Nesterov on ImageNet-C), the projector in its own optimizer
  group at the same lr; the source anchor is a frozen copy of the configured model (submodule `anchor`).
- prepare(source): class prototypes of the source features (methods/_contrast.py: last nn.Linear = classifier).
- per test batch: features/logits of x and of tta_augment(x) (CoTTA's augmentation), anchor logits of x;
  loss = λ_trg · mean(-½ Σ softmax(f(x)) log softmax(a(x)) - ½ Σ softmax(f(x_aug)) log softmax(a(x)))
  + λ_cont · SupCon([nearest source prototype, features, augmented features]) (temperature 0.1, projector dim 128);
  one optimizer step; the returned logits are the student's on x, computed before the update.
Without `prepare` (library use) there are no prototypes and the contrastive term is left out.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from tta_bench.methods import register
from tta_bench.methods._augment import tta_augment
from tta_bench.methods._contrast import PrototypeContrast
from tta_bench.methods._losses import aug_cross_entropy
from tta_bench.methods.base import (
    NORM_TYPES,
    frozen_copy,
    make_optimizer,
    norm_affine_params,
    opt,
    optimizer_options,
    train_only,
    use_batch_stats,
)

SUITE = "mariodoebler/test-time-adaptation:classification/cfgs/{}/santa.yaml@8b2ed63"


@register("santa")
class SANTA(PrototypeContrast):
    """Self-training against a frozen source anchor + contrastive alignment to source prototypes."""

    options = {
        **optimizer_options("adam", lr=1e-3, also=("sgd",)),
        "steps": opt(1, "optimizer steps per test batch (the returned logits are the last step's forward, before its "
                        "update)"),
        "lambda_ce_trg": opt(1.0, "weight of the self-training loss: cross-entropy of the student's softmax (on x and "
                                  "its augmentation) against the frozen source anchor's log-softmax", ">=0"),
        "lambda_cont": opt(1.0, "weight of the SupCon loss aligning test features (and augmented ones) with their "
                                "nearest source class prototype", ">=0"),
        "temperature": opt(0.1, "SupCon temperature (divides the cosine similarities of the projected features)",
                           ">0"),
        "projection_dim": opt(128, "hidden and output width of the contrastive projector Linear-ReLU-Linear", ">=1"),
        "max_proto_samples": opt(100000, "source images for the class prototypes: prepare stops reading source "
                                         "batches once more than this many are held", ">=1"),
    }  # fmt: skip
    needs_source = True
    presets = {
        "cifar10-c": {"source": SUITE.format("cifar10_c"), "options": {}},
        "cifar100-c": {"source": SUITE.format("cifar100_c"), "options": {}},
        "imagenet-c": {
            "source": SUITE.format("imagenet_c"),
            "options": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True},
        },
    }

    def configure(self) -> None:
        use_batch_stats(self.model)
        self.optimizer = make_optimizer(train_only(self.model, norm_affine_params(self.model, NORM_TYPES)), self.hp)
        self.anchor = frozen_copy(self.model)
        self.setup_contrast()

    def prepare(self, source: Iterable) -> None:
        self.fit_prototypes(source)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            feats, outputs = self.tap(x)
            feats_aug, outputs_aug = self.tap(tta_augment(x))
            with torch.no_grad():
                outputs_anchor = self.anchor(x)
            loss_st = aug_cross_entropy(outputs, outputs_aug, outputs_anchor).mean(0)
            loss = self.hp.lambda_ce_trg * loss_st + self.hp.lambda_cont * self.contrastive(feats, feats_aug)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return outputs.detach()
