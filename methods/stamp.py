"""`stamp`: open-world TTA with a stable memory bank and self-weighted entropy (Yu et al., ECCV 2024).

Matches yuyongcan/STAMP at dbdb2a9 (`src/methods/stamp.py` STAMP/RBM, `src/methods/setup.py` setup_stamp,
`src/utils/sam.py`, `src/utils/utils.py` get_accuracy, `src/utils/conf.py`, `src/data/data.py`), step for step:
- configure: whole model in train mode; BatchNorm on test-batch statistics (running stats dropped); the adapted
  parameters are the BN/LN/GN affine ones outside the top layers (names containing 'layer4', 'conv5_x', 'blocks.9',
  'blocks.10', 'blocks.11', 'norm.' or equal to 'norm', as in SAR); a frozen copy of the configured source model
  (`norm_model`, batch statistics, never updated) gives the consistency filter;
- each batch: under no_grad the model predicts the batch and `num_aug` augmented views of it; the prediction is the
  mean of the 1 + num_aug softmaxes (returned as its log: logits with the same softmax); samples enter the memory
  bank when the model's argmax on the original view agrees with the frozen source model's (`consistency_filter`,
  the official non-ImageNet branch; the ImageNet branch, C = 1000, has no such filter) and the entropy
  -sum p log(p + 1e-5) of the averaged prediction is below alpha * ln C, labelled with the original view's argmax;
- the memory bank (RBM, `memory_size` 64): class-balanced; while not full, a sample is appended to its class;
  when full, the oldest sample of a class with the largest per-class count EMA (count <- 0.9 count + 0.1 size,
  updated for every class each time the bank is read) among non-empty classes is dropped first, a tie drawn at
  random; reading the bank concatenates the classes in class order;
- when the bank holds any sample: self-weighted entropy on the bank: w_i = exp(-H_i) / sum_j exp(-H_j) * 64,
  loss = mean(w_i H_i) (the weights are not detached, as in the official code); SAM (rho 0.05) over SGD (the
  official `SAM(params, optim.SGD, lr=cfg.OPTIM.LR, rho=0.05)`: no momentum, no weight decay): first forward and
  backward, climb, second forward and backward at theta + eps, back to theta and the SGD step; then one step of a
  cosine learning-rate schedule (torch CosineAnnealingLR, T_max `cosine_t_max`: 150, 750 for ImageNet);
- outlier score (`ood_score(x)`, higher = more likely an outlier): the entropy of the averaged prediction, the
  negation of the official `-entropy(output)` ID score (so the outlier AUROC equals STAMP's AUROC).
- reset(): model, optimizer, memory bank and counts, and the schedule back to their start.

Defaults: `src/utils/conf.py` (STAMP.ALPHA 0.5, STAMP.NUM_AUG 15) and `cfgs/Online_TTA_os/cifar10_c_noise/stamp.yaml`
(OPTIM.LR 1e-4, batch 64, ResNet-18 CIFAR-10-C), with CIFAR-10-C's augmentation (the CoTTA transforms
`get_tta_transforms`: `augment=cotta`) and the non-ImageNet branch. The official values of the other benchmarks are
applied as presets per benchmark family: CIFAR-100-C (`cifar100_c_noise/stamp.yaml`): lr 0.01,
`augment=crop_flip` (RandomCrop(32, padding=4) + horizontal flip); ImageNet-C (`imagenet_c_places/stamp.yaml`, no
OPTIM.LR: conf default 1e-3): lr 1e-3, `augment=crop_flip`, `consistency_filter=false`, `cosine_t_max=750`; batch
size 64 everywhere (shown, not applied).

Deviations: (1) the augmented views are drawn per batch (one random transform per view for the whole batch, from
torch's RNG), not per image in the data loader; (2) a tie between classes when the full bank drops a sample is drawn
from torch's RNG, not Python's `random`; (3) the official code hard-codes 64 both as the bank size and as the
weights' scale; here both follow `memory_size` (64).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from tta_bench.methods import register
from tta_bench.methods._augment import tta_augment
from tta_bench.methods.base import (
    Adapter,
    entropy,
    frozen_copy,
    make_optimizer,
    opt,
    optimizer_options,
    train_only,
    use_batch_stats,
)
from tta_bench.methods.sar import TORCHVISION_VIT_TOP, sar_params

_REPO, _CFGS = "yuyongcan/STAMP", "cfgs/Online_TTA_os"
# setup_stamp: SAM(params, optim.SGD, lr=cfg.OPTIM.LR, rho=0.05) (SGD defaults: no momentum, no weight decay);
# conf.py STAMP.ALPHA 0.5, STAMP.NUM_AUG 15; stamp.py RBM(64, num_class), max_iter 150 (750 when num_class == 1000)
_OFFICIAL = {"optimizer": "sgd", "momentum": 0.0, "nesterov": False, "wd": 0.0, "rho": 0.05, "alpha": 0.5,
             "num_aug": 15, "memory_size": 64, "consistency_filter": True, "cosine_t_max": 150}  # fmt: skip
STAMP_SKIP = ("layer4", "conv5_x", "blocks.9", "blocks.10", "blocks.11", "norm.")


def stamp_params(model: nn.Module) -> list[nn.Parameter]:
    """Official `STAMP.collect_params` (SAR's list plus 'conv5_x'; SAR's rule for the zoo's wrapped and torchvision
    models): norm affine parameters outside the skipped top layers, model order."""
    return sar_params(model, STAMP_SKIP + TORCHVISION_VIT_TOP)


def crop_flip(x: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """RandomCrop(size, padding=4) (zero padding) + RandomHorizontalFlip, drawn per image."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, [padding] * 4)
    off = torch.randint(0, 2 * padding + 1, (n, 2))
    flip = torch.rand(n) < 0.5
    out = torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(off.tolist())])
    return torch.where(flip.to(x.device)[:, None, None, None], out.flip(-1), out)


