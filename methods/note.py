"""`note`: NOTE, robust continual test-time adaptation against temporal correlation (Gong et al., NeurIPS 2022).

Matches TaesikGong/NOTE@a714a2a (`learner/note.py`, `utils/iabn.py`, `utils/memory.py` PBRS, `utils/loss_functions.py`
HLoss, `tta.sh` METHOD=NOTE) and its port LINs-lab/ttab@19cb3ce (`ttab/model_adaptation/note.py`,
`ttab/model_adaptation/utils.py` InstanceAwareBatchNorm2d/1d, HLoss):

- Instance-aware BatchNorm (IABN, `iabn=True`): every BatchNorm1d/2d becomes an IABN layer that keeps the original
  layer (`_bn`: its affine weights and running statistics). Per channel, with the instance statistics (mean μ_i,
  unbiased variance σ²_i over the spatial positions of one sample) and the "batch" statistics (μ_b, σ²_b: the
  running statistics in eval mode; the unbiased statistics of the batch in train mode, where `_bn` also updates its
  running statistics), μ = μ_b + softshrink(μ_i − μ_b, k·sqrt((σ²_b+ε)/L)), σ² = relu(σ²_b + softshrink(σ²_i − σ²_b,
  k·(σ²_b+ε)·sqrt(2/(L−1)))), y = (x − μ)/sqrt(σ² + ε)·γ + β, L = H·W (or the length of a 1d input). Layers with
  L <= `skip_thres` use μ_b, σ²_b unchanged.
- Source model: NOTE trains the IABN layers at source time (its `train_src.sh` checkpoints `_iabn_k4`); we, like
  TTAB (`convert_iabn` on a pretrained model, then `load_pretrained_model`), convert the given pretrained BN model
  at test time: each IABN layer takes the source BN layer's weights and statistics unchanged. `iabn=False` keeps
  plain BN layers (TTAB's config default), updated the same way (running statistics at `bn_momentum`).
- Every BN layer (also the one inside IABN) tracks running statistics with momentum `bn_momentum` (0.01), and only
  its affine parameters are trained.
- The stream is consumed sample by sample as the official `train_online`: each sample is predicted by the current
  model in eval mode (running statistics, "batch-free" inference, `use_learned_stats`), its argmax is its pseudo
  label, and it enters the memory; after every `update_every` samples (counted over the stream) the model, in train
  mode, runs `steps` epochs over the memory (one batch: the official loader's batch 128/256 exceeds the 64 stored
  samples) minimising HLoss = mean over samples *and classes* of −p·log(p + 1e-6), p = softmax(logits /
  `temperature`). A test batch is cut at those multiples, so the predictions and memory are those of the official
  per-sample loop (eval mode is per sample); the returned logits are the eval-mode ones, computed before the update
  that follows their sample.
- Memory: prediction-balanced reservoir sampling (PBRS, `memory="pbrs"`): a full memory makes room for a sample of
  pseudo class c by dropping a random sample of a largest class (chosen at random among ties) when c is not one,
  else, with probability m_c/n_c (stored/seen of class c), a random sample of c itself (else the new sample is not
  stored). `memory="fifo"` is the official NOTE_iid variant (the last `memory_size` samples).

Defaults and presets: `tta.sh` at a714a2a, METHOD=NOTE (the same for cifar10, cifar100 and imagenet): lr 0.0001,
EPOCH 1, memory_type PBRS, memory_size 64, update_every_x 64, bn_momentum 0.01, iabn_k 4, weight_decay 0; `main.py`:
--temperature 1.0, --skip_thres 1; `learner/dnn.py`: Adam (TTAB: SGD). Only BN models (refused otherwise, UserError).

Deviations: randomness (PBRS choices) comes from torch's global generator (seeded by the harness) instead of Python's
`random`; a BN layer without running statistics is refused (NOTE needs them); a BatchNorm1d on (N, C) features is
treated as L = 1 (plain BN: the official IABN1d needs a length dimension). The official's final "update with the
entire data" at the stream's end when it is shorter than `update_every` is not reproduced (the adapter does not
know where the stream ends).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._norms import require_batchnorm
from tta_bench.methods.base import Adapter, make_optimizer, opt, optimizer_options, train_only

_NOTE = {"optimizer": "adam", "lr": 1e-4, "betas": (0.9, 0.999), "wd": 0.0, "steps": 1, "memory": "pbrs",
         "memory_size": 64, "update_every": 64, "bn_momentum": 0.01, "iabn": True, "iabn_k": 4.0, "skip_thres": 1,
         "temperature": 1.0}  # fmt: skip


def _softshrink(d: torch.Tensor, lbd: torch.Tensor) -> torch.Tensor:
    return F.relu(d - lbd) - F.relu(-d - lbd)


class InstanceAwareBatchNorm(nn.Module):
    """IABN around a source BatchNorm1d/2d layer `bn` (kept as `_bn`: affine weights, running statistics)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, k: float, skip_thres: int) -> None:
        super().__init__()
        self._bn, self.k, self.skip_thres, self.eps = bn, float(k), int(skip_thres), bn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if x.dim() == 2:  # (N, C) features: no length to take instance statistics over (L = 1)
            x3, length = x.unsqueeze(2), 1
        else:
            x3, length = x.flatten(2), math.prod(x.shape[2:])
        if self.training:
            self._bn(x)  # updates the running statistics; output discarded
            var_b, mu_b = torch.var_mean(x3, dim=(0, 2), keepdim=True, unbiased=True)
        else:
            mu_b, var_b = self._bn.running_mean.view(1, c, 1), self._bn.running_var.view(1, c, 1)
        if length <= self.skip_thres:
            mu, var = mu_b, var_b
        else:
            var_i, mu_i = torch.var_mean(x3, dim=2, keepdim=True, unbiased=True)
            s_mu = torch.sqrt((var_b + self.eps) / length)
            s_var = (var_b + self.eps) * math.sqrt(2 / (length - 1))
            mu = mu_b + _softshrink(mu_i - mu_b, self.k * s_mu)
            var = F.relu(var_b + _softshrink(var_i - var_b, self.k * s_var))
        y = (x3 - mu) * torch.rsqrt(var + self.eps)
        if self._bn.affine:
            y = y * self._bn.weight.view(1, c, 1) + self._bn.bias.view(1, c, 1)
        return y.view_as(x)


