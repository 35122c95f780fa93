"""Noise corruptions: gaussian, shot (Poisson), impulse (salt & pepper), speckle.

Algorithms and tables: Hendrycks & Dietterich, make_imagenet_c.py / make_cifar_c.py (see tables.py).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.special import gammaln

from ._ops import to_device
from ._registry import register
from .tables import params


def _randn(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def _rand(x: torch.Tensor, gen: torch.Generator | None, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.rand(x.shape, generator=gen, device=x.device, dtype=dtype or x.dtype)


@register("gaussian_noise", "additive i.i.d. Gaussian noise per pixel and channel")
def gaussian_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    c = params("gaussian_noise", severity, *x.shape[-2:])
    return x + _randn(x, gen) * c


@register("speckle_noise", "multiplicative Gaussian noise x + x * n")
def speckle_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    c = params("speckle_noise", severity, *x.shape[-2:])
    return x + x * _randn(x, gen) * c


@register("impulse_noise", "salt-and-pepper noise (skimage random_noise mode='s&p')")
def impulse_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    amount = params("impulse_noise", severity, *x.shape[-2:])
    flipped = _rand(x, gen) <= amount
    salted = _rand(x, gen) <= 0.5  # skimage's default salt_vs_pepper
    out = torch.where(flipped & salted, torch.ones_like(x), x)
    return torch.where(flipped & ~salted, torch.zeros_like(x), out)


@register("shot_noise", "Poisson photon noise: poisson(x * c) / c")
def shot_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None) -> torch.Tensor:
    c = float(params("shot_noise", severity, *x.shape[-2:]))
    return poisson_8bit(x, c, gen) / c


_LEVELS = 255
_GUIDE = 1024  # guide-table bins per rate


@lru_cache(maxsize=32)
def _poisson_tables(c: float) -> tuple[np.ndarray, np.ndarray, int]:
    """CDF and guide tables of Poisson(j / 255 * c) for the 256 8-bit levels ``j``.

    Returns ``cdf`` ``(256, K)`` (last column forced above 1), ``guide`` ``(256, _GUIDE)`` with the
    smallest ``k`` such that ``cdf[j, k] > m / _GUIDE``, and ``K``.
    """
    lam = np.arange(_LEVELS + 1) / _LEVELS * c
    kmax = int(np.ceil(c + 14 * np.sqrt(c) + 30))
    k = np.arange(kmax + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = k[None, :] * np.log(lam[:, None]) - lam[:, None] - gammaln(k + 1)[None, :]
    logp[0] = -np.inf
    logp[0, 0] = 0.0
    cdf = np.cumsum(np.exp(logp), axis=1)
    cdf[:, -1] = 2.0  # tail mass below 1e-40 lands on the last k: guarantees termination
    edges = np.arange(_GUIDE) / _GUIDE
    guide = np.stack([np.searchsorted(row, edges, side="right") for row in cdf])
    return cdf, guide, kmax + 1


def poisson_8bit(x: torch.Tensor, c: float, gen: torch.Generator | None) -> torch.Tensor:
    """Samples of Poisson(x * c), same shape/dtype as ``x`` (``x`` in [0, 1]).

    Fast exact path when ``x`` holds 8-bit levels (``x * 255`` within 1e-3 of integers, the case
    for decoded images): inverse-CDF sampling through a guide table (one uniform per pixel; the
    rate is the level's exact ``j / 255 * c``). Any other input falls back to ``torch.poisson``
    (exact, slower on CPU).
    """
    level = torch.round(x * _LEVELS)
    if (x * _LEVELS - level).abs().max() > 1e-3:
        return torch.poisson(x * c, generator=gen)
    cdf_np, guide_np, kk = _poisson_tables(c)
    f64 = x.new_empty(0, dtype=torch.float64)
    cdf = to_device(("pcdf", c), cdf_np.ravel(), f64)
    guide = to_device(("pguide", c), guide_np.ravel(), x.new_empty(0, dtype=torch.long))
    j = level.long().reshape(-1)
    u = torch.rand(j.shape, generator=gen, device=x.device, dtype=torch.float64)
    k = guide[j * _GUIDE + (u * _GUIDE).long().clamp_(max=_GUIDE - 1)]
    row = j * kk
    active = torch.nonzero(u >= cdf[row + k]).squeeze(1)
    while active.numel():  # a few guide bins straddle CDF steps: walk up to the exact k
        k[active] += 1
        active = active[u[active] >= cdf[row[active] + k[active]]]
    return k.reshape(x.shape).to(x.dtype)
