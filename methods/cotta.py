"""`cotta`: continual test-time adaptation (Wang et al., CVPR 2022).

Matches qinenergy/cotta `cifar/cotta.py` (`CoTTA.forward_and_adapt`, `configure_model`,
`collect_params`, `copy_model_and_optimizer`, `update_ema_variables`) and `cifar/cfgs/cifar10/cotta.yaml`,
step for step:
- the whole model in train mode, BatchNorm on test-batch statistics; every parameter named `weight` or
  `bias` is trained (Adam, lr 1e-3, betas (0.9, 0.999), wd 0); the EMA teacher and the anchor are copies
  of the configured source model (registered submodules `teacher`, `anchor`: counted as extra copies);
- per batch: student logits; anchor confidence = mean over the batch of max softmax(anchor(x)); teacher
  logits; `n_aug` (32) teacher forwards on random augmentations (`methods._augment.tta_augment`), always
  computed as in the official CIFAR code; pseudo-label = their mean if the anchor confidence < `ap`
  (0.92), else the plain teacher logits; loss = mean soft cross-entropy of the student against
  softmax(pseudo-label); one optimiser step; teacher <- mt · teacher + (1 - mt) · student (mt 0.999);
  stochastic restore: each element of each trained weight/bias goes back to its source value with
  probability `rst` (0.01), masks drawn with `torch.rand(shape)` on the CPU in module order.
- the returned logits are the pseudo-label logits (teacher, augmentation-averaged when used), computed
  before the update, as in the official code. `predict` returns the teacher's logits.
The augmentation RNG is torch's global RNG in the official draw order; exactness is tested on the
deterministic path (anchor confidence above `ap`) and the augmentation against torchvision's transforms.
ImageNet variant (`imagenet/cotta.py`, `imagenet/cfgs/10orders/cotta/cotta0.yaml`, `imagenet/conf.py`): SGD lr
0.01, momentum 0.9, Nesterov, batch 64, restore p 0.001, augmentations computed and used only when the anchor
confidence < 0.1 (`always_augment=False`, `ap=0.1`), symmetric cross-entropy
-½ Σ softmax(t) log softmax(s) - ½ Σ softmax(s) log softmax(t) (`loss="sce"`): the `imagenet-c` preset. The
class defaults are the CIFAR-10-C variant (`cifar10-c` preset; CIFAR-100-C: `ap` 0.72, official batch 200).
The `segmentation` preset is the suite's (mariodoebler/test-time-adaptation `segmentation/cfgs/cotta.yaml`,
CarlaTTA; its `segmentation/methods/cotta.py`: soft cross-entropy, views only when the anchor confidence < `ap`);
CoTTA's own Cityscapes→ACDC configuration is not in qinenergy/cotta. Deviation (a different view scheme, not a
value): our dense teacher views are every `scales` factor (CoTTA's ACDC 0.5–2.0) with and without a flip; the
suite's are 6 views at 0.25–0.875 of the input size, each randomly flipped, averaged with the plain teacher. The
suite also trains the segmentation head at 10x lr and starts from the source training's optimizer state; not here.
Normalisation layers: every weight/bias is trained whatever the layer type, so LayerNorm/GroupNorm models
(ViTs) work unchanged; only BatchNorm switches to test-batch statistics. The official rule goes by parameter name:
torchvision's ViT keeps its attention projection in `nn.MultiheadAttention.in_proj_weight`/`in_proj_bias`, which
are not named weight/bias and stay fixed (timm's ViT `qkv` is an nn.Linear and is trained).
Batch size 1 works for BatchNorm over spatial positions.
Dense (segmentation) outputs: confidences and the loss are averaged over pixels too, and the augmented
teacher views are multi-scale + flip (`scales`), as in CoTTA's Cityscapes→ACDC experiments (see dense_views).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._augment import tta_augment
from tta_bench.methods.base import (
    Adapter,
    cross_entropy_soft,
    ema_update,
    frozen_copy,
    make_optimizer,
    opt,
    optimizer_options,
    use_batch_stats,
)

_ADAM = {
    "optimizer": "adam",
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "wd": 0.0,
    "steps": 1,
    "mt": 0.999,
    "rst": 0.01,
    "n_aug": 32,
    "loss": "ce",
    "always_augment": True,
}


def weights_and_biases(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, param) of every `weight`/`bias` parameter, in named_modules order (official collect_params)."""
    out = []
    for nm, m in model.named_modules():
        for n, p in m.named_parameters(recurse=False):
            if n in ("weight", "bias") and p.requires_grad:
                out.append((f"{nm}.{n}" if nm else n, p))
    return out


def dense_views(teacher: nn.Module, x: torch.Tensor, scales: tuple) -> list[torch.Tensor]:
    """Teacher logits (N,C,H,W) on rescaled and horizontally flipped views of x, mapped back to x's grid.

    Dense predictions cannot use the CIFAR augmentations (random affine would misalign pixels). CoTTA's
    segmentation experiments (Cityscapes→ACDC, mmseg `aug_test`) use multi-scale + flip test-time
    augmentation instead; we do the same: each scale in `scales`, with and without a flip, undone afterwards.
    """
    h, w = x.shape[-2:]
    views = []
    for s in scales:
        xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False) if s != 1 else x
        for flip in (False, True):
            out = teacher(xs.flip(-1) if flip else xs)
            out = out.flip(-1) if flip else out
            views.append(F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False))
    return views


