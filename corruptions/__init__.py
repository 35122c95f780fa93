"""Torch ports of the ImageNet-C / CIFAR-C corruptions (Hendrycks & Dietterich, ICLR 2019).

Batched, on the input's device (CPU or CUDA), seeded through a ``torch.Generator``::

    from tta_bench import corruptions
    x_c = corruptions.corrupt(x, "fog", severity=3, generator=torch.Generator().manual_seed(0))

* ``x``: float tensor ``(N, 3, H, W)`` in [0, 1]; returns the same shape, dtype and device, in
  [0, 1]. A gray batch ``(N, 1, H, W)`` is accepted. Channel-wise corruptions (noises, blurs,
  zoom, snow, fog, brightness, contrast, elastic, pixelate; ``register(..., native_gray=True)``)
  run on it directly, so noise is drawn once per pixel at full strength, as imagecorruptions does
  for 2-D arrays. The colour ones (frost, spatter, saturate, JPEG, and any registered without the
  flag) see it replicated to RGB and return the luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B,
  as Pillow's ``convert('L')`` and imagecorruptions' ``rgb2gray``).
* ``generator=None`` uses torch's global RNG; a generator gives reproducible output on a device.
  ``generator`` may also be a list of ``N`` generators, one per image: image ``j`` then draws all its
  randomness from ``generator[j]``, exactly the draws of ``corrupt(x[j:j+1], ..., generator=generator[j])``,
  so it gets that call's pixels whatever the batch it is in, while the work stays batched (how
  ``tta_bench.data.generated`` makes streams independent of batch size and order; see :mod:`._rng`).
* Severity tables: :mod:`corruptions.tables` (ImageNet 224 px and CIFAR 32 px tables from the
  reference generators, plus the rule for other sizes: nearest family, pixel parameters scaled).
* Modules: :mod:`.noise`, :mod:`.blur`, :mod:`.weather`, :mod:`.digital`; ``make_c`` writes
  ImageNet-C / CIFAR-C style datasets (``python -m tta_bench make-c``).

Adding corruptions (e.g. MedMNIST-C: gamma, stain, bubble, black_corner, characters)
-------------------------------------------------------------------------------------
Write one module ``corruptions/<name>.py`` with functions ``fn(x, severity, generator) -> x'``
(``x`` float ``(N, 3, H, W)``; draw all randomness through :mod:`corruptions._rng`
(``_rng.rand/randn/randint/poisson/seeds(..., generator, x.device, ...)``), which handles one generator
and one generator per image alike; keep parameter tables as module constants citing their source) and decorate each with
``@register("name", "one-line description")`` from :mod:`corruptions._registry` (add
``native_gray=True`` if the function is channel-wise and accepts ``(N, 1, H, W)``). Nothing else: every public
module of this package is imported on the first lookup or listing (the Registry's ``packages``). If they form a
named set, add a tuple like :data:`EXTRA`. ``names()``, ``describe()``, ``corrupt()`` and the test
parametrisation over ``names()`` pick them up automatically.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._color import to_gray
from ._registry import REGISTRY, register

__all__ = ["BENCHMARK", "EXTRA", "corrupt", "describe", "names", "register"]

BENCHMARK: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")


def names() -> list[str]:
    """All registered corruption names: the benchmark 15 in order, the extras, then the rest."""
    known = REGISTRY.names()
    return [n for n in BENCHMARK + EXTRA if n in known] + [n for n in known if n not in BENCHMARK + EXTRA]


def describe(name: str) -> str:
    """One-line description of a corruption (an unknown name: a UserError, i.e. a ValueError, with close matches)."""
    return REGISTRY.get(name).description


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to a float batch in [0, 1].

    ``x``: ``(N, 3, H, W)`` or ``(N, 1, H, W)``, any float dtype, any device. ``generator``: a
    ``torch.Generator`` on ``x.device``, ``None`` (global RNG), or a list/tuple of ``N`` generators on
    ``x.device``, one per image: image ``j`` is then exactly ``corrupt(x[j:j+1], name, severity,
    generator[j])`` (its generator sees the same draws), computed in one batched call. Returns a tensor
    with the shape, dtype and device of ``x``, clamped to [0, 1].
    """
    entry = REGISTRY.get(name)
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must be a tensor (N, 3, H, W) or (N, 1, H, W), got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor in [0, 1], got dtype {x.dtype}")
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(
                f"generator: {len(generator)} generators for a batch of {x.shape[0]} images (one per image)"
            )
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError("generator: a list of per-image generators must hold torch.Generator objects only")
        generator = list(generator)
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, a list of them or None, got {type(generator).__name__}")
    if x.shape[0] == 0:
        return x.clone()
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    to_luma = work.shape[1] == 1 and not entry.attrs["native_gray"]
    if to_luma:
        work = work.expand(-1, 3, -1, -1)
    work = work.contiguous()
    out = entry.factory(work, severity, generator)
    if out.untyped_storage().data_ptr() == work.untyped_storage().data_ptr() or 0 in out.stride():
        out = out.clone()  # never clamp the caller's tensor (or a broadcast view) in place
    if not entry.attrs["in_range"]:
        out = out.clamp_(0, 1)
    if to_luma:
        out = to_gray(out)
    return out.to(x.dtype)
