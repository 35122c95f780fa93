"""Random draws for the corruptions from one generator, or from one generator per image.

Every corruption function draws its random numbers through these helpers. ``gen`` is either

* a ``torch.Generator`` (or ``None``: torch's global RNG): the draw is exactly
  ``torch.<fn>(shape, generator=gen, ...)``, so a single generator behaves as it always did; or
* a sequence of generators, one per image (``len(gen)`` = the batch size ``shape[dim]``): image ``j``'s
  slice (``shape`` with size 1 on ``dim``) is drawn from ``gen[j]`` and the slices are concatenated along
  ``dim``.

In the second case each image's generator sees the same draws, in the same order and of the same shapes, as
in a call on that image alone with that generator, so ``corrupt(x, name, s, generator=[g_0, .., g_{N-1}])``
gives image ``j`` the pixels of ``corrupt(x[j:j+1], name, s, generator=g_j)`` while the deterministic work
stays batched. ``dim`` names the batch axis of a draw whose leading axis is something else (glass blur's
offsets ``(2, N, H*W)``, frost's ``(2, N)``).

Scalar draws (a seed for numpy's faster generators) become one per image: :func:`seeds`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Gen = torch.Generator | Sequence[torch.Generator] | None  # what the corruption functions accept as ``gen``


def per_image(gen: object) -> bool:
    """Whether ``gen`` is a sequence of per-image generators (a list or tuple) rather than one generator."""
    return isinstance(gen, (list, tuple))


def _draw(
    fn: Callable[..., torch.Tensor], shape: Sequence[int], gen: Gen, dim: int, **kw
) -> torch.Tensor:  # fmt: skip
    shape = tuple(int(s) for s in shape)
    if not per_image(gen):
        return fn(shape, generator=gen, **kw)
    if shape[dim] != len(gen):
        raise ValueError(f"a draw of shape {shape} has {shape[dim]} images on axis {dim} but {len(gen)} generators")
    one = shape[:dim] + (1,) + shape[dim + 1 :]
    if not gen:
        return fn(shape, **kw)
    return torch.cat([fn(one, generator=g, **kw) for g in gen], dim)


def rand(shape: Sequence[int], gen: Gen, device: torch.device | str | None = None,
         dtype: torch.dtype | None = None, dim: int = 0) -> torch.Tensor:  # fmt: skip
    """``torch.rand(shape)``: U[0, 1), per image when ``gen`` is a sequence (see the module docstring)."""
    return _draw(torch.rand, shape, gen, dim, device=device, dtype=dtype)


def randn(shape: Sequence[int], gen: Gen, device: torch.device | str | None = None,
          dtype: torch.dtype | None = None, dim: int = 0) -> torch.Tensor:  # fmt: skip
    """``torch.randn(shape)``: N(0, 1), per image when ``gen`` is a sequence."""
    return _draw(torch.randn, shape, gen, dim, device=device, dtype=dtype)


def randint(low: int, high: int, shape: Sequence[int], gen: Gen, device: torch.device | str | None = None,
            dtype: torch.dtype | None = None, dim: int = 0) -> torch.Tensor:  # fmt: skip
    """``torch.randint(low, high, shape)`` (int64 unless ``dtype``), per image when ``gen`` is a sequence."""
    kw = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
    return _draw(lambda s, **k: torch.randint(low, high, s, **k), shape, gen, dim, **kw)


def poisson(rates: torch.Tensor, gen: Gen, dim: int = 0) -> torch.Tensor:
    """``torch.poisson(rates)``, image ``j`` = ``rates``' slice ``j`` along ``dim`` from ``gen[j]`` when
    ``gen`` is a sequence."""
    if not per_image(gen):
        return torch.poisson(rates, generator=gen)
    if rates.shape[dim] != len(gen):
        raise ValueError(
            f"rates of shape {tuple(rates.shape)} have {rates.shape[dim]} images but {len(gen)} generators"
        )
    if not gen:
        return torch.poisson(rates)
    return torch.cat([torch.poisson(r, generator=g) for r, g in zip(rates.split(1, dim), gen)], dim)


def seeds(gen: Gen, n: int, device: torch.device | str | None = None) -> list[int]:
    """Seeds for numpy generators: ``[int(torch.randint(0, 2**62, (1,), generator=gen))]`` for one generator
    (one seed for the whole batch, as before), one such draw from each image's generator for a sequence
    (``n`` = the batch size, checked)."""
    if not per_image(gen):
        return [int(torch.randint(0, 2**62, (1,), generator=gen, device=device).item())]
    if len(gen) != n:
        raise ValueError(f"{n} images but {len(gen)} generators")
    return [int(torch.randint(0, 2**62, (1,), generator=g, device=device).item()) for g in gen]