def prob_entropy(p: torch.Tensor) -> torch.Tensor:
    """Official `entropy(p)`: -sum p log(p + 1e-5) over classes."""
    return -(p * torch.log(p + 1e-5)).sum(1)


class BalancedBank:
    """The official RBM: a class-balanced FIFO memory of images with a per-class count EMA."""

    def __init__(self, size: int, num_classes: int) -> None:
        self.size, self.num_classes = size, num_classes
        self.count = torch.zeros(num_classes)
        self.data: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
        self.total = 0

    def __len__(self) -> int:
        return self.total

    def _drop_one(self) -> None:
        best = 0.0
        for c in range(self.num_classes):
            if self.data[c] and self.count[c] > best:
                best = float(self.count[c])
        tied = [c for c in range(self.num_classes) if self.data[c] and float(self.count[c]) == best]
        self.data[tied[int(torch.randint(len(tied), (1,)))]].pop(0)

    def append(self, items: torch.Tensor, labels: torch.Tensor) -> None:
        for item, c in zip(items, labels.tolist()):
            if self.total < self.size:
                self.total += 1
            else:
                self._drop_one()
            self.data[c].append(item)

    def read(self) -> torch.Tensor:
        """The bank's images, class by class (updates the count EMA of every class, as the official get_data)."""
        out = []
        for c in range(self.num_classes):
            out += self.data[c]
            self.count[c] = 0.9 * self.count[c] + 0.1 * len(self.data[c])
        return torch.stack(out)


