"""`deyo`: destroy your object — entropy + pseudo-label probability difference filtering (Lee et al., ICLR 2024).

Matches the authors' Jhyun17/DeYO `methods/deyo.py` (commit 3d7d289: `forward_and_adapt_deyo`, `collect_params`,
`configure_model`), its `config.py` defaults and `exp_deyo.sh`, and the suite port mariodoebler/test-time-adaptation
`classification/methods/deyo.py` + `conf.py` + `cfgs/*/deyo.yaml` (commit 8b2ed63), step for step:
- model in train mode, BatchNorm on test-batch statistics (running stats dropped), only the affine parameters of
  BatchNorm/LayerNorm/GroupNorm layers trained, except those in modules named `layer4` (ResNets), `blocks.9`-`11`
  and the final `norm` (ViT-B): the official name rules, kept as they are.
- per batch: logits f(x); entropy H; keep H < E_max = margin · ln C (0.5 ln C); x' = the kept images with their
  patches shuffled (aug_type 'patch': resized to a multiple of patch_len, cut into patch_len² patches, a random
  permutation per image from torch.rand on the CPU, reassembled, resized back; 'pixel': one pixel permutation for the
  batch; 'occ': a square of the image mean); PLPD = p_ŷ(x) - p_ŷ(x') (ŷ = argmax f(x), f(x') without grad);
  keep PLPD > plpd_threshold (0.2); loss = mean over kept of H · (exp(-(H - E_0)) + exp(PLPD)) with
  E_0 = margin_e0 · ln C (0.4 ln C), both factors detached; one optimizer step when a sample is kept.
- returned: the logits of f(x), computed before the update.
Defaults: the suite's CIFAR-10-C config (`cifar10_c/deyo.yaml`: Adam lr 1e-3; DEYO defaults of conf.py, equal to
the authors' config.py); the authors run only ImageNet-scale data: the imagenet-c preset is their mild setting
(`exp_deyo.sh`: SGD lr 0.00025 at batch 64, momentum 0.9, PLPD threshold 0.3).
Deviation: BatchNorm1d/3d are handled like BatchNorm2d (the official configures only BatchNorm2d).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn as nn
import torchvision.transforms.functional as TF

from tta_bench.methods import register
from tta_bench.methods.base import (
    Adapter,
    entropy,
    make_optimizer,
    opt,
    optimizer_options,
    train_only,
    use_batch_stats,
)

SUITE = "mariodoebler/test-time-adaptation:classification/cfgs/{}/deyo.yaml@8b2ed63"
SKIPPED = ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")  # official collect_params name rules
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


def deyo_params(model: nn.Module) -> list[nn.Parameter]:
    out = []
    for nm, m in model.named_modules():
        if any(s in nm for s in SKIPPED) or nm == "norm" or not isinstance(m, NORMS):
            continue
        out += [p for n, p in m.named_parameters() if n in ("weight", "bias")]
    return out


def shuffle_patches(x: torch.Tensor, patch_len: int) -> torch.Tensor:
    """Each image's patch_len × patch_len grid of patches in a random order (official aug_type 'patch')."""
    n, c, _, side = x.shape
    s = (side // patch_len) * patch_len
    x = TF.resize(x, [s, s], antialias=True)
    h = s // patch_len
    patches = x.reshape(n, c, patch_len, h, patch_len, h).permute(0, 2, 4, 1, 3, 5).reshape(n, patch_len**2, c, h, h)
    perm = torch.argsort(torch.rand(n, patch_len**2), dim=-1)
    patches = patches[torch.arange(n).unsqueeze(-1), perm]
    x = patches.reshape(n, patch_len, patch_len, c, h, h).permute(0, 3, 1, 4, 2, 5).reshape(n, c, s, s)
    return TF.resize(x, [side, side], antialias=True)


def destroy(x: torch.Tensor, hp: SimpleNamespace) -> torch.Tensor:
    """The object-destroying transformation x -> x' (no grad)."""
    if hp.aug_type == "patch":
        return shuffle_patches(x, hp.patch_len)
    if hp.aug_type == "pixel":
        n, c, h, w = x.shape
        return x.reshape(n, c, h * w)[:, :, torch.randperm(h * w)].reshape(n, c, w, w)
    if hp.aug_type == "occ":
        x, r, q, k = x.clone(), hp.row_start, hp.column_start, hp.occlusion_size
        x[:, :, r : r + k, q : q + k] = x.flatten(2).mean(2)[..., None, None].expand(-1, -1, k, k)
        return x
    raise ValueError(f"deyo: aug_type must be 'patch', 'pixel' or 'occ', got {hp.aug_type!r}")


@register("deyo")
class DeYO(Adapter):
    """Entropy minimisation on samples that are confident and whose prediction depends on object shape."""

    options = {
        **optimizer_options("adam", lr=1e-3, also=("sgd",)),
        "steps": opt(1, "optimizer steps per test batch, each a new forward that re-selects the samples"),
        "margin": opt(
            0.5, "entropy filter: samples with entropy below E_max = margin · ln C (C classes) are kept", ">=0"
        ),
        "margin_e0": opt(0.4, "E_0 = margin_e0 · ln C of the entropy weight exp(-(entropy - E_0))", ">=0"),
        "plpd_threshold": opt(
            0.2, "PLPD filter: kept samples need p_ŷ(x) - p_ŷ(x') above this (x' the object-destroyed image)"
        ),
        "reweight_ent": opt(True, "weight each kept sample's entropy by exp(-(entropy - E_0))"),
        "reweight_plpd": opt(True, "weight each kept sample's entropy by exp(PLPD) (added to the entropy weight)"),
        "aug_type": opt(
            "patch",
            "object-destroying transformation: patch (shuffle a patch_len × patch_len grid), pixel (shuffle "
            "pixels) or occ (a square of the image mean)",
            ("patch", "pixel", "occ"),
        ),
        "patch_len": opt(4, "aug_type patch: patches per side of the shuffled grid", ">=1"),
        "occlusion_size": opt(112, "aug_type occ: side of the occluded square, in pixels", ">=1"),
        "row_start": opt(56, "aug_type occ: top row of the occluded square, in pixels", ">=0"),
        "column_start": opt(56, "aug_type occ: left column of the occluded square, in pixels", ">=0"),
    }
    presets = {
        "cifar10-c": {"source": SUITE.format("cifar10_c"), "options": {}},
        "cifar100-c": {"source": SUITE.format("cifar100_c"), "options": {}},
        "imagenet-c": {
            "source": "Jhyun17/DeYO:exp_deyo.sh@3d7d289",
            "options": {"optimizer": "sgd", "lr": 0.00025, "momentum": 0.9, "plpd_threshold": 0.3},
        },
    }

    def configure(self) -> None:
        use_batch_stats(self.model)
        self.model.train()
        self.optimizer = make_optimizer(train_only(self.model, deyo_params(self.model)), self.hp)

    def reset_state(self) -> None:
        self.backward = self.final_backward = 0  # samples kept by the entropy filter / by both filters

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            outputs = self.model(x)
            loss = self.loss(x, outputs)
            if loss is not None:
                loss.backward()
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return outputs.detach()

    def loss(self, x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor | None:
        c = outputs.shape[1]
        ent = entropy(outputs)
        ids1 = torch.where(ent < self.hp.margin * math.log(c))
        ent = ent[ids1]
        self.backward += len(ent)
        if len(ent) == 0:
            return None
        with torch.no_grad():
            outputs_prime = self.model(destroy(x[ids1].detach(), self.hp))
        probs, probs_prime = outputs[ids1].softmax(1), outputs_prime.softmax(1)
        cls1 = probs.argmax(dim=1).reshape(-1, 1)
        plpd = (torch.gather(probs, 1, cls1) - torch.gather(probs_prime, 1, cls1)).reshape(-1)
        ids2 = torch.where(plpd > self.hp.plpd_threshold)
        ent, plpd = ent[ids2], plpd[ids2]
        self.final_backward += len(ent)
        if len(ent) == 0:
            return None
        if self.hp.reweight_ent or self.hp.reweight_plpd:
            e0 = self.hp.margin_e0 * math.log(c)
            coeff = float(self.hp.reweight_ent) * (1.0 / torch.exp(ent.clone().detach() - e0)) + float(
                self.hp.reweight_plpd
            ) * (1.0 / torch.exp(-1.0 * plpd.clone().detach()))
            ent = ent.mul(coeff)
        return ent.mean(0)
