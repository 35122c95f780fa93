"""`dpcore`: dynamic prompt coreset for continual test-time adaptation (Zhang et al., ICML 2025).

Matches zybeich/DPCore @ 79b143f (`imagenet/dpcore.py`, `imagenet/vpt.py`, `imagenet/imagenetc.py`,
`imagenet/conf.py`, `imagenet/cfgs/dpcore.yaml`), step for step:
- the ViT gets `num_prompts` (8) learnable prompt tokens inserted after the class token, after the position
  embedding (VPT-shallow, `PromptViT.prompt_injection`), initialised uniform(±sqrt(6 / (3·patch² + D)));
  the model's weights stay fixed; the objective is the distance of the batch's class-token features (after the
  final norm) to the source's: ||std_b - std_s||₂ + ||mean_b - mean_s||₂ (λ = 1; unbiased `torch.std_mean`);
- source statistics (`prepare`, `obtain_src_stat`): class-token features of the prompt-free model on at most
  `src_samples` (300, conf.py `SRC_NUM_SAMPLES`) clean source images whose prediction entropy is below
  `e_margin_frac` · ln C − `e_margin_offset` (the official ln(1000)/2 − 1: 0.5 and 1); deviation: when fewer than
  2 pass (an unconfident model; the official then gets NaN statistics) the first `src_samples` images are used
  unfiltered, with a warning, and the scan stops after 10 · `src_samples` images;
- per batch: loss_raw of the prompt-free model; with a non-empty coreset {(mean_i, std_i, prompt_i)}, weights
  w = softmax(−(||mean_b − mean_i|| + ||std_b − std_i||)/τ) (τ = `temp_tau`, 3), the weighted prompt Σ w_i p_i
  and its loss_new; loss_new < `thr_rho` (0.8) · loss_raw makes the batch in-distribution: one AdamW step from
  the weighted prompt (fresh optimizer), then every coreset element moves towards the batch:
  m_i += α w_i (mean − m_i), s_i += α w_i max(std − s_i, 0), p_i += α w_i (p − p_i) (α = `ema_alpha` 0.999;
  mean/std of that step's prompted forward, p the prompt after the step). Otherwise (and for the first batch)
  the prompt restarts from its initial value and takes `ood_steps` (50) AdamW steps; the coreset gains
  (mean, std of the prompt-free forward, the learnt prompt). Returned: the logits of the last forward (before its
  step). The optimizer is the code's, not the yaml's: `torch.optim.AdamW([prompts], lr=1e-1)` created anew
  for each batch (torch defaults: betas (0.9, 0.999), weight decay 0.01; the yaml's LR 0.01 is never read).
Official configuration: ImageNet-C only (ViT-B/16, batch 64): the `imagenet-c` preset; the repository has no
CIFAR configuration (no other preset). ViT only: timm `VisionTransformer` (patch_embed / norm_pre / blocks / norm)
and torchvision `VisionTransformer` (conv_proj / encoder); other models are refused. `predict` uses the current
prompt. Without `prepare` (library use) there are no source statistics: the adapter returns the
prompted model's predictions and does not adapt (the harness always runs `prepare`). `reset()` also clears
the coreset (as the official `reset`). The official `model.train()` changes nothing on its ViT (no dropout, no
BatchNorm); here the model is in eval mode.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods.base import Adapter, entropy, opt


def find_vit(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The ViT inside `model` and its kind: ("timm" | "torchvision"), or None."""
    for m in model.modules():
        if all(hasattr(m, a) for a in ("patch_embed", "blocks", "norm", "norm_pre", "_pos_embed")):
            return m, "timm"
        if all(hasattr(m, a) for a in ("conv_proj", "encoder", "class_token", "heads")):
            return m, "torchvision"
    return None


