"""`rotta`: robust test-time adaptation in dynamic scenarios (Yuan et al., CVPR 2023).

Matches BIT-DA/RoTTA `core/adapter/rotta.py` (`forward_and_adapt`, `update_model`,
`timeliness_reweighting`, `configure_model`), `core/utils/memory.py` (CSTU: category-balanced sampling
with timeliness and uncertainty), `core/utils/bn_layers.py` (RobustBN) and `configs/adapter/rotta.yaml`,
step for step:
- every BatchNorm1d/2d is replaced by a robust BN: in train mode it normalises with
  μ <- (1 - α) μ + α μ_batch, σ² <- (1 - α) σ² + α σ²_batch (biased, α 0.05; the updated statistics are
  stored), in eval mode with the stored statistics; only its affine parameters are trained (Adam lr 1e-3,
  betas (0.9, 0.999)); the teacher is a copy of this model (submodule `teacher`), updated by EMA with ν;
- per batch (no grad, both models in eval mode): teacher logits, pseudo-labels and entropies
  H = -Σ p log(p + 1e-6); each sample in turn enters the memory bank (capacity 64) and every
  `update_frequency` (64) samples the model is updated: both models in train mode; loss = mean over the
  bank of w(a) · CE(student(strong_aug(bank)), softmax(teacher(bank))) with the timeliness weight
  w(a) = exp(-a) / (1 + exp(-a)), a = age / capacity; Adam step; teacher <- (1 - ν) teacher + ν student
  (ν 0.001).
- memory (CSTU): score = λ_t / (1 + exp(-age / capacity)) + λ_u · H / ln C; a sample of (pseudo-)class c
  is added if c holds fewer than capacity / C items and the bank is not full, else it replaces the
  highest-score item of the majority classes (or of c itself when c is full) if that score is higher than
  the newcomer's; then every item ages by one.
- the returned logits are the teacher's, computed before any update in the batch (official `ema_out`).
The official stream uses a Dirichlet class-order sampler (`--setting non-iid` here). Batch size 1 works.
LayerNorm/GroupNorm layers (ViTs; RoTTA's own code only knows BN) keep their normalisation and their affine
parameters are trained, as in mariodoebler/test-time-adaptation `methods/rotta.py` (`configure_model`).
Presets: CIFAR-10-C and CIFAR-100-C share `configs/adapter/rotta.yaml` (batch 64); ImageNet-C is the suite's
`cfgs/imagenet_c/rotta.yaml` (the same Adam lr 1e-3). All equal the class defaults.
Short domains: the robust-BN statistics move by α per update, one update per `update_frequency` samples,
so with 200 images per domain (3 updates) they lag a domain behind. Measured, ResNet-20 on CIFAR-10-C
severity 5, continual: 58.8 % mean error at 200/domain (source 56.7 %), 51.6 % at 1,000/domain (source 58.6 %).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

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
)


class RobustBN(nn.Module):
    """BatchNorm with source statistics updated by an exponential moving average of batch statistics."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, alpha: float) -> None:
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise UserError(
                "rotta needs BatchNorm layers with source running statistics (track_running_stats=True); this model's "
                "BN layers have none. Use a model trained with running statistics."
            )
        self.alpha, self.eps = alpha, bn.eps
        self.register_buffer("source_mean", bn.running_mean.detach().clone())
        self.register_buffer("source_var", bn.running_var.detach().clone())
        self.weight = nn.Parameter(bn.weight.detach().clone())
        self.bias = nn.Parameter(bn.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training:
            b_var, b_mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], unbiased=False)
            mean = (1 - self.alpha) * self.source_mean + self.alpha * b_mean
            var = (1 - self.alpha) * self.source_var + self.alpha * b_var
            with torch.no_grad():
                self.source_mean.copy_(mean)
                self.source_var.copy_(var)
        else:
            mean, var = self.source_mean, self.source_var
        x = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return x * self.weight.view(shape) + self.bias.view(shape)


class CSTU:
    """Category-balanced memory bank (official CSTU); items are [x, uncertainty, age] per class."""

    def __init__(self, capacity: int, num_class: int, lambda_t: float, lambda_u: float) -> None:
        self.capacity, self.num_class = capacity, num_class
        self.per_class = capacity / num_class
        self.lambda_t, self.lambda_u = lambda_t, lambda_u
        self.data: list[list[list]] = [[] for _ in range(num_class)]

    def occupancy(self) -> int:
        return sum(len(c) for c in self.data)

    def score(self, age: int, uncertainty: float) -> float:
        return self.lambda_t * 1 / (1 + math.exp(-age / self.capacity)) + self.lambda_u * uncertainty / math.log(
            self.num_class
        )

    def add(self, x: torch.Tensor, cls: int, uncertainty: float) -> None:
        if self._make_room(cls, self.score(0, uncertainty)):
            self.data[cls].append([x, uncertainty, 0])
        for items in self.data:
            for item in items:
                item[2] += 1

    def _make_room(self, cls: int, new_score: float) -> bool:
        if len(self.data[cls]) < self.per_class:
            if self.occupancy() < self.capacity:
                return True
            sizes = [len(c) for c in self.data]
            return self._remove_from([i for i, n in enumerate(sizes) if n == max(sizes)], new_score)
        return self._remove_from([cls], new_score)

    def _remove_from(self, classes: list[int], new_score: float) -> bool:
        best = None  # (score, class, index): the last maximum wins, as in the official `>=`
        for c in classes:
            for i, (_, unc, age) in enumerate(self.data[c]):
                s = self.score(age, unc)
                if best is None or s >= best[0]:
                    best = (s, c, i)
        if best is None:
            return True
        if best[0] > new_score:
            self.data[best[1]].pop(best[2])
            return True
        return False

    def memory(self) -> tuple[list[torch.Tensor], list[float]]:
        """Items in class order, and their ages divided by the capacity."""
        items = [it for c in self.data for it in c]
        return [it[0] for it in items], [it[2] / self.capacity for it in items]


