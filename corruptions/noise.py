"""Noise corruptions: gaussian, shot (Poisson), impulse (salt & pepper), speckle.

Algorithms and tables: Hendrycks & Dietterich, make_imagenet_c.py / make_cifar_c.py (see tables.py).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy.special import gammaln

from . import _rng
from ._ops import to_device
from ._registry import register
from .tables import params


def _randn(x: torch.Tensor, gen: _rng.Gen) -> torch.Tensor:
    return _rng.randn(x.shape, gen, x.device, x.dtype)


def _rand(x: torch.Tensor, gen: _rng.Gen, dtype: torch.dtype | None = None) -> torch.Tensor:
    return _rng.rand(x.shape, gen, x.device, dtype or x.dtype)


@register("gaussian_noise", "additive i.i.d. Gaussian noise per pixel and channel", native_gray=True)
def gaussian_noise(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    c = params("gaussian_noise", severity, *x.shape[-2:])
    return x + _randn(x, gen) * c


@register("speckle_noise", "multiplicative Gaussian noise x + x * n", native_gray=True)
def speckle_noise(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    c = params("speckle_noise", severity, *x.shape[-2:])
    return x + x * _randn(x, gen) * c


@register("impulse_noise", "salt-and-pepper noise (skimage random_noise mode='s&p')", native_gray=True)
def impulse_noise(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    """skimage flips each value with probability ``amount`` and salts a flipped value with
    probability 0.5; one uniform ``u`` does both: ``u < amount / 2`` -> 1, else ``u < amount`` -> 0."""
    amount = params("impulse_noise", severity, *x.shape[-2:])
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.from_numpy(_impulse_cpu(x.detach().contiguous().numpy(), amount, gen))
    u = _rand(x, gen)
    return x.masked_fill(u < amount, 0.0).masked_fill_(u < amount / 2, 1.0)


def _impulse_cpu(x: np.ndarray, amount: float, gen: _rng.Gen) -> np.ndarray:
    """The same rule on CPU float32, image by image so that the work stays in cache, with the
    uniforms from numpy's PCG64 (twice as fast as torch's CPU Mersenne Twister) seeded by one draw
    from ``gen`` (one draw from each image's generator when ``gen`` is a sequence, each image then
    using its own PCG64): a seed still fixes the output, whatever the thread count."""
    rngs = [np.random.Generator(np.random.PCG64(s)) for s in _rng.seeds(gen, len(x))]
    out = np.empty_like(x)
    u = np.empty(x.shape[1:], np.float32)
    for i in range(len(x)):
        rngs[i if _rng.per_image(gen) else 0].random(dtype=np.float32, out=u)
        out[i] = np.where(u < amount, (u < amount / 2).astype(np.float32), x[i])
    return out


@register("shot_noise", "Poisson photon noise: poisson(x * c) / c", native_gray=True)
def shot_noise(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    c = float(params("shot_noise", severity, *x.shape[-2:]))
    return poisson_8bit(x, c, gen) / c


_LEVELS = 255
_GUIDE = 4096  # guide-table bins per rate (a power of two: bin = floor(u * _GUIDE) is exact)


@lru_cache(maxsize=32)
def _poisson_tables(c: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Tables of Poisson(j / 255 * c) for the 256 8-bit levels ``j``.

    ``cdf`` ``(256, K)`` float64 (last column forced above 1, where the tail mass < 1e-30 goes);
    ``guide`` ``(256, _GUIDE)`` int32: for a uniform in ``[m / G, (m + 1) / G)`` the sample is
    ``k0`` = the smallest ``k`` with ``cdf[j, k] > m / G`` when no CDF step falls inside the bin
    (stored as ``k0``), else at least ``k0`` (stored as ``-k0 - 1``: walk up from there).
    """
    lam = np.arange(_LEVELS + 1) / _LEVELS * c
    kmax = int(np.ceil(c + 14 * np.sqrt(c) + 30))
    k = np.arange(kmax + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = k[None, :] * np.log(lam[:, None]) - lam[:, None] - gammaln(k + 1)[None, :]
    logp[0] = -np.inf
    logp[0, 0] = 0.0
    cdf = np.cumsum(np.exp(logp), axis=1)
    cdf[:, -1] = 2.0
    edges = np.arange(_GUIDE) / _GUIDE
    k0 = np.stack([np.searchsorted(row, edges, side="right") for row in cdf])
    exact = np.take_along_axis(cdf, k0, 1) >= edges[None, :] + 1.0 / _GUIDE
    return cdf, np.where(exact, k0, -k0 - 1).astype(np.int32), kmax + 1


def poisson_8bit(x: torch.Tensor, c: float, gen: _rng.Gen) -> torch.Tensor:
    """Samples of Poisson(x * c), same shape/dtype as ``x`` (``x`` in [0, 1]).

    Fast path when ``x`` holds 8-bit levels (``x * 255`` within 1e-3 of integers, the case for
    decoded images): inverse-CDF sampling of the level's exact rate ``j / 255 * c`` from one
    float32 uniform per value through a guide table (exact for that uniform; a few percent of the
    values walk up the CDF). Any other input falls back to ``torch.poisson`` (exact, slower on CPU).

    ``gen`` a sequence of generators, one per leading-axis item: item ``j`` gets exactly the samples
    of ``poisson_8bit(x[j:j+1], c, gen[j])`` (the fallback decided per item).
    """
    per_image = _rng.per_image(gen)
    cpu = x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() >= 2 and x.numel() > 0
    if per_image and len(gen) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {len(gen)} generators")
    if per_image and not len(gen):
        return torch.zeros_like(x)
    if cpu:  # one seed, or one per item (each item's generator draws it first, as in a call on that item alone)
        seeds = _rng.seeds(gen, len(x))
        out = _poisson_8bit_cpu(x.detach().contiguous().numpy(), c, seeds)
        if out is not None:
            return torch.from_numpy(out)
        if not per_image:
            return _rng.poisson(x * c, gen)
        return torch.cat([_poisson_item(x[j : j + 1], c, s, g) for j, (s, g) in enumerate(zip(seeds, gen))])
    level = torch.round(x * _LEVELS)
    if per_image and bool(((x * _LEVELS - level).abs().reshape(len(gen), -1) > 1e-3).any()):
        return torch.cat([poisson_8bit(x[j : j + 1], c, g) for j, g in enumerate(gen)])  # some items fall back
    if not per_image and (x * _LEVELS - level).abs().max() > 1e-3:
        return _rng.poisson(x * c, gen)
    cdf_np, guide_np, kk = _poisson_tables(c)
    cdf = to_device(("pcdf", c), cdf_np.ravel(), x.new_empty(0, dtype=torch.float64))
    guide = to_device(("pguide", c), guide_np.ravel(), x.new_empty(0, dtype=torch.int32))
    # one flat draw of an item's values per generator, as poisson_8bit(x[j:j+1]) draws
    u = _rng.rand((len(gen), x[0].numel()) if per_image else (level.numel(),), gen, x.device).reshape(-1)
    level = level.reshape(-1).float()
    # level * G + bin < 2^20: exact in float32
    k = guide.index_select(0, torch.floor(u * _GUIDE).add_(level, alpha=_GUIDE).long())
    walk = torch.nonzero(k < 0).squeeze(1)
    if walk.numel():
        kw = -k[walk].long() - 1
        row, uw = level[walk].long() * kk, u[walk].double()
        active = torch.arange(walk.numel(), device=x.device)
        active = active[uw >= cdf[row + kw]]
        while active.numel():
            kw[active] += 1
            active = active[uw[active] >= cdf[row[active] + kw[active]]]
        k[walk] = kw.to(k.dtype)
    return k.reshape(x.shape).to(x.dtype)


def _poisson_item(x: torch.Tensor, c: float, seed: int, gen: torch.Generator) -> torch.Tensor:
    """One CPU float32 item whose generator already drew ``seed``: what ``poisson_8bit(x, c, gen)`` gives."""
    out = _poisson_8bit_cpu(x.detach().contiguous().numpy(), c, [seed])
    return torch.poisson(x * c, generator=gen) if out is None else torch.from_numpy(out)


def _poisson_8bit_cpu(x: np.ndarray, c: float, seeds: list[int]) -> np.ndarray | None:
    """:func:`poisson_8bit`'s guide-table sampler on CPU float32, one leading-axis slice at a time
    (in cache), with the uniforms from numpy's PCG64 seeded by ``seeds[0]`` (one seed: one PCG64
    for all slices) or by ``seeds[i]`` for slice ``i`` (a seed per slice); ``None`` when a value is
    not an 8-bit level (the caller falls back to ``torch.poisson``)."""
    cdf, guide, kk = _poisson_tables(c)
    cdf, guide = cdf.ravel(), guide.ravel()
    rngs = [np.random.Generator(np.random.PCG64(s)) for s in seeds]
    out = np.empty_like(x)
    n = x[0].size
    level, u, pos = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float32)
    for i in range(len(x)):
        np.multiply(x[i].reshape(-1), np.float32(_LEVELS), out=pos)
        np.rint(pos, out=level)
        if np.abs(np.subtract(pos, level, out=pos), out=pos).max() > 1e-3:
            return None
        rngs[i if len(rngs) > 1 else 0].random(dtype=np.float32, out=u)
        np.floor(np.multiply(u, np.float32(_GUIDE), out=pos), out=pos)
        pos += level * np.float32(_GUIDE)  # level * G + bin < 2^20: exact in float32
        k = guide.take(pos.astype(np.int32))
        walk = np.flatnonzero(k < 0)  # bins with a CDF step inside: walk up from k0
        kw = -k[walk] - 1
        row, uw = level[walk].astype(np.int64) * kk, u[walk].astype(np.float64)
        active = np.flatnonzero(uw >= cdf[row + kw])
        while active.size:
            kw[active] += 1
            active = active[uw[active] >= cdf[row[active] + kw[active]]]
        k[walk] = kw
        out[i].reshape(-1)[:] = k
    return out
