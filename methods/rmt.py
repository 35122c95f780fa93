"""`rmt`: robust mean teacher for continual and gradual TTA (Döbler, Marsden & Yang, CVPR 2023).

Matches mariodoebler/test-time-adaptation `classification/methods/rmt.py` (commit 8b2ed63; the authors' suite),
its `utils/losses.py` (SymmetricCrossEntropy), `utils/misc.py` (ema_update_model), `conf.py` (RMT, CONTRAST,
M_TEACHER defaults) and `cfgs/{cifar10_c,cifar100_c,imagenet_c}/rmt.yaml`, step for step:
- model in eval mode with BatchNorm on test-batch statistics, every parameter trainable, the optimizer over every
  `weight`/`bias` (Adam lr 1e-3 on CIFAR; SGD lr 0.01, momentum 0.9, Nesterov on ImageNet-C) plus the projector
  (own group, same lr); the mean teacher is a copy of the configured model (submodule `teacher`).
- prepare(source): class prototypes of the source features (methods/_contrast.py); then the mean-teacher warm-up:
  `num_samples_warm_up // batch size` steps on source batches (cycling the loader) with the loss
  SCE(student(x), teacher(x)).mean(), the lr ramped linearly to its final value ((i+1)/steps · lr), the teacher
  updated after each step (θ_t <- m θ_t + (1-m) θ_s over all parameters, m 0.999); then the replay buffer.
- per test batch: features/logits of x and of tta_augment(x) (CoTTA's augmentation), teacher logits; loss =
  λ_trg · mean(½ SCE(student, teacher) + ½ SCE(student_aug, teacher)) + λ_cont · SupCon([nearest source prototype,
  features, augmented features]) + λ_src · CE(student(x_src), y_src) on a replayed source batch of the test batch
  size; one optimizer step; teacher EMA (m 0.999). Returned: student logits + teacher logits (before the update);
  `predict` returns the same ensemble.
Deviations (why): source replay draws batches in order from a buffer of the first `replay_size` source images of
one shuffled pass (stored as uint8 when the images are k/255, else float), starting at its beginning after the
warm-up, instead of an endless loader over the whole source set: prepare is cached and the stream cannot hold the
loader. The optimizer state of the warm-up (Adam's moments and step count, or SGD's momentum buffers) is carried into
the stream, as the official code does (its warm-up checkpoint saves the optimizer and `reset()` returns to it): it
is kept as `optim_state_*` buffers, so the cached prepare state holds it (methods/_optim_state.py; a copy of it:
Adam's two moments add two parameter-sized tensors to the adapter's memory). The warm-up lr
schedule ends at the final lr as in the official. The encoder/classifier split is the generic one of
methods/_contrast.py. Without `prepare` (library use) it runs source-free: no warm-up, no replay, no contrastive
term.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.methods import register
from tta_bench.methods._augment import tta_augment
from tta_bench.methods._contrast import PrototypeContrast
from tta_bench.methods._losses import symmetric_cross_entropy
from tta_bench.methods._optim_state import load_state_tensors, state_tensors
from tta_bench.methods.base import ema_update, frozen_copy, make_optimizer, opt, optimizer_options, use_batch_stats
from tta_bench.methods.cotta import weights_and_biases

_OPT = "optim_state_"  # buffer-name prefix of the optimizer state kept from the warm-up
SUITE = "mariodoebler/test-time-adaptation:classification/cfgs/{}/rmt.yaml@8b2ed63"


def cycle(source: Iterable) -> Iterator:
    while True:
        yield from source


@register("rmt")
class RMT(PrototypeContrast):
    """Mean teacher with symmetric CE, source-prototype contrast, source replay and a source warm-up."""

    options = {
        **optimizer_options("adam", lr=1e-3, also=("sgd",)),
        "steps": opt(1, "optimizer steps per test batch, each followed by the teacher EMA (returned: the last "
                        "step's student + teacher logits, before its update)"),
        "mt": opt(0.999, "mean-teacher EMA momentum m: teacher <- m teacher + (1 - m) student, after every step "
                         "(warm-up included)", "[0,1]"),
        "lambda_ce_src": opt(1.0, "weight of the cross-entropy on a replayed labelled source batch (0: no replay)",
                             ">=0"),
        "lambda_ce_trg": opt(1.0, "weight of the symmetric cross-entropy of the student (on x and its augmentation) "
                                  "against the mean teacher", ">=0"),
        "lambda_cont": opt(1.0, "weight of the SupCon loss aligning test features (and augmented ones) with their "
                                "nearest source class prototype", ">=0"),
        "temperature": opt(0.1, "SupCon temperature (divides the cosine similarities of the projected features)",
                           ">0"),
        "projection_dim": opt(128, "hidden and output width of the contrastive projector Linear-ReLU-Linear", ">=1"),
        "num_samples_warm_up": opt(50000, "source images of the mean-teacher warm-up in prepare (steps = this // "
                                          "batch size, lr ramped linearly; 0: no warm-up)", ">=0"),
        "max_proto_samples": opt(100000, "source images for the class prototypes: prepare stops reading source "
                                         "batches once more than this many are held", ">=1"),
        "replay_size": opt(10000, "source images (first ones of one pass) kept in the replay buffer the source "
                                  "cross-entropy draws its batches from, in order", ">=1"),
    }  # fmt: skip
    needs_source = True
    presets = {
        "cifar10-c": {"source": SUITE.format("cifar10_c"), "options": {}},
        "cifar100-c": {"source": SUITE.format("cifar100_c"), "options": {}},
        "imagenet-c": {
            "source": SUITE.format("imagenet_c"),
            "options": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True},
        },
    }

    def configure(self) -> None:
        use_batch_stats(self.model)
        self.model.requires_grad_(True)
        self.optimizer = make_optimizer([p for _, p in weights_and_biases(self.model)], self.hp)
        self.teacher = frozen_copy(self.model)
        self.setup_contrast()
        device = self.prototypes.device
        self.register_buffer("replay_x", torch.zeros(0, device=device))
        self.register_buffer("replay_y", torch.zeros(0, dtype=torch.long, device=device))
        self.register_buffer("warmup_steps_done", torch.zeros((), dtype=torch.long, device=device))

    def reset_state(self) -> None:
        self.replay_pos = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in ("replay_x", "replay_y"):  # the replay buffer's size is known only after prepare
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        for key, value in state_dict.items():  # the warm-up's optimizer state, registered after prepare
            if key.startswith(prefix + _OPT) and "." not in key[len(prefix) :]:
                self.register_buffer(key[len(prefix) :], torch.empty_like(value, device=self.replay_y.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        saved = {k[len(_OPT) :]: b for k, b in self._buffers.items() if k.startswith(_OPT)}
        if saved:
            load_state_tensors(self.optimizer, saved)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.teacher(x)

    # --- prepare: prototypes, warm-up, replay buffer --------------------------------------------------------
    def prepare(self, source: Iterable) -> None:
        self.fit_prototypes(source)
        batches = cycle(source)
        steps = self.hp.num_samples_warm_up // len(next(iter(source))[0])
        with torch.enable_grad():
            for i in range(steps):
                for group in self.optimizer.param_groups:
                    group["lr"] = self.hp.lr * (i + 1) / steps
                self.warmup_step(next(batches)[0].to(self.prototypes.device))
        for group in self.optimizer.param_groups:
            group["lr"] = self.hp.lr
        self.warmup_steps_done.fill_(steps)
        for key, value in state_tensors(self.optimizer).items():  # kept into the stream, as the official code does
            self.register_buffer(_OPT + key, value)
        self.fill_replay(source)
        self.snapshot()  # the replay buffer changed shape: reset() must return to this state

    def warmup_step(self, x: torch.Tensor) -> torch.Tensor:
        """One mean-teacher warm-up step on source images `x` (no labels)."""
        outputs = self.model(x)
        loss = symmetric_cross_entropy(outputs, self.teacher(x)).mean(0)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        ema_update(self.teacher, self.model, self.hp.mt)
        return loss.detach()

    def prepare_step(self) -> nn.Module:
        return _WarmupStep(self)

    @torch.no_grad()
    def fill_replay(self, source: Iterable) -> None:
        xs, ys, n = [], [], 0
        for x, y in source:
            xs.append(x[: self.hp.replay_size - n])
            ys.append(y[: self.hp.replay_size - n])
            n += len(xs[-1])
            if n >= self.hp.replay_size:
                break
        x, device = torch.cat(xs), self.prototypes.device
        q = (x.float() * 255).round()
        self.replay_x = (q.to(torch.uint8) if torch.equal(q / 255, x) else x).to(device)
        self.replay_y = torch.cat(ys).long().to(device)

    def replay(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = (self.replay_pos + torch.arange(n, device=self.replay_y.device)) % len(self.replay_y)
        self.replay_pos = (self.replay_pos + n) % len(self.replay_y)
        x = self.replay_x[idx]
        return (x.float() / 255 if x.dtype == torch.uint8 else x), self.replay_y[idx]

    # --- the stream -----------------------------------------------------------------------------------------
    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            outputs = self.step(x)
        return outputs

    def step(self, x: torch.Tensor) -> torch.Tensor:
        feats, outputs = self.tap(x)
        feats_aug, outputs_aug = self.tap(tta_augment(x))
        with torch.no_grad():
            outputs_ema = self.teacher(x)
        sce = symmetric_cross_entropy
        loss_st = (0.5 * sce(outputs, outputs_ema) + 0.5 * sce(outputs_aug, outputs_ema)).mean(0)
        loss = self.hp.lambda_ce_trg * loss_st + self.hp.lambda_cont * self.contrastive(feats, feats_aug)
        if self.hp.lambda_ce_src > 0 and len(self.replay_y):
            x_src, y_src = self.replay(len(x))
            loss = loss + self.hp.lambda_ce_src * F.cross_entropy(self.model(x_src), y_src)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        ema_update(self.teacher, self.model, self.hp.mt)
        return (outputs + outputs_ema).detach()


class _WarmupStep(nn.Module):
    """One warm-up step as a module (the harness measures the prepare stage's memory with it, on a copy)."""

    def __init__(self, adapter: RMT) -> None:
        super().__init__()
        self.adapter = adapter
        self.model = adapter.model
        self.optimizer = adapter.optimizer

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.adapter.trainable_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return self.adapter.warmup_step(x)