def timeliness_reweighting(ages: torch.Tensor) -> torch.Tensor:
    """RoTTA's timeliness weight exp(-a) / (1 + exp(-a)) of normalised ages a."""
    return torch.exp(-ages) / (1 + torch.exp(-ages))


_OFFICIAL = {
    "optimizer": "adam",
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "wd": 0.0,
    "memory_size": 64,
    "update_frequency": 64,
    "nu": 0.001,
    "alpha": 0.05,
    "lambda_t": 1.0,
    "lambda_u": 1.0,
}


@register("rotta")
class RoTTA(Adapter):
    """Robust BN + category-balanced memory bank + timeliness-reweighted teacher-student update."""

    options = {
        **optimizer_options("adam", lr=1e-3),
        "memory_size": opt(64, "capacity of the category-balanced memory bank (CSTU), in test samples", ">=1"),
        "update_frequency": opt(64, "adapt once per this many test samples, on the memory bank", ">=1"),
        "nu": opt(0.001, "EMA rate ν of the teacher: teacher <- (1 - ν) teacher + ν student after each update",
                  "[0,1]"),
        "alpha": opt(0.05, "momentum α of the robust BN statistics: μ <- (1 - α) μ + α μ_batch in train-mode "
                           "forwards", "[0,1]"),
        "lambda_t": opt(1.0, "weight of timeliness (age) in the memory's heuristic score", ">=0"),
        "lambda_u": opt(1.0, "weight of uncertainty (entropy / ln C) in the memory's heuristic score", ">=0"),
    }  # fmt: skip

    presets = {
        fam: {"source": src, "batch_size": 64, "options": _OFFICIAL}
        for fam, src in (("cifar10-c", "BIT-DA/RoTTA:configs/adapter/rotta.yaml@67e34c9"),
                         ("cifar100-c", "BIT-DA/RoTTA:configs/adapter/rotta.yaml@67e34c9"),
                         ("imagenet-c",
                          "mariodoebler/test-time-adaptation:classification/cfgs/imagenet_c/rotta.yaml@8b2ed63"))
    }  # fmt: skip

    def configure(self) -> None:
        self.model.requires_grad_(False)
        for name, m in list(self.model.named_modules()):
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                self.model.set_submodule(name, RobustBN(m, self.hp.alpha))
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):  # the suite's configure_model: trained as they are
                m.requires_grad_(True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise UserError(
                "rotta trains the affine parameters of BatchNorm/LayerNorm/GroupNorm layers; this model has none with "
                "affine parameters. Use 'lame' or 'source'."
            )
        self.optimizer = make_optimizer(params, self.hp)
        self.teacher = frozen_copy(self.model)

    def reset_state(self) -> None:
        self.mem: CSTU | None = None
        self.seen = 0

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        return self.teacher(x)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.model.eval()
            self.teacher.eval()
            ema_out = self.teacher(x)
            predict = torch.softmax(ema_out, dim=1)
            pseudo_label = torch.argmax(predict, dim=1)
            ent = torch.sum(-predict * torch.log(predict + 1e-6), dim=1)
        if self.mem is None:
            self.mem = CSTU(self.hp.memory_size, ema_out.shape[1], self.hp.lambda_t, self.hp.lambda_u)
        for i, (label, unc) in enumerate(zip(pseudo_label.tolist(), ent.tolist())):
            self.mem.add(x[i], label, unc)
            self.seen += 1
            if self.seen % self.hp.update_frequency == 0:
                self.update_model()
        return ema_out

    def update_model(self) -> None:
        self.model.train()
        self.teacher.train()
        data, ages = self.mem.memory()
        if data:
            sup = torch.stack(data)
            strong = tta_augment(sup)
            ema_sup_out = self.teacher(sup)
            stu_sup_out = self.model(strong)
            w = timeliness_reweighting(torch.tensor(ages, dtype=torch.float32, device=sup.device))
            loss = (cross_entropy_soft(stu_sup_out, ema_sup_out.softmax(1)) * w).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        ema_update(self.teacher, self.model, 1 - self.hp.nu)