def convert_iabn(module: nn.Module, k: float, skip_thres: int) -> nn.Module:
    """Replace every BatchNorm1d/2d of `module` (in place; the root too) by IABN around that same layer."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return InstanceAwareBatchNorm(module, k, skip_thres)
    for name, child in module.named_children():
        setattr(module, name, convert_iabn(child, k, skip_thres))
    return module


def hloss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """NOTE's HLoss: mean over samples and classes of -p·log(p + 1e-6), p = softmax(logits / T)."""
    p = F.softmax(logits / temperature, dim=1)
    return -(p * torch.log(p + 1e-6)).mean()


class PBRS:
    """Prediction-balanced reservoir sampling: per pseudo class a list of stored samples and a seen-counter."""

    def __init__(self, capacity: int, num_class: int) -> None:
        self.capacity, self.data, self.counter = capacity, [[] for _ in range(num_class)], [0] * num_class

    def occupancy(self) -> int:
        return sum(len(d) for d in self.data)

    def add(self, x: torch.Tensor, cls: int) -> None:
        self.counter[cls] += 1
        if self.occupancy() >= self.capacity and not self._make_room(cls):
            return
        self.data[cls].append(x)

    def _make_room(self, cls: int) -> bool:
        sizes = [len(d) for d in self.data]
        largest = [i for i, s in enumerate(sizes) if s == max(sizes)]
        if cls not in largest:
            victim = largest[int(torch.randint(len(largest), ()).item())]
            self.data[victim].pop(int(torch.randint(sizes[victim], ()).item()))
            return True
        if torch.rand(()).item() <= sizes[cls] / self.counter[cls]:
            self.data[cls].pop(int(torch.randint(sizes[cls], ()).item()))
            return True
        return False

    def samples(self) -> list[torch.Tensor]:
        return [x for d in self.data for x in d]


