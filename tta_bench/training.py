"""Seeded supervised training of source models on a stream's clean source data (CPU-friendly).

Determinism: training (and every prepare stage, through `deterministic`) runs on one CPU thread, with its own
RNG (the global one is restored afterwards), so a trained model is the same bit for bit whatever the machine's
core count, the torch thread setting or what ran before; `zero_grads` leaves no `.grad` behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from tta_bench.progress import progress


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to `pad` pixels (pad with edge values, then crop back). x: (N,C,H,W)."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(-1, x.shape[1], -1, w + 2 * pad)
    xr = xp.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(-1, x.shape[1], h, -1)
    return xr.gather(3, cols)


@contextmanager
def deterministic(device: torch.device | str = "cpu") -> Iterator[None]:
    """One intra-op thread on the CPU (float reductions then do not depend on the thread count), restored after.

    On CUDA nothing changes: GPU kernels' determinism is the device's (not forced here).
    """
    if torch.device(device).type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def zero_grads(module: torch.nn.Module) -> None:
    """Drop every parameter's `.grad` (None): no gradient leaks from training or a prepare stage into a stream."""
    for p in module.parameters():
        p.grad = None


def train_classifier(
    model: nn.Module,
    data: Dataset,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    shift: int = 2,
    desc: str = "training source model",
) -> nn.Module:
    """Train `model` (inputs in [0,1], outputs logits) with Adam + cross-entropy, cosine schedule.

    Bit-identical for a given seed on CPU whatever the thread setting (see the module doc). `shift` pixels of
    random translation as augmentation.
    """
    with deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _train(model, data, epochs, lr, batch_size, seed, shift, desc)
    zero_grads(model)
    return model.eval()


def _train(model: nn.Module, data: Dataset, epochs: int, lr: float, batch_size: int, seed: int, shift: int,
           desc: str) -> None:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=g, drop_last=len(data) > batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader)))
    model.train()
    last = [float("nan")]  # the last batch's loss of the latest epoch (shown with the progress)
    with progress(range(epochs), desc=desc, unit="epoch", postfix=lambda: f"loss {last[0]:.3f}") as shown:
        for _ in shown:
            for x, y in loader:
                if shift:
                    x = random_shift(x, shift, g)
                loss = F.cross_entropy(model(x), y.long().view(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            last[0] = float(loss.detach())
