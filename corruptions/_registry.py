"""The one registry of corruptions: name -> (function, one-line description).

A corruption function has the signature ``fn(x, severity, generator) -> Tensor`` where ``x`` is a
float batch ``(N, 3, H, W)`` in [0, 1] (already validated and converted to float32/float64 by
:func:`corruptions.corrupt`), ``severity`` an int in 1..5 and ``generator`` a ``torch.Generator`` on
``x.device``, ``None`` (torch's global RNG), or a list of ``N`` generators, one per image (length
checked by :func:`corruptions.corrupt`). It returns a tensor of the same shape in [0, 1]
(clamping is re-applied by :func:`corruptions.corrupt`, so a function may skip it; one registered
with ``in_range=True`` promises its output is already in [0, 1] and is not clamped again).

Randomness: draw every random number through :mod:`corruptions._rng` -- ``_rng.rand/randn/randint(shape,
generator, x.device, dtype, dim=0)``, ``_rng.poisson(rates, generator)``, ``_rng.seeds(generator, N)`` for
numpy seeds (then one numpy generator per image when ``_rng.per_image(generator)``) -- never
``torch.rand(..., generator=...)`` directly. ``dim`` is the draw's batch axis (size ``N``). With one
generator the helpers draw exactly as torch does; with a list, image ``j``'s slice comes from
``generator[j]``. The contract: with a list, image ``j`` of the output equals ``fn(x[j:j+1], severity,
generator[j])`` -- each image's generator sees the same draws, in the same order and shapes, as in that
single-image call (so a draw's shape may depend on ``N`` only through its batch axis, and values computed
across the batch, e.g. a batch-wide maximum, must not decide per-image randomness).
tests/test_per_image_rng.py checks it for every registered corruption.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tta_bench.kernel import Registry

CorruptionFn = Callable[[torch.Tensor, int, "torch.Generator | list[torch.Generator] | None"], torch.Tensor]

# The suite's one Registry class. An entry's `factory` is the corruption function; its attrs hold
# ``native_gray``: ``fn`` also takes ``(N, 1, H, W)`` and treats it as a gray image (per-pixel noise shared by the
# would-be RGB channels); otherwise a gray batch is replicated to RGB, corrupted, and converted back to luma.
# ``in_range``: ``fn``'s output is in [0, 1] by construction (e.g. ``k / 255``), so :func:`corruptions.corrupt`
# skips its clamp. An unknown name is a UserError (a ValueError) listing close matches.
# Every public module of the package registers on import; the Registry imports them before the first lookup.
REGISTRY = Registry("corruption", "python -m tta_bench list corruptions", packages=("tta_bench.corruptions",))


def register(
    name: str, description: str, native_gray: bool = False, in_range: bool = False
) -> Callable[[CorruptionFn], CorruptionFn]:
    """Decorator: register ``fn`` under ``name`` (duplicates are an error, not a silent override).

    ``native_gray=True`` when ``fn`` works channel-wise and accepts 1-channel input; ``in_range=True``
    when its output needs no clamp (see REGISTRY)."""

    def deco(fn: CorruptionFn) -> CorruptionFn:
        REGISTRY.add(name, fn, description, native_gray=native_gray, in_range=in_range)
        return fn

    return deco
