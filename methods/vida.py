"""`vida`: homeostatic visual domain adapters for continual test-time adaptation (Liu et al., ICLR 2024).

Matches Yangsenqiao/vida @ c26b0db (`cifar/vida.py`, `cifar/inject_vida.py`, `cifar/cifar10c_vit.py`,
`cifar/conf.py`, `cifar/cfgs/cifar10/vida.yaml`; ImageNet: `imagenet/vida.py`, `imagenet/conf.py`,
`imagenet/cfgs/vit/vida.yaml`), step for step:
- adapters: every `nn.Linear` inside an attention module (timm `Attention`/`CrossAttention`: qkv and proj) gets a
  low-rank adapter (rank `rank_low`, 1) and a high-rank one (rank `rank_high`, 128): output = W x + b +
  scale1 · up1(down1(x)) + scale2 · up2(down2(x)), the downs initialised N(0, 1/r²), the ups to zero (the model
  starts as the source model). Here the adapter is applied as the equal weight W + scale1 · U1 D1 + scale2 · U2 D2
  (a parametrisation), which also reaches torchvision's `nn.MultiheadAttention` (in_proj_weight, out_proj); the
  outputs and gradients are the official ones up to float rounding (tests/test_vida.py);
- the whole model in train mode and every parameter trained: the model's own at `lr`, the adapters' at `vida_lr`
  (one optimizer, two parameter groups, `setup_optimizer_vida`); teacher = a copy in eval mode;
- per batch: the teacher on `n_aug` (10) augmentations of x (CoTTA's augmentation, `methods._augment`), with the
  scales of the previous step; uncertainty u = 0.1 · mean(var over the views of the logits) (unbiased var);
  u >= `unc_thr`: high = 1 + u, low = 1 - u, else low = 1 + u, high = 1 - u (Homeostatic Knowledge Allotment);
  the scales are set on student and teacher; teacher logits on x; student loss = mean soft cross-entropy of the
  student against softmax(teacher) (CIFAR) or its symmetric form (ImageNet, `loss="sce"`); one step;
  teacher <- mt · teacher + (1 - mt) · student for model parameters, `mt_vida` for adapter parameters; stochastic
  restore of every trained element (adapters included) to its source value with probability `rst` (CIFAR 0.1;
  the ImageNet code has none: `rst` 0). Returned: the teacher's logits on x (before the update); `predict`:
  the teacher's.
- The official `set_scale` sets `scale1` (low rank) and, through an `elif` on the same module, never `scale2`:
  the high-rank scale stays 1. `scale_high=False` (default) is that code; `scale_high=True` sets both as the paper
  describes.

Presets: CIFAR-10-C / CIFAR-100-C from the yaml files (Adam, LR/ViDALR, MT/MT_ViDA, ranks, batch) plus
`--unc_thr` default 0.05 of `cifar/conf.py` (the bash scripts pass none) and `rst_m=0.1`, `N = 10` of
`cifar/vida.py`; ImageNet-C: SGD (momentum 0.9, Nesterov, `imagenet/conf.py`), unc_thr 0.2, symmetric loss, no
restore. The official runs resize inputs to 384 (CIFAR) / 224 and use a ViT-B/16; the augmentation works at the
input's own size (as the official at its size).

`prepare` (needs_source): the official code starts from released "source ViDA" checkpoints (adapters trained on
source data; the training code is not released). Our warm-up: `warmup_epochs` epochs of supervised cross-entropy
on the source batches, adapters only (the model frozen), Adam at `warmup_lr`, scales 1 — a documented stand-in,
not the authors' recipe; `warmup_epochs=0` starts from the zero-initialised adapters (the source model).
CNNs: the official ViDA is ViT-only. Without attention modules (`target="auto"`), the adapters go on every
`nn.Linear` and every ungrouped `nn.Conv2d` (down: k×k conv to r channels, up: 1×1 conv, as the equal weight
delta); `target="attention"` refuses such a model. Differences: `reset()` restores teacher and scales too.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._augment import tta_augment
from tta_bench.methods.base import Adapter, cross_entropy_soft, frozen_copy, make_optimizer, opt, optimizer_options

_REPO = "Yangsenqiao/vida"
_AT = "c26b0db"
ATTENTION_NAMES = ("Attention", "CrossAttention")  # the official target_replace_module


class ViDAWeight(nn.Module):
    """The two adapters of one layer as a parametrisation of its weight: W + s1 · U1 D1 + s2 · U2 D2."""

    def __init__(self, weight: torch.Tensor, r1: int, r2: int) -> None:
        super().__init__()
        out_f, in_f = weight.shape[0], weight[0].numel()
        dev, dt = weight.device, weight.dtype
        self.vida_down = nn.Linear(in_f, r1, bias=False, device=dev, dtype=dt)
        self.vida_up = nn.Linear(r1, out_f, bias=False, device=dev, dtype=dt)
        self.vida_down2 = nn.Linear(in_f, r2, bias=False, device=dev, dtype=dt)
        self.vida_up2 = nn.Linear(r2, out_f, bias=False, device=dev, dtype=dt)
        nn.init.normal_(self.vida_down.weight, std=1 / r1**2)
        nn.init.zeros_(self.vida_up.weight)
        nn.init.normal_(self.vida_down2.weight, std=1 / r2**2)
        nn.init.zeros_(self.vida_up2.weight)
        self.scale1 = 1.0  # low rank
        self.scale2 = 1.0  # high rank

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        low = (self.vida_up.weight @ self.vida_down.weight).view_as(w)
        high = (self.vida_up2.weight @ self.vida_down2.weight).view_as(w)
        return w + low * self.scale1 + high * self.scale2


def _targets(model: nn.Module, target: str) -> list[tuple[nn.Module, str]]:
    """(module, weight attribute) pairs that get adapters, in module order."""
    attn = [m for m in model.modules() if type(m).__name__ in ATTENTION_NAMES or isinstance(m, nn.MultiheadAttention)]
    out: list[tuple[nn.Module, str]] = []
    if attn and target in ("auto", "attention"):
        seen: set[int] = set()
        for a in attn:
            if isinstance(a, nn.MultiheadAttention) and a.in_proj_weight is not None and id(a) not in seen:
                out.append((a, "in_proj_weight"))
                seen.add(id(a))
            for m in a.modules():
                if isinstance(m, nn.Linear) and id(m) not in seen:
                    out.append((m, "weight"))
                    seen.add(id(m))
        return out
    if target == "attention":
        return []
    for m in model.modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
            out.append((m, "weight"))
    return out


def vida_modules(model: nn.Module) -> list[ViDAWeight]:
    return [m for m in model.modules() if isinstance(m, ViDAWeight)]


def official_order(named: list[tuple[str, nn.Parameter]]) -> list[tuple[str, nn.Parameter]]:
    """`named_parameters` in the official model's order: an adapted Linear's weight before its bias.

    The official `ViDAInjectedLinear` holds `linear_vida` (weight, bias) and then the adapters; a parametrised
    module lists its own `bias` before `parametrizations.weight.original`, so the two are swapped back.
    """
    out = list(named)
    for i in range(len(out) - 1):
        a, b = out[i][0], out[i + 1][0]
        if a.endswith("bias") and b == a[: -len("bias")] + "parametrizations.weight.original":
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def set_scales(model: nn.Module, low: float, high: float, scale_high: bool) -> None:
    """The official `set_scale` (scale_high=False: only the low-rank scale, see the module docstring)."""
    for m in vida_modules(model):
        m.scale1 = low
        if scale_high:
            m.scale2 = high


@register("vida")
class ViDA(Adapter):
    """Low- and high-rank domain adapters, mean teacher, uncertainty-weighted adapter scales, stochastic restore."""

    needs_source = True
    options = {
        **optimizer_options("adam", lr=1e-4, also=("sgd",)),
        "vida_lr": opt(1e-5, "learning rate of the adapter parameters (the model's own use `lr`)", ">=0"),
        "steps": opt(1, "student updates per test batch"),
        "rank_low": opt(1, "rank of the low-rank (domain-shared) adapter", ">=1"),
        "rank_high": opt(128, "rank of the high-rank (domain-specific) adapter", ">=1"),
        "mt": opt(0.999, "EMA rate of the teacher's model parameters", "[0,1]"),
        "mt_vida": opt(0.999, "EMA rate of the teacher's adapter parameters", "[0,1]"),
        "unc_thr": opt(0.05, "uncertainty u >= unc_thr: high-rank scale 1+u, low-rank 1-u; else the reverse", ">=0"),
        "n_aug": opt(10, "augmented teacher views that measure the uncertainty", ">=2"),
        "rst": opt(0.1, "stochastic restore: probability that a trained element returns to its source value", "[0,1]"),
        "loss": opt("ce", "consistency loss: ce (CIFAR code) or sce (symmetric, ImageNet code)", ("ce", "sce")),
        "scale_high": opt(False, "also set the high-rank scale (the paper; the official code leaves it at 1)"),
        "target": opt(
            "auto",
            "layers with adapters: attention (the official: Linear layers of attention modules), all (every Linear "
            "and Conv2d) or auto (attention when the model has any, else all)",
            ("auto", "attention", "all"),
        ),
        "warmup_epochs": opt(1, "prepare: epochs of supervised adapter warm-up on source data (ours, see docstring)"),
        "warmup_lr": opt(1e-3, "prepare: Adam learning rate of the adapter warm-up"),
    }
    presets = {
        "cifar10-c": {"source": f"{_REPO}:cifar/cfgs/cifar10/vida.yaml@{_AT}", "batch_size": 40,
                      "options": {"optimizer": "adam", "lr": 1e-4, "vida_lr": 1e-5, "betas": (0.9, 0.999), "wd": 0.0,
                                  "steps": 1, "rank_low": 1, "rank_high": 128, "mt": 0.999, "mt_vida": 0.999,
                                  "unc_thr": 0.05, "n_aug": 10, "rst": 0.1, "loss": "ce"},
                      "note": "unc_thr: cifar/conf.py --unc_thr default; rst 0.1, n_aug 10: cifar/vida.py"},
        "cifar100-c": {"source": f"{_REPO}:cifar/cfgs/cifar100/vida.yaml@{_AT}", "batch_size": 50,
                       "options": {"optimizer": "adam", "lr": 3e-4, "vida_lr": 1e-6, "betas": (0.9, 0.999),
                                   "wd": 0.0, "steps": 1, "rank_low": 1, "rank_high": 128, "mt": 0.999,
                                   "mt_vida": 0.999, "unc_thr": 0.05, "n_aug": 10, "rst": 0.1, "loss": "ce"},
                       "note": "unc_thr: cifar/conf.py --unc_thr default; rst 0.1, n_aug 10: cifar/vida.py"},
        "imagenet-c": {"source": f"{_REPO}:imagenet/cfgs/vit/vida.yaml@{_AT}", "batch_size": 50,
                       "options": {"optimizer": "sgd", "lr": 5e-7, "vida_lr": 2e-7, "momentum": 0.9,
                                   "nesterov": True, "wd": 0.0, "steps": 1, "rank_low": 1, "rank_high": 128,
                                   "mt": 0.999, "mt_vida": 0.8, "unc_thr": 0.2, "n_aug": 10, "rst": 0.0,
                                   "loss": "sce"},
                       "note": "momentum/Nesterov, unc_thr 0.2: imagenet/conf.py; imagenet/vida.py: no restore, "
                               "symmetric loss"},
    }  # fmt: skip

    def configure(self) -> None:
        pairs = _targets(self.model, self.hp.target)
        if not pairs:
            raise UserError(
                f"method 'vida' option target={self.hp.target!r}: the model has no layer to put adapters on (no "
                "attention module with Linear layers; ViDA's official code adapts ViT attention). Use a ViT or "
                "--set method.target=all (every Linear/Conv2d layer)."
            )
        self.model.requires_grad_(True)
        for module, attr in pairs:
            w = getattr(module, attr)
            parametrize.register_parametrization(module, attr, ViDAWeight(w, self.hp.rank_low, self.hp.rank_high))
        self.model.requires_grad_(True)
        self.model.train()
        named = list(self.model.named_parameters())
        model_params = [p for n, p in named if "vida_" not in n]
        vida_params = [p for n, p in named if "vida_" in n]
        groups = [{"params": model_params, "lr": self.hp.lr}, {"params": vida_params, "lr": self.hp.vida_lr}]
        self.optimizer = make_optimizer(groups, self.hp)
        self.teacher = frozen_copy(self.model)
        self.teacher.eval()

    def reset_state(self) -> None:
        set_scales(self.model, 1.0, 1.0, True)
        set_scales(self.teacher, 1.0, 1.0, True)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            out = self.step(x)
        return out

    def uncertainty(self, x: torch.Tensor) -> torch.Tensor:
        """0.1 · mean over classes and samples of the variance of the teacher's logits over `n_aug` views."""
        with torch.no_grad():
            views = torch.stack([self.teacher(tta_augment(x)).detach() for _ in range(self.hp.n_aug)])
        return torch.var(views, dim=0).mean() * 0.1

    def step(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        u = self.uncertainty(x)
        if u >= self.hp.unc_thr:
            high, low = 1 + u, 1 - u
        else:
            low, high = 1 + u, 1 - u
        set_scales(self.model, low.item(), high.item(), self.hp.scale_high)
        set_scales(self.teacher, low.item(), high.item(), self.hp.scale_high)
        with torch.no_grad():
            standard_ema = self.teacher(x)
        if standard_ema.dim() != 2:
            raise UserError(
                "method 'vida' adapts classifiers (logits (N, C)); this model returns dense outputs. ViDA's "
                "segmentation code is not in its official repository; use cotta or tent for segmentation."
            )
        outputs = self.model(x)
        loss = cross_entropy_soft(outputs, standard_ema.float().softmax(1))
        if self.hp.loss == "sce":
            loss = 0.5 * loss + 0.5 * cross_entropy_soft(standard_ema, outputs.float().softmax(1))
        loss.mean(0).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema()
        if self.hp.rst > 0:
            self.restore()
        return standard_ema

    @torch.no_grad()
    def ema(self) -> None:
        """teacher <- a · teacher + (1 - a) · student; a = mt_vida for adapter parameters, mt for the rest."""
        for pt, (name, ps) in zip(self.teacher.parameters(), self.model.named_parameters()):
            a = self.hp.mt_vida if "vida_" in name else self.hp.mt
            pt.copy_(a * pt + (1 - a) * ps.detach())

    @torch.no_grad()
    def restore(self) -> None:
        """Stochastic restore, masks drawn with `torch.rand` on the CPU in the official parameter order."""
        for name, p in official_order(list(self.model.named_parameters())):
            if p.requires_grad:
                mask = (torch.rand(p.shape) < self.hp.rst).float().to(p.device)
                p.copy_(self.source_state[f"model.{name}"].to(p.device) * mask + p * (1.0 - mask))

    def prepare(self, source: Iterable) -> None:
        """Supervised warm-up of the adapters on source batches `(x, y)` (ours; see the module docstring)."""
        if self.hp.warmup_epochs <= 0:
            return
        params = [p for m in vida_modules(self.model) for p in m.parameters()]
        others = [p for n, p in self.model.named_parameters() if "vida_" not in n]
        opt_ = torch.optim.Adam(params, lr=self.hp.warmup_lr)
        device = params[0].device
        was = self.model.training
        self.model.eval()
        for p in others:
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                for _ in range(self.hp.warmup_epochs):
                    for x, y in source:
                        logits = self.model(x.to(device))
                        if logits.dim() > 2:
                            raise UserError("method 'vida' adapts classifiers: the model returns dense outputs.")
                        F.cross_entropy(logits, y.to(device)).backward()
                        opt_.step()
                        opt_.zero_grad(set_to_none=True)
        finally:
            for p in others:
                p.requires_grad_(True)
            self.model.train(was)
        with torch.no_grad():
            for pt, ps in zip(self.teacher.parameters(), self.model.parameters()):
                pt.copy_(ps)
