"""`memo`: MEMO, test-time robustness via adaptation and augmentation (Zhang, Levine & Finn, NeurIPS 2022).

Matches zhangmarvin/memo (commit 228b290) `cifar-10-exps/test_calls/test_adapt.py` (`adapt_single`,
`test_single`, `marginal_entropy`), `imagenet-exps/test_calls/test_adapt.py` and `imagenet-exps/utils/
adapt_helpers.py` + `train_helpers.py::_modified_bn_forward`, and the suite's port (mariodoebler/
test-time-adaptation `classification/methods/memo.py`, `cfgs/*/memo.yaml`). Episodic, one test point at a time:
for every image x_i of the batch
  1. start from the source model (reset: parameters, buffers, optimiser);
  2. B = `n_aug` AugMix views of x_i (`methods._augmix.augmix_views`: pad-crop + flip pre-augmentation for
     32-pixel images, RandomResizedCrop + flip otherwise; AugMix at severity 1);
  3. loss = marginal entropy H(mean_b softmax(f(view_b))); one SGD step (wd 0) on ALL parameters, from a fresh
     optimizer state (momentum buffers are reset with the model);
  4. prediction = f(x_i) with the updated model (eval mode), returned for x_i.
BatchNorm layers normalise with prior · source + (1 - prior) · batch statistics (`PriorBN`), prior =
`prior_strength` / (`prior_strength` + 1), batch statistics detached, as in the official ImageNet code (N = 16);
the suite applies its `AlphaBatchNorm` with α = 0.1, i.e. prior_strength = 9, which the CIFAR presets use (the
authors' CIFAR models use GroupNorm, where the prior does nothing). `prior_strength = -1` keeps pure source
statistics (the official `prior = 1` for a negative strength).
Defaults: the authors' CIFAR-10 values (plain SGD lr 0.005, 32 views, 1 step) with the suite's prior 9.
Presets: CIFAR-10-C/100-C follow the suite's cfgs/*/memo.yaml with its conf.py defaults (SGD lr 0.005, momentum
0.9, Nesterov, wd 0: on this single step from a fresh state an update of 1.9 x lr x gradient); ImageNet-C the
authors' ImageNet script (plain SGD lr 0.00025, 64 views, N = 16).
AugMix runs through our PIL/numpy port with a numpy Generator seeded from torch's RNG (methods/_augmix.py).
Cost: (n_aug + 1) forwards and n_aug backwards per image, plus a state reset per image.
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods._augmix import (
    PER_POINT,
    augmix_views,
    check_crop,
    default_crop,
    marginal_entropy,
    seeded_rng,
    use_prior_bn,
)
from tta_bench.methods.base import Adapter, make_optimizer, opt, optimizer_options

_AUTHORS = "zhangmarvin/memo:imagenet-exps/script_test_in.py+test_calls/test_adapt.py@228b290"
_PER = {"batch_size": 1, "note": PER_POINT}
# cfgs/cifar1x0_c/memo.yaml: SGD, LR 0.005, WD 0, N_AUGMENTATIONS 32; conf.py: MOMENTUM 0.9, NESTEROV True, BN.ALPHA 0.1
_CIFAR = {"optimizer": "sgd", "lr": 0.005, "momentum": 0.9, "nesterov": True, "wd": 0.0, "steps": 1, "n_aug": 32,
          "prior_strength": 9}  # fmt: skip
# script_test_in.py (rn50): sgd, lr 0.00025, wd 0; test_adapt.py: optim.SGD(lr, wd) (no momentum), batch_size 64,
# prior_strength 16, niter 1
_IMAGENET = {"optimizer": "sgd", "lr": 0.00025, "momentum": 0.0, "nesterov": False, "wd": 0.0, "steps": 1, "n_aug": 64,
             "prior_strength": 16}  # fmt: skip
_SUITE = "mariodoebler/test-time-adaptation:classification/cfgs/{}/memo.yaml+conf.py(BN.ALPHA=0.1)@8b2ed63"


@register("memo")
class MEMO(Adapter):
    """Per test point: marginal entropy over AugMix views, one step on all parameters, predict, reset."""

    options = {
        **optimizer_options("sgd", lr=0.005, momentum=0.0),
        "steps": opt(1, "optimizer steps per test point, on the same views (then predict and reset)"),
        "n_aug": opt(32, "AugMix views of each test point per step (the marginal-entropy batch)", ">=1"),
        "prior_strength": opt(
            9, "BN prior N: statistics = N/(N+1) source + 1/(N+1) batch; -1 keeps source statistics", ">=-1"
        ),
        "crop": opt(
            "auto",
            "pre-augmentation: pad (CIFAR: pad-4 random crop), resized (RandomResizedCrop), auto (by size)",
            ("auto", "pad", "resized"),
        ),
    }
    presets = {
        "cifar10-c": {"source": _SUITE.format("cifar10_c"), **_PER, "options": _CIFAR},
        "cifar100-c": {"source": _SUITE.format("cifar100_c"), **_PER, "options": _CIFAR},
        "imagenet-c": {"source": _AUTHORS, **_PER, "options": _IMAGENET},
    }

    def configure(self) -> None:
        check_crop(self.hp.crop)
        if self.hp.prior_strength >= 0:
            use_prior_bn(self.model, self.hp.prior_strength / (self.hp.prior_strength + 1))
        self.model.eval().requires_grad_(True)
        self.optimizer = make_optimizer(list(self.model.parameters()), self.hp)

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """The `n_aug` augmented views (n_aug,C,H,W) of one image x (C,H,W)."""
        crop = default_crop(x) if self.hp.crop == "auto" else self.hp.crop
        return augmix_views(x, self.hp.n_aug, self._rng, crop=crop)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        self._rng = seeded_rng()
        outs = []
        for xi in x:
            self.reset()
            inputs = self.views(xi)
            for _ in range(self.hp.steps):
                self.optimizer.zero_grad(set_to_none=True)
                loss = marginal_entropy(self.model(inputs))
                loss.backward()
                self.optimizer.step()
            with torch.no_grad():
                outs.append(self.model(xi[None]))
        self.reset()  # between test points the adapter rests in the source state (episodic)
        return torch.cat(outs)
