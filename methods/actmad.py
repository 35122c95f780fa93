"""`actmad`: activation matching to align distributions (Mirza et al., CVPR 2023).

Matches jmiemirza/ActMAD@401544d (`methods/actmad_cifar.py`, `utils/utils.py` `SaveEmb`, `init.py` defaults):

- `prepare(source)` (clean source data, model in eval mode, no gradient): a forward hook on the output of every
  BatchNorm layer; for each source batch the per-element statistics over the batch dimension, mean over dim 0 and
  the unbiased variance over dim 0 of the (N, C, H, W) output, i.e. one mean and one variance *per channel and
  spatial position* (C, H, W); the source statistics are the average over batches of these batch means and batch
  variances (each batch counts once, as `SaveEmb.pop_mean/pop_var`).
- per test batch: the model in train mode with every BatchNorm layer in eval mode (running statistics used and
  not updated; dropout, if any, active), one forward with the same hooks; loss = `loss_factor` · (Σ_l L1(μ_l,
  μ̂_l) + Σ_l L1(σ²_l, σ̂²_l)), L1 = mean absolute difference over the (C, H, W) elements (`nn.L1Loss`), the
  hatted ones the source statistics; one SGD step on *all* parameters of the model (lr per dataset, momentum
  0.9, weight decay 5e-4, Nesterov). The logits returned are those of that forward (before the update).

Works for any output the model gives (logits or dense segmentation logits): the loss never reads the output.
The official KITTI (YOLOv3) code uses the same statistics with `loss_factor` 1 on the BN layers after the 26th;
ours hooks every BatchNorm layer (the CIFAR code).

Presets: `init.py` sets lr 1e-2 (CIFAR-10), 1e-3 (CIFAR-100), 2.5e-4 (ImageNet) and batch size 128 for all three;
`actmad_cifar.py` fixes SGD momentum 0.9, weight decay 5e-4, Nesterov (the ImageNet values are `init.py`'s; the
repository's `main.py` dispatches only CIFAR and KITTI). No segmentation preset: the official has none.

Deviations: (1) the official adapts on the test batches with the *training* augmentation (`use_tr_transform=True`:
random crop and flip) and evaluates the whole test set after every step, reporting the *minimum* error over steps,
and it restores the source weights for every corruption; here the batch is adapted on as given, its prediction
is the online one of the adaptation forward, and the run is continual unless the harness resets. (2) Its
MultiStepLR scheduler is never stepped there, so it is left out. (3) Batch statistics need at least 2 images per
batch and the stream's images must have the source images' size (the statistics are per spatial position): both
are refused with a UserError (the official would give NaN or a shape error). A model without BatchNorm is refused.
Without `prepare` (library use) there are no source statistics: the adapter returns the source model's predictions
and does not adapt (the harness always runs `prepare` on the stream's source split).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._norms import require_batchnorm
from tta_bench.methods.base import Adapter, bn_layers, make_optimizer, opt, optimizer_options

_REPO = "jmiemirza/ActMAD:init.py@401544d"
_SGD = {"optimizer": "sgd", "momentum": 0.9, "wd": 5e-4, "nesterov": True, "steps": 1, "loss_factor": 0.5}


def batch_statistics(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance over the batch dimension (one per channel and position), in float32."""
    acts = acts.float()
    return acts.mean(0), acts.var(0)