@register("stamp")
class STAMP(Adapter):
    """Open-world TTA: a consistency- and entropy-filtered class-balanced memory, self-weighted entropy with SAM."""

    options = {
        **optimizer_options("sgd", lr=1e-4, momentum=0.0),
        "alpha": opt(0.5, "memory filter: the averaged prediction's entropy must be below alpha * ln C", ">0"),
        "num_aug": opt(15, "augmented views averaged with the original view (prediction, filter, outlier score)",
                       ">=0"),
        "augment": opt("cotta", "views: cotta (CoTTA's transforms, STAMP on CIFAR-10-C) or crop_flip "
                       "(random crop with padding 4 and horizontal flip: CIFAR-100-C, ImageNet-C)",
                       ("cotta", "crop_flip")),
        "consistency_filter": opt(True, "memory filter: the model's and the frozen source model's argmax agree "
                                  "(official non-ImageNet branch; false for ImageNet-C)"),
        "memory_size": opt(64, "images in the class-balanced memory bank (also the weights' scale)", ">=1"),
        "rho": opt(0.05, "SAM neighbourhood radius", ">=0"),
        "cosine_t_max": opt(150, "T_max of the cosine learning-rate schedule, stepped once per update (750 for "
                            "ImageNet-C)", ">=1"),
    }  # fmt: skip
    presets = {
        "cifar10-c": {"source": f"{_REPO}:{_CFGS}/cifar10_c_noise/stamp.yaml@dbdb2a9", "batch_size": 64,
                      "options": {**_OFFICIAL, "lr": 1e-4, "augment": "cotta"}},
        "cifar100-c": {"source": f"{_REPO}:{_CFGS}/cifar100_c_noise/stamp.yaml@dbdb2a9", "batch_size": 64,
                       "options": {**_OFFICIAL, "lr": 0.01, "augment": "crop_flip"}},
        "imagenet-c": {"source": f"{_REPO}:{_CFGS}/imagenet_c_places/stamp.yaml@dbdb2a9", "batch_size": 64,
                       "options": {**_OFFICIAL, "lr": 1e-3, "augment": "crop_flip", "consistency_filter": False,
                                   "cosine_t_max": 750},
                       "note": "no OPTIM.LR in the yaml: src/utils/conf.py's default 1e-3"},
    }  # fmt: skip

    def configure(self) -> None:
        use_batch_stats(self.model)
        self.model.train()
        self.norm_model = frozen_copy(self.model).train()  # the configured source model: consistency filter
        self.params = train_only(self.model, stamp_params(self.model))
        self.optimizer = make_optimizer(self.params, self.hp)

    def reset_state(self) -> None:
        self.bank: BalancedBank | None = None  # created at the first batch (needs the number of classes)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, self.hp.cosine_t_max)

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        return tta_augment(x) if self.hp.augment == "cotta" else crop_flip(x)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.model.train()
            logits = self.model(x)
            c = logits.shape[1]
            probs = [logits.float().softmax(1)] + [self.model(self._view(x)).float().softmax(1)
                                                   for _ in range(self.hp.num_aug)]  # fmt: skip
            p = torch.stack(probs).mean(0)
            ent = prob_entropy(p)
            pred = logits.argmax(1)
            keep = ent < self.hp.alpha * math.log(c)
            if self.hp.consistency_filter:
                keep &= pred == self.norm_model(x).argmax(1)
            if self.bank is None:
                self.bank = BalancedBank(self.hp.memory_size, c)
            self.bank.append(x[keep].detach(), pred[keep])
        self._last = (x, ent)
        if len(self.bank):
            self._update()
        return p.log()

    def _loss(self, data: torch.Tensor) -> torch.Tensor:
        h = entropy(self.model(data))
        inv = 1 / torch.exp(h)
        return (h * (inv / inv.sum() * self.hp.memory_size)).mean()

    def _update(self) -> None:
        data = self.bank.read()
        self.optimizer.zero_grad(set_to_none=True)
        self._loss(data).backward()
        with torch.no_grad():  # SAM first step: climb to theta + rho g / ||g||
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2) if grads else None
            old = []
            for p in self.params:
                old.append(None if p.grad is None else p.data.clone())
                if p.grad is not None:
                    p.add_(p.grad * (self.hp.rho / (norm + 1e-12)).to(p))
        self.optimizer.zero_grad(set_to_none=True)
        self._loss(data).backward()
        with torch.no_grad():  # SAM second step: back to theta, SGD step with the gradient at theta + eps
            for p, o in zip(self.params, old):
                if p.grad is not None and o is not None:
                    p.data = o
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    @torch.no_grad()
    def ood_score(self, x: torch.Tensor) -> torch.Tensor:
        """Outlier score of batch `x` (higher = more likely an outlier): the entropy of the averaged prediction of
        the forward that just adapted on `x`; for another batch, the entropy of the current model's prediction."""
        if self._last is not None and self._last[0] is x:
            return self._last[1]
        return prob_entropy(self.infer(x).float().softmax(1))