class PromptTap(nn.Module):
    """The prompts, injected by a pre-hook before the transformer blocks; the class-token feature read after the
    final norm by a forward hook. `use_prompts` switches between `forward_features` and `forward_raw_features`."""

    def __init__(self, vit: nn.Module, kind: str, num_prompts: int) -> None:
        super().__init__()
        if kind == "timm":
            dim, patch = vit.embed_dim, vit.patch_embed.patch_size
            patch = patch[0] * patch[1] if isinstance(patch, (tuple, list)) else patch * patch
            before, after = vit.norm_pre, vit.norm
        else:
            dim, patch = vit.hidden_dim, vit.patch_size * vit.patch_size
            before, after = vit.encoder.layers, vit.encoder.ln
        p = next(vit.parameters())
        self.prompts = nn.Parameter(torch.zeros(1, num_prompts, dim, device=p.device, dtype=p.dtype))
        val = math.sqrt(6.0 / float(3 * patch + dim))
        nn.init.uniform_(self.prompts.data, -val, val)
        self.use_prompts = True
        self.cls: torch.Tensor | None = None
        before.register_forward_pre_hook(self._inject)
        after.register_forward_hook(self._read)

    def _inject(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if not self.use_prompts or self.prompts.shape[1] == 0:
            return args
        x = torch.cat((x[:, :1], self.prompts.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        return (x, *args[1:])

    def _read(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        self.cls = out[:, 0]


@register("dpcore")
class DPCore(Adapter):
    """Visual prompts matched to source feature statistics, kept in a dynamic coreset of (statistics, prompt)."""

    needs_source = True
    requires = "vit"  # tests/test_adapter_contract.py builds a tiny ViT for it
    options = {
        "lr": opt(0.1, "AdamW learning rate of the prompts (the code's 1e-1; a fresh optimizer per batch)", ">=0"),
        "wd": opt(0.01, "AdamW weight decay (torch's default, as in the code)", ">=0"),
        "num_prompts": opt(8, "prompt tokens inserted after the class token", ">=1"),
        "ood_steps": opt(50, "AdamW steps on a batch that no coreset prompt fits (E_OOD, cfg OPTIM.STEPS)", ">=1"),
        "thr_rho": opt(0.8, "in-distribution when the weighted prompt's loss < thr_rho · the prompt-free loss", ">=0"),
        "temp_tau": opt(3.0, "temperature of the softmax weights over the coreset's statistics distances", ">0"),
        "ema_alpha": opt(0.999, "rate at which the coreset elements move towards an in-distribution batch", "[0,1]"),
        "src_samples": opt(300, "prepare: source images for the source statistics (SRC_NUM_SAMPLES)", ">=2"),
        "e_margin_frac": opt(
            0.5,
            "prepare: source images with entropy < e_margin_frac · ln C - e_margin_offset enter the statistics",
            ">=0",
        ),
        "e_margin_offset": opt(1.0, "prepare: see e_margin_frac (the official ln(1000)/2 - 1: 0.5 and 1)"),
    }
    presets = {
        "imagenet-c": {"source": "zybeich/DPCore:imagenet/cfgs/dpcore.yaml@79b143f", "batch_size": 64,
                       "options": {"lr": 0.1, "wd": 0.01, "num_prompts": 8, "ood_steps": 50, "thr_rho": 0.8,
                                   "temp_tau": 3.0, "ema_alpha": 0.999, "src_samples": 300,
                                   "e_margin_frac": 0.5, "e_margin_offset": 1.0},
                       "note": "lr/wd: dpcore.py AdamW([prompts], lr=1e-1) (the yaml's LR is unused); src_samples: "
                               "conf.py SRC_NUM_SAMPLES"},
    }  # fmt: skip

    def configure(self) -> None:
        found = find_vit(self.model)
        if found is None:
            raise UserError(
                f"method 'dpcore' needs a Vision Transformer (timm or torchvision VisionTransformer); "
                f"{type(self.model).__name__} has none. DPCore inserts prompt tokens into a ViT (its paper and code: "
                "ViT-B/16). Use --model vit-b-16 or vit-b-16-timm, or a method for CNNs (tent, cotta, vida)."
            )
        self.model.eval()
        self.model.requires_grad_(False)
        self.tap = PromptTap(*found, self.hp.num_prompts)
        dim = self.tap.prompts.shape[-1]
        self.register_buffer("src_std", torch.zeros(dim))
        self.register_buffer("src_mean", torch.zeros(dim))
        self.register_buffer("src_ready", torch.tensor(False))
        self.optimizer = None  # a fresh AdamW per batch, as the official code

    def reset_state(self) -> None:
        self.coreset: list[list[torch.Tensor]] = []

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.tap.prompts]

    def prepare(self, source: Iterable) -> None:
        """Source statistics of the prompt-free class-token features on low-entropy source images."""
        feats, every, num = [], [], 0
        dev = self.tap.prompts.device
        with torch.no_grad():
            for x, _ in source:
                out = self.forward_cls(x.to(dev), prompts=False)
                cls = self.tap.cls
                margin = self.hp.e_margin_frac * math.log(out.shape[1]) - self.hp.e_margin_offset
                keep = torch.where(entropy(out) < margin)[0]
                feats.append(cls[keep])
                every.append(cls)
                num += len(keep)
                if num >= self.hp.src_samples or sum(len(e) for e in every) >= 10 * self.hp.src_samples:
                    break
        if not every:
            raise UserError("method 'dpcore': the source data is empty; prepare needs source images.")
        f = torch.cat(feats)[: self.hp.src_samples]
        if len(f) < 2:  # the official would take the std/mean of < 2 rows: NaN statistics
            f = torch.cat(every)[: self.hp.src_samples]
            warnings.warn(
                f"dpcore: no source image passed the entropy filter (entropy < {margin:.3g}); the source statistics "
                f"use the first {len(f)} source images unfiltered",
                stacklevel=2,
            )
        with torch.no_grad():
            std, mean = torch.std_mean(f, dim=0)
            self.src_std.copy_(std)
            self.src_mean.copy_(mean)
            self.src_ready.fill_(True)

    def forward_cls(self, x: torch.Tensor, prompts: bool) -> torch.Tensor:
        self.tap.use_prompts = prompts
        try:
            return self.model(x)
        finally:
            self.tap.use_prompts = True

    def stat_loss(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        std, mean = torch.std_mean(self.tap.cls, dim=0)
        loss = torch.norm(std - self.src_std, p=2) + torch.norm(mean - self.src_mean, p=2)
        return loss, mean, std

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, x: torch.Tensor, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, ...]:
        out = self.forward_cls(x, prompts=True)
        loss, mean, std = self.stat_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return out, mean.detach(), std.detach()

    def _adamw(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([self.tap.prompts], lr=self.hp.lr, weight_decay=self.hp.wd)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.src_ready):  # no prepare(source) (library use): nothing to match, no adaptation
            with torch.no_grad():
                return self.model(x)
        prompts = self.tap.prompts
        with torch.no_grad():
            self.forward_cls(x, prompts=False)
            loss_raw, mean_b, std_b = self.stat_loss()
            is_id, weights = False, None
            if self.coreset:
                means = torch.stack([c[0] for c in self.coreset])
                stds = torch.stack([c[1] for c in self.coreset])
                match = torch.norm(mean_b - means, p=2, dim=1) + torch.norm(std_b - stds, p=2, dim=1)
                weights = F.softmax(-match / self.hp.temp_tau, dim=0)
                weighted = torch.stack([w * c[2] for w, c in zip(weights, self.coreset)]).sum(0)
                prompts.copy_(weighted)
                self.forward_cls(x, prompts=True)
                loss_new = self.stat_loss()[0]
                is_id = bool(loss_new < loss_raw * self.hp.thr_rho)
        if is_id:
            out, mean, std = self._step(x, self._adamw())
            with torch.no_grad():
                updated = prompts.detach().clone()
                for w, c in zip(weights, self.coreset):
                    c[0] += self.hp.ema_alpha * w * (mean - c[0])
                    c[1] += self.hp.ema_alpha * w * torch.clamp(std - c[1], min=0.0)
                    c[2] += self.hp.ema_alpha * w * (updated - c[2])
        else:
            with torch.no_grad():
                prompts.copy_(self.source_state["tap.prompts"])
            optimizer = self._adamw()
            for _ in range(self.hp.ood_steps):
                out = self._step(x, optimizer)[0]
            self.coreset.append([mean_b, std_b, prompts.detach().clone()])
        return out
