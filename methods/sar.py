"""`sar`: sharpness-aware and reliable entropy minimisation (Niu et al., ICLR 2023).

Matches mr-eggplant/SAR `sar.py` (`forward_and_adapt_sar`, `SAR.forward`, `configure_model`,
`collect_params`, `update_ema`) and `sam.py` (SAM first/second step, from davda54/sam), step for step:
- model in train mode; BatchNorm on test-batch statistics; affine parameters of BatchNorm/LayerNorm/
  GroupNorm trained, except modules whose name contains one of `skip_layers` (official: 'layer4',
  'blocks.9', 'blocks.10', 'blocks.11', 'norm.') or is 'norm' (top layers of ResNets and timm ViT-B/16).
  Two additions keep that rule on this suite's models: a top-level 'norm' may sit inside one wrapper (the zoo
  wraps every model, so timm's final `norm` is `model.norm`), and torchvision's ViT-B/16 names of the same
  layers are skipped too ('encoder_layer_9', 'encoder_layer_10', 'encoder_layer_11', 'encoder.ln');
- first forward; reliable samples: entropy < E_0 = 0.4 · ln C (0.4 · ln 1000 for ImageNet); loss = their
  mean entropy; SAM first step (ε = ρ g / (‖g‖ + 1e-12), ρ 0.05); second forward at θ + ε, same
  samples, filtered again by E_0; the mean (if not NaN) updates the moving average e_m
  (e_m <- 0.9 e_m + 0.1 loss, first value = loss); SAM second step (back to θ, base SGD step with the
  gradient at θ + ε); model recovery when e_m < `reset_constant` (0.2).
- the returned logits are those of the first forward (before the update).
- Model recovery restores the model's parameters and buffers to the source state and keeps e_m and the
  base SGD's momentum, as the official code does (`SAR.forward` sets `self.ema = ema` after `reset()`;
  `SAM.load_state_dict` leaves the base optimizer's momentum buffers in place). `reset()` (Adapter
  contract) restores everything, momentum included, and clears e_m.

Defaults: official ImageNet-C ResNet-50-BN values (`main.py`): SGD lr 0.00025, momentum 0.9 (the official
rule for batch sizes below 32 is lr = 0.00025 / 64 · bs · 2; ViT-B: lr = 0.001 / 64 · bs, i.e.
`--set method.lr=0.001` at batch 64 — presets are per benchmark, not per architecture), ρ 0.05,
E_0 0.4 · ln C, e_m threshold 0.2. The official code has no CIFAR configuration; the `cifar10-c`/`cifar100-c`
presets are the suite's (mariodoebler/test-time-adaptation `cfgs/cifar10_c/sar.yaml` + `methods/sar.py`, whose
`setup_optimizer` always builds SAM over SGD with momentum 0.9 at `OPTIM.LR` 1e-3: the yaml's `METHOD: Adam`
is not used by SAR there). Batch size 1 works
with BatchNorm over spatial positions (the paper's bs-1 experiments use GN/LN models).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

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

SAR_NORMS = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
# torchvision's names of the layers the official list skips in timm's ViT-B/16 (blocks 9-11 and the final norm)
TORCHVISION_VIT_TOP = ("encoder_layer_9", "encoder_layer_10", "encoder_layer_11", "encoder.ln")
_SUITE = "mariodoebler/test-time-adaptation:classification/cfgs"
_CIFAR = {
    "optimizer": "sgd",
    "lr": 1e-3,
    "momentum": 0.9,
    "nesterov": False,
    "wd": 0.0,
    "rho": 0.05,
    "margin_e0_frac": 0.4,
    "reset_constant": 0.2,
}


def sar_params(model: nn.Module, skip: tuple[str, ...]) -> list[nn.Parameter]:
    """Norm-layer affine parameters outside the skipped (top) layers, in model order (official collect_params)."""
    out = []
    for nm, m in model.named_modules():
        if any(s in nm for s in skip) or (nm.split(".")[-1] == "norm" and nm.count(".") <= 1):
            continue
        if isinstance(m, SAR_NORMS):
            out += [p for n, p in m.named_parameters(recurse=False) if n in ("weight", "bias")]
    return out


@register("sar")
class SAR(Adapter):
    """Reliable entropy minimisation with SAM, and recovery when the entropy EMA collapses."""

    options = {
        **optimizer_options("sgd", lr=0.00025),
        "rho": opt(0.05, "SAM neighbourhood radius ρ: the second forward is at θ + ρ g / ‖g‖", ">=0"),
        "steps": opt(1, "SAM update steps per test batch (each: two forwards, two backwards, one SGD step)"),
        "margin_e0_frac": opt(0.4, "reliable samples: entropy below margin_e0_frac · ln C (E_0), in both forwards",
                              ">=0"),
        "reset_constant": opt(0.2, "model recovery when the EMA of the second-forward entropy loss falls below this",
                              ">=0"),
        "skip_layers": opt(("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.", *TORCHVISION_VIT_TOP),
                           "norm layers whose name contains one of these are not adapted (the top layers)"),
    }  # fmt: skip
    presets = {
        "cifar10-c": {"source": f"{_SUITE}/cifar10_c/sar.yaml@8b2ed63", "batch_size": 200, "options": _CIFAR},
        "cifar100-c": {"source": f"{_SUITE}/cifar100_c/sar.yaml@8b2ed63", "batch_size": 200, "options": _CIFAR},
        "imagenet-c": {"source": "mr-eggplant/SAR:main.py@20f6e24", "batch_size": 64,
                       "options": {"optimizer": "sgd", "lr": 0.00025, "momentum": 0.9, "nesterov": False, "wd": 0.0,
                                   "rho": 0.05, "margin_e0_frac": 0.4, "reset_constant": 0.2},
                       "note": "ViT-B/16: lr 0.001 (main.py: 0.001 / 64 * batch size)"},
    }  # fmt: skip

    def configure(self) -> None:
        use_batch_stats(self.model)
        self.model.train()
        self.params = train_only(self.model, sar_params(self.model, tuple(self.hp.skip_layers)))
        self.optimizer = make_optimizer(self.params, self.hp)  # SAM's base optimizer

    def reset_state(self) -> None:
        self.ema: float | None = None  # moving average of the second-pass entropy (model recovery criterion)
        self.recoveries = 0

    @torch.no_grad()
    def _first_step(self) -> list[torch.Tensor | None]:
        """SAM: climb to θ + ρ g/‖g‖; returns θ to come back to."""
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2) if grads else None
        old = []
        for p in self.params:
            if p.grad is None:
                old.append(None)
                continue
            old.append(p.data.clone())
            scale = self.hp.rho / (grad_norm + 1e-12)
            p.add_(p.grad * scale.to(p))
        self.optimizer.zero_grad(set_to_none=True)
        return old

    @torch.no_grad()
    def _second_step(self, old: list[torch.Tensor | None]) -> None:
        for p, o in zip(self.params, old):
            if p.grad is not None and o is not None:
                p.data = o
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _recover(self) -> None:
        """Model recovery: parameters and buffers back to the source state (optimizer state kept)."""
        with torch.no_grad():
            for k, t in self.model.state_dict(keep_vars=True).items():
                t.copy_(self.source_state[f"model.{k}"])
        self.recoveries += 1

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self.model(x)
            margin = self.hp.margin_e0_frac * math.log(outputs.shape[1])
            ent = entropy(outputs)
            ids1 = torch.where(ent < margin)
            ent[ids1].mean(0).backward()
            old = self._first_step()
            ent2 = entropy(self.model(x))[ids1]
            loss_second = ent2[torch.where(ent2 < margin)].mean(0)
            value = loss_second.item()
            ema = self.ema
            if not math.isnan(value):
                ema = value if ema is None else 0.9 * ema + (1 - 0.9) * value
            loss_second.backward()
            self._second_step(old)
            if ema is not None and ema < self.hp.reset_constant:
                self._recover()
            self.ema = ema
        return outputs
