"""`tta_aug`: plain test-time augmentation, the average of the predictions over augmented views (no update).

Matches the suite's baseline mariodoebler/test-time-adaptation `classification/methods/ttaug.py` (`TTAug`,
commit 8b2ed63) with its data pipeline (`datasets/data_loading.py`: `AugMixAugmenter(..., n_views=
TEST.N_AUGMENTATIONS, use_augmix=True)`, batch size 1) and `conf.py` (`TEST.N_AUGMENTATIONS = 32`,
`BN.ALPHA = 0.1`): for every image x_i, the batch [x_i, v_1, .., v_n] of the image and `n_aug` AugMix views
(methods/_augmix.py: pad-crop + flip pre-augmentation for 32-pixel images, RandomResizedCrop + flip otherwise;
AugMix at severity 1) goes through the model at once, BatchNorm normalising with 0.9 · source + 0.1 · batch
statistics (the suite's `AlphaBatchNorm`, here `PriorBN` with prior 0.9; `bn_prior = 1` is pure source
statistics); the prediction is the mean of the n + 1 logit vectors (`outputs.mean(0)`, logits, not softmax).
No parameter is trained. The suite has no per-benchmark config for it; the presets restate `conf.py`.
Deviation: the AugMix draws come from a numpy Generator seeded from torch's RNG (see methods/_augmix.py).
Cost: n_aug + 1 forwards per image, no backward.
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods._augmix import PER_POINT, augmix_views, check_crop, default_crop, seeded_rng, use_prior_bn
from tta_bench.methods.base import Adapter, opt

_CONF = {
    "source": "mariodoebler/test-time-adaptation:classification/conf.py(TEST.N_AUGMENTATIONS, BN.ALPHA)@8b2ed63",
    "batch_size": 1,
    "note": PER_POINT,
    "options": {"n_aug": 32, "bn_prior": 0.9},
}


@register("tta_aug")
class TTAug(Adapter):
    """Mean logits over the image and its AugMix views; BN with a 0.9 source prior; nothing trained."""

    options = {
        "n_aug": opt(32, "AugMix views averaged with the image (mean of the 1 + n_aug logits)", ">=1"),
        "bn_prior": opt(0.9, "weight of the source statistics in BN, the rest the test batch's (1: source "
                             "statistics only)", "[0,1]"),
        "crop": opt("auto", "pre-augmentation: pad (CIFAR: pad-4 random crop), resized (RandomResizedCrop), auto "
                            "(by size)", ("auto", "pad", "resized")),
    }  # fmt: skip
    presets = {"cifar10-c": _CONF, "cifar100-c": _CONF, "imagenet-c": _CONF}

    def configure(self) -> None:
        check_crop(self.hp.crop)
        if self.hp.bn_prior < 1:
            use_prior_bn(self.model, self.hp.bn_prior)
        self.model.eval().requires_grad_(False)

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """The `n_aug` augmented views (n_aug,C,H,W) of one image x (C,H,W)."""
        crop = default_crop(x) if self.hp.crop == "auto" else self.hp.crop
        return augmix_views(x, self.hp.n_aug, self._rng, crop=crop)

    @torch.no_grad()
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        self._rng = seeded_rng()
        return torch.cat([self.model(torch.cat([xi[None], self.views(xi)])).mean(0, keepdim=True) for xi in x])

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """The same averaging with views drawn from a fixed seed (deterministic; torch's RNG left untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return self.adapt(x)