@register("actmad")
class ActMAD(Adapter):
    """Align per-layer activation means and variances of test batches to clean-source statistics (all params)."""

    needs_source = True
    options = {
        **optimizer_options("sgd", lr=1e-2, momentum=0.9, wd=5e-4, nesterov=True),
        "steps": opt(1, "activation-matching steps per test batch (the returned logits are the first forward's)"),
        "loss_factor": opt(
            0.5, "factor of the summed L1 losses of means and variances (CIFAR code 0.5, KITTI code 1)", ">0"
        ),
    }
    presets = {
        fam: {"source": _REPO, "batch_size": 128, "options": {**_SGD, "lr": lr},
              "note": "SGD momentum, weight decay and Nesterov: methods/actmad_cifar.py"}
        for fam, lr in (("cifar10-c", 1e-2), ("cifar100-c", 1e-3), ("imagenet-c", 2.5e-4))
    }  # fmt: skip

    def configure(self) -> None:
        require_batchnorm(self.model, "actmad", "'tent' or 'source'")
        self.layers = [m for _, m in bn_layers(self.model)]
        for i in range(len(self.layers)):  # filled by prepare(); buffers, so reset()/snapshot() keep them
            self.register_buffer(f"src_mean_{i}", torch.empty(0))
            self.register_buffer(f"src_var_{i}", torch.empty(0))
        self.model.requires_grad_(True)
        self.optimizer = make_optimizer(list(self.model.parameters()), self.hp)

    def _train_mode(self) -> None:
        self.model.train()
        for m in self.layers:
            m.eval()

    def _forward_recording(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        acts: list[torch.Tensor | None] = [None] * len(self.layers)

        def hook(i: int):
            def save(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
                acts[i] = out

            return save

        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(self.layers)]
        try:
            out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        missing = [i for i, a in enumerate(acts) if a is None]
        if missing:
            raise UserError(
                f"Method 'actmad': {len(missing)} BatchNorm layer(s) of this model are not run by its forward pass, "
                "so their activations cannot be matched. Use a model whose BatchNorm layers are all used."
            )
        return out, acts

    @torch.no_grad()
    def prepare(self, source: Iterable) -> None:
        was = self.model.training
        self.model.eval()
        sums: list[list[torch.Tensor]] | None = None
        n = 0
        device = next(self.model.parameters()).device
        for batch in source:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if len(x) < 2:
                continue  # an unbiased variance over one image is undefined (the official would average a NaN)
            _, acts = self._forward_recording(x.to(device))
            stats = [batch_statistics(a) for a in acts]
            if sums is None:
                sums = [[m.clone(), v.clone()] for m, v in stats]
            else:
                for s, (m, v) in zip(sums, stats):
                    s[0] += m
                    s[1] += v
            n += 1
        self.model.train(was)
        if sums is None:
            raise UserError(
                "Method 'actmad' needs clean source batches of at least 2 images to compute its source activation "
                "statistics, and the source split gave none. Use a stream with a source split (or a larger one)."
            )
        for i, (m, v) in enumerate(sums):
            setattr(self, f"src_mean_{i}", m / n)
            setattr(self, f"src_var_{i}", v / n)

    def source_statistics(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(getattr(self, f"src_mean_{i}"), getattr(self, f"src_var_{i}")) for i in range(len(self.layers))]

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model(x)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        source = self.source_statistics()
        if source[0][0].numel() == 0:  # no prepare(source) (library use): nothing to match, the source prediction
            self.model.eval()
            return self.model(x)
        if len(x) < 2:
            raise UserError(
                "Method 'actmad' matches the variance of activations over the test batch and needs at least 2 images "
                "per batch, got 1. Use --batch-size 2 or more."
            )
        self._train_mode()
        first = None
        for _ in range(self.hp.steps):
            out, acts = self._forward_recording(x)
            if acts[0].shape[1:] != source[0][0].shape:
                raise UserError(
                    f"Method 'actmad' matches activation statistics per spatial position, but the test images "
                    f"({tuple(x.shape[1:])}) give activations of another size than the source images did "
                    f"({tuple(acts[0].shape[1:])} vs {tuple(source[0][0].shape)} at the first BatchNorm layer). "
                    "Resize the stream's and the source split's images to the same size."
                )
            loss_mean = sum(F.l1_loss(batch_statistics(a)[0], m) for a, (m, _) in zip(acts, source))
            loss_var = sum(F.l1_loss(batch_statistics(a)[1], v) for a, (_, v) in zip(acts, source))
            loss = (loss_mean + loss_var) * self.hp.loss_factor
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            first = out if first is None else first
        return first