class FIFO:
    """The last `capacity` samples (NOTE_iid's memory)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.data = capacity, []

    def add(self, x: torch.Tensor, cls: int) -> None:
        if len(self.data) >= self.capacity:
            self.data.pop(0)
        self.data.append(x)

    def samples(self) -> list[torch.Tensor]:
        return list(self.data)


@register("note")
class NOTE(Adapter):
    """Instance-aware BN + prediction-balanced memory; entropy minimisation on the memory every `update_every`."""

    options = {
        **optimizer_options("adam", lr=1e-4, also=("sgd",)),
        "steps": opt(1, "epochs over the memory per update (official --epoch; the memory is one batch)"),
        "memory": opt("pbrs", "memory: pbrs (prediction-balanced reservoir) or fifo (NOTE_iid)", ("pbrs", "fifo")),
        "memory_size": opt(64, "number of test samples the memory holds", ">=1"),
        "update_every": opt(64, "adapt after every this many test samples (counted over the stream)", ">=1"),
        "bn_momentum": opt(
            0.01, "momentum of every BN layer's running statistics (updated on the memory batch)", "(0,1]"
        ),
        "iabn": opt(True, "replace BatchNorm by instance-aware BN (IABN) around the source layer"),
        "iabn_k": opt(4.0, "IABN k: instance statistics beyond k standard errors of the BN ones are used", ">=0"),
        "skip_thres": opt(1, "IABN uses plain BN statistics in layers with at most this many positions (H·W)", ">=0"),
        "temperature": opt(1.0, "softmax temperature of the entropy loss (HLoss)", ">0"),
    }
    presets = {
        fam: {"source": "TaesikGong/NOTE:tta.sh@a714a2a", "options": dict(_NOTE)}
        for fam in ("cifar10-c", "cifar100-c", "imagenet-c")
    }

    def configure(self) -> None:
        require_batchnorm(self.model, "note", "'tent' (trains LayerNorm/GroupNorm affine parameters) or 'source'")
        self.model.requires_grad_(False)
        params = []
        for name, m in self.model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is None:
                    raise UserError(
                        f"Method 'note' predicts with BatchNorm running statistics but layer '{name}' has none "
                        "(track_running_stats=False). Use 'tent' or 'norm', or a model with running statistics."
                    )
                m.momentum = float(self.hp.bn_momentum)
                if m.affine:
                    params += [m.weight, m.bias]
        if self.hp.iabn:
            self.model = convert_iabn(self.model, self.hp.iabn_k, self.hp.skip_thres)
        self.model.eval()
        self.optimizer = make_optimizer(train_only(self.model, params), self.hp)

    def reset_state(self) -> None:
        self.memory: PBRS | FIFO | None = None  # PBRS needs the number of classes: built on the first batch
        self.seen = 0

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return self.model(x)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        outputs, start, every = [], 0, self.hp.update_every
        while start < len(x):
            n = min(len(x) - start, every - self.seen % every)  # samples up to the next update (or the batch end)
            chunk = x[start : start + n]
            self.model.eval()
            with torch.no_grad():
                logits = self.model(chunk)
            if logits.dim() != 2:
                raise UserError(
                    f"Method 'note' keeps a memory balanced by predicted class, one class per sample, but the model "
                    f"returned outputs of shape {tuple(logits.shape)} (dense predictions). Use a classification "
                    "stream, or 'tent'/'norm' for segmentation."
                )
            if self.memory is None:
                self.memory = (PBRS(self.hp.memory_size, logits.shape[1]) if self.hp.memory == "pbrs"
                               else FIFO(self.hp.memory_size))  # fmt: skip
            for xi, ci in zip(chunk, logits.argmax(1).tolist()):
                self.memory.add(xi.detach().clone(), ci)
            outputs.append(logits)
            self.seen += n
            start += n
            if self.seen % every == 0:
                self.update()
        self.model.eval()
        return torch.cat(outputs)

    def update(self) -> None:
        feats = torch.stack(self.memory.samples())
        self.model.train()
        for _ in range(self.hp.steps):
            loss = hloss(self.model(feats), self.hp.temperature)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
