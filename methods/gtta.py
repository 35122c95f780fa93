"""`gtta`: gradual test-time adaptation by self-training and style transfer (Marsden, Döbler & Yang, arXiv 2022).

Matches mariodoebler/test-time-adaptation@8b2ed63 `classification/methods/gtta.py` (`GTTA.forward_and_adapt`,
`create_pseudo_labels`, `mixup_data`, `configure_model`; `methods/base.py` `collect_params`/`setup_optimizer`;
`conf.py` GTTA defaults) with the suite's CIFAR settings (`cfgs/cifar{10,100}_c/gtta.yaml`: Adam lr 1e-5, betas
(0.9, 0.999), wd 0, 1 step, batch 200; `GTTA.USE_STYLE_TRANSFER: False`, i.e. the mixup variant):

- the whole model in train mode, BatchNorm on test-batch statistics (running statistics dropped), every
  parameter trainable, the optimizer over every parameter named `weight`/`bias` (`collect_params`);
- per test batch x (N images), `steps` times: logits of x without gradient; at the first step of the batch the
  pseudo-labels: confidence c and class of softmax, a running confidence a <- 0.9·a + 0.1·mean(c) (a starts at 0.9
  and runs over the stream), labels whose c < sqrt(a) are ignored; a labelled source batch of N images (x_s, y_s)
  and, without gradient, for each source image the test image j maximising softmax(f(x_s)) · softmax(f(x))ᵀ
  (`torch.max(..., dim=1)`); mixup x̃ = λ·x[j] + (1-λ)·x_s (λ = 1/3); one optimizer step on CE(f(x̃), y_s); then
  f(x), one optimizer step on CE(f(x), pseudo-labels) (ignored ones left out); the returned logits are that last
  f(x) (after the source step, before the target step).

Source data: `prepare(source)` keeps the first `replay_size` source images with their labels (a replay buffer, as
`rmt`, as uint8 when they are 8-bit images); the stream draws its source batches from it in order, cycling,
instead of the official's endless shuffled loader over the whole training set (the prepare stage is cached and the
stream cannot hold a loader). Without `prepare` (library use) there is no source batch: the source step is left out.

Deviations: (1) the ImageNet-C config of the suite (`cfgs/imagenet_c/gtta.yaml`, `USE_STYLE_TRANSFER: True`)
uses an AdaIN style-transfer network (a VGG encoder and a decoder pretrained for 20,000 steps on the source,
`models/style_transfer.py`, checkpoints the suite downloads) to restyle source images with the test batches'
moments; that network is not ported, so there is no imagenet-c preset (at 8b2ed63 the style-transfer branch of
`GTTA.__init__` also reads an undefined `dataset_name`, so it does not run there as written). (2) When every
pseudo-label of a batch is ignored, the official's `cross_entropy(..., ignore_index=-1)` is NaN and its update
turns the weights into NaN; here the target step is skipped for that batch. (3) `reset()` also restores the
running confidence (the official's keeps it). Dense (segmentation) outputs are refused: the suite's segmentation
GTTA is a separate method built on style transfer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods.base import Adapter, make_optimizer, opt, optimizer_options, use_batch_stats
from tta_bench.methods.cotta import weights_and_biases

_SUITE = "mariodoebler/test-time-adaptation:classification/cfgs/"
_CIFAR = {"optimizer": "adam", "lr": 1e-5, "betas": (0.9, 0.999), "wd": 0.0, "steps": 1, "lam": 1 / 3}


@register("gtta")
class GTTA(Adapter):
    """Self-training on confident pseudo-labels plus cross-entropy on source images mixed up with test images."""

    needs_source = True
    options = {
        **optimizer_options("adam", lr=1e-5, also=("sgd",)),
        "steps": opt(1, "updates per test batch (pseudo-labels are made at the first; each: source step, target step)"),
        "lam": opt(
            1 / 3, "mixup weight of the matched test image: x̃ = lam·x_test + (1-lam)·x_src (LAMBDA_MIXUP)", "[0,1]"
        ),  # fmt: skip
        "replay_size": opt(
            10000, "source images (the first ones of the source split) kept for the source step's batches", ">=1"
        ),
    }
    presets = {
        "cifar10-c": {"source": f"{_SUITE}cifar10_c/gtta.yaml@8b2ed63", "batch_size": 200, "options": dict(_CIFAR)},
        "cifar100-c": {"source": f"{_SUITE}cifar100_c/gtta.yaml@8b2ed63", "batch_size": 200, "options": dict(_CIFAR)},
    }  # fmt: skip

    def configure(self) -> None:
        use_batch_stats(self.model)
        self.model.train()
        self.model.requires_grad_(True)
        params = [p for _, p in weights_and_biases(self.model)]
        self.optimizer = make_optimizer(params, self.hp)
        device = params[0].device if params else torch.device("cpu")
        self.register_buffer("avg_conf", torch.tensor(0.9, device=device))
        self.register_buffer("replay_x", torch.zeros(0, device=device))
        self.register_buffer("replay_y", torch.zeros(0, dtype=torch.long, device=device))

    def reset_state(self) -> None:
        self.replay_pos = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in ("replay_x", "replay_y"):  # the replay buffer's size is known only after prepare
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def prepare(self, source: Iterable) -> None:
        xs, ys, n = [], [], 0
        for batch in source:
            x, y = batch[0], batch[1]
            xs.append(x[: self.hp.replay_size - n])
            ys.append(y[: self.hp.replay_size - n])
            n += len(xs[-1])
            if n >= self.hp.replay_size:
                break
        if not xs:
            raise UserError("Method 'gtta' needs labelled source images for its source step; the source split is "
                            "empty. Use a stream with a source split.")  # fmt: skip
        device, x = self.replay_y.device, torch.cat(xs)
        q = (x.float() * 255).round()  # images that are k/255 (decoded 8-bit) are kept as uint8: a quarter the memory
        self.replay_x = (q.to(torch.uint8) if torch.equal(q / 255, x) else x).to(device)
        self.replay_y = torch.cat(ys).long().to(device)
        self.replay_pos = 0
        self.snapshot()  # the replay buffer changed shape: reset() must return to this state

    def replay(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = (self.replay_pos + torch.arange(n, device=self.replay_y.device)) % len(self.replay_y)
        self.replay_pos = (self.replay_pos + n) % len(self.replay_y)
        x = self.replay_x[idx]
        return (x.float() / 255 if x.dtype == torch.uint8 else x), self.replay_y[idx]

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()  # BatchNorm keeps using batch statistics (no running ones); dropout off
        out = self.model(x)
        self.model.train()
        return out

    @torch.no_grad()
    def pseudo_labels(self, logits: torch.Tensor) -> torch.Tensor:
        conf, labels = logits.softmax(1).max(1)
        self.avg_conf.copy_(0.9 * self.avg_conf + (1 - 0.9) * conf.mean())
        labels = labels.clone()
        labels[conf < torch.sqrt(self.avg_conf)] = -1
        return labels

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for step in range(self.hp.steps):
            with torch.no_grad():
                logits = self.model(x)
            if logits.dim() != 2:
                raise UserError(
                    f"Method 'gtta' is a classification method; this model gives dense outputs of shape "
                    f"{tuple(logits.shape)}. Use a segmentation method such as 'tent' or 'actmad'."
                )
            if step == 0:
                targets = self.pseudo_labels(logits)
            if len(self.replay_y):
                with torch.no_grad():
                    x_src, y_src = self.replay(len(x))
                    sim = self.model(x_src).softmax(1) @ logits.softmax(1).T
                    ids = torch.max(sim, dim=1)[1]
                    x_mix = self.hp.lam * x[ids] + (1 - self.hp.lam) * x_src
                F.cross_entropy(self.model(x_mix), y_src).backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            outputs = self.model(x)
            if (targets >= 0).any():  # all ignored: the official's loss is NaN (see the docstring)
                F.cross_entropy(outputs, targets, ignore_index=-1).backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return outputs
