"""Seeded supervised training of source models on a stream's clean source data (CPU-friendly)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


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

    Deterministic for a given seed on CPU. `shift` pixels of random translation as augmentation.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=g, drop_last=len(data) > batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader)))
    model.train()
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", leave=False, disable=None):
        for x, y in loader:
            if shift:
                x = random_shift(x, shift, g)
            loss = F.cross_entropy(model(x), y.long().view(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()