@register("cotta")
class CoTTA(Adapter):
    """EMA teacher with augmentation-averaged pseudo-labels, student update and stochastic restore."""

    options = {
        **optimizer_options("adam", lr=1e-3, also=("sgd",)),
        "steps": opt(1, "student updates per test batch (each: teacher views, step, EMA, stochastic restore)"),
        "mt": opt(0.999, "EMA rate of the mean teacher: teacher <- mt · teacher + (1 - mt) · student", "[0,1]"),
        "rst": opt(
            0.01, "stochastic restore: probability that a trained weight element returns to its source value", "[0,1]"
        ),
        "ap": opt(
            0.92,
            "the teacher's pseudo-label is the augmentation average when the anchor (source) model's "
            "mean confidence is below ap, else its plain prediction",
            "[0,1]",
        ),
        "n_aug": opt(32, "augmented views averaged by the teacher (classification)", ">=1"),
        "scales": opt(
            (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0),
            "multi-scale factors of the teacher's views (each with and without a flip) for dense "
            "(segmentation) outputs",
            ">0",
        ),
        "loss": opt(
            "ce",
            "consistency loss: ce (soft cross-entropy, CIFAR code) or sce (symmetric, ImageNet code)",
            ("ce", "sce"),
        ),
        "always_augment": opt(
            True,
            "compute the teacher's augmented views even when the ap rule leaves them unused "
            "(CIFAR code: same rule, more compute and random draws)",
        ),
    }
    presets = {
        "cifar10-c": {"source": "qinenergy/cotta:cifar/cfgs/cifar10/cotta.yaml@c212a20", "batch_size": 200,
                      "options": {**_ADAM, "ap": 0.92}},
        "cifar100-c": {"source": "qinenergy/cotta:cifar/cfgs/cifar100/cotta.yaml@c212a20", "batch_size": 200,
                       "options": {**_ADAM, "ap": 0.72}},
        "imagenet-c": {"source": "qinenergy/cotta:imagenet/cfgs/10orders/cotta/cotta0.yaml@c212a20", "batch_size": 64,
                       "options": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "wd": 0.0,
                                   "steps": 1, "mt": 0.999, "rst": 0.001, "ap": 0.1, "n_aug": 32, "loss": "sce",
                                   "always_augment": False},
                       "note": "rst, ap, mt, the loss and Nesterov are in imagenet/cotta.py and imagenet/conf.py"},
        "segmentation": {"source": "mariodoebler/test-time-adaptation:segmentation/cfgs/cotta.yaml@8b2ed63",
                         "batch_size": 1,
                         "options": {"optimizer": "sgd", "lr": 2.5e-4, "momentum": 0.9, "nesterov": False, "wd": 5e-4,
                                     "steps": 1, "mt": 0.999, "rst": 0.01, "ap": 0.9, "loss": "ce",
                                     "always_augment": False}},
    }  # fmt: skip

    def configure(self) -> None:
        if self.hp.loss not in ("ce", "sce"):
            raise UserError(f"cotta loss must be 'ce' or 'sce' (symmetric), got {self.hp.loss!r}.")
        use_batch_stats(self.model)
        self.model.train()
        self.model.requires_grad_(True)
        self.named = weights_and_biases(self.model)
        self.optimizer = make_optimizer([p for _, p in self.named], self.hp)
        self.teacher = frozen_copy(self.model)
        self.anchor = frozen_copy(self.model)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            outputs_ema = self.step(x)
        return outputs_ema

    def step(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.model(x)
        with torch.no_grad():
            anchor_prob = self.anchor(x).softmax(1).max(1)[0]
            standard_ema = self.teacher(x)
            use_aug = bool(anchor_prob.mean() < self.hp.ap)
            if not (use_aug or self.hp.always_augment):
                outputs_emas = []
            elif standard_ema.dim() > 2:  # dense outputs: geometry must be undone, see dense_views
                outputs_emas = dense_views(self.teacher, x, self.hp.scales)
            else:
                outputs_emas = [self.teacher(tta_augment(x)) for _ in range(self.hp.n_aug)]
        outputs_ema = torch.stack(outputs_emas).mean(0) if use_aug else standard_ema
        loss = cross_entropy_soft(outputs, outputs_ema.softmax(1))
        if self.hp.loss == "sce":  # ImageNet code: symmetric, the second term's gradient through the student's softmax
            loss = 0.5 * loss + 0.5 * cross_entropy_soft(outputs_ema, outputs.float().softmax(1))
        loss = loss.mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        ema_update(self.teacher, self.model, self.hp.mt)
        self.restore()
        return outputs_ema

    @torch.no_grad()
    def restore(self) -> None:
        """Stochastic restore: each trained element back to its source value with probability `rst`."""
        for name, p in self.named:
            mask = (torch.rand(p.shape) < self.hp.rst).float().to(p.device)
            p.copy_(self.source_state[f"model.{name}"].to(p.device) * mask + p * (1.0 - mask))
