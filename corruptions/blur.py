"""Blur corruptions: defocus (disk), glass (local pixel shuffling), motion, zoom, gaussian.

Algorithms and tables: Hendrycks & Dietterich, make_imagenet_c.py / make_cifar_c.py (see tables.py);
motion blur uses the numpy line kernel of the ``imagecorruptions`` package instead of ImageMagick.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import _ops, _rng
from ._registry import register
from .tables import params


@register("gaussian_blur", "separable Gaussian blur (skimage.filters.gaussian, mode 'nearest')", native_gray=True)
def gaussian_blur(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    sigma = params("gaussian_blur", severity, *x.shape[-2:])
    return _ops.gaussian_blur(x, sigma)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk: indicator of ``X^2 + Y^2 <= r^2`` on a grid of half-size
    ``max(8, ceil(r))``, normalised, then cv2.GaussianBlur (ksize 3 for r <= 8 else 5, sigma
    ``alias_blur``, BORDER_REFLECT_101). Weights below float64's epsilon times the largest are set
    to zero (with ``alias_blur = 0.1`` the outer ring is ~1e-44 of the peak: float32 subnormals,
    which x86 multiplies ~10x slower; together they move no output by more than float64
    rounding), then all-zero border rows/columns are trimmed (exact)."""
    half = 8 if radius <= 8 else int(math.ceil(radius))
    ksize = 3 if radius <= 8 else 5
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    k = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    k /= k.sum()
    g = np.exp(-((np.arange(ksize) - (ksize - 1) / 2) ** 2) / (2 * alias_blur**2))
    g /= g.sum()
    m = _ops.correlation_matrix(k.shape[0], g, "reflect101")
    k = m @ k @ m.T
    k[k < k.max() * np.finfo(np.float64).eps] = 0
    rows, cols = np.nonzero(k)
    r = max(half - rows.min(), rows.max() - half, half - cols.min(), cols.max() - half)
    return k[half - r : half + r + 1, half - r : half + r + 1]


@register("defocus_blur", "convolution with an anti-aliased disk (cv2.filter2D, reflect-101 border)", native_gray=True)
def defocus_blur(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    radius, alias = params("defocus_blur", severity, *x.shape[-2:])
    return _ops.filter2d(x, disk_kernel(radius, alias), "reflect101")


def local_shuffle(x: torch.Tensor, delta: int, iterations: int, gen: _rng.Gen) -> torch.Tensor:
    """Glass blur's local pixel shuffling, batched and exact in distribution; ``(N, C, H, W)``.

    The reference visits the pixels ``(h, w)``, ``h`` from ``H - delta`` down to ``delta + 1``
    (same for ``w``, row-major, descending) and runs ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``
    with ``(h', w') = (h + dy, w + dx)``, ``dx, dy ~ U{-delta, .., delta - 1}``. On an
    ``(H, W, 3)`` array both sides are *views*, so this is not a swap: it copies ``x[h', w']``
    into ``x[h, w]`` and leaves ``x[h', w']`` as it was. A pixel is written only when the cursor
    is on it, so its final value is the *original* value of its source if the source had not been
    visited yet, else the *final* value of the source (a chain towards the bottom-right). Those
    chains are resolved for all pixels at once by pointer jumping (``log2`` of the longest chain
    rounds of ``gather``), which reproduces the sequential loop exactly for the same offsets. (On
    a 2-D gray array the reference line is a true swap; ImageNet-C / CIFAR-C are RGB.)
    """
    n, c, h, w = x.shape
    dev = x.device
    rr = torch.arange(h, device=dev)
    cc = torch.arange(w, device=dev)
    in_r, in_c = (rr > delta) & (rr <= h - delta), (cc > delta) & (cc <= w - delta)
    cursor = (in_r[:, None] & in_c[None, :]).reshape(-1)  # (H*W,)
    pos = torch.arange(h * w, device=dev)
    flat = x.reshape(n, c, h * w)
    for _ in range(iterations):
        off = _rng.randint(-delta, delta, (2, n, h * w), gen, dev, dim=1)
        src = torch.where(cursor, pos + off[0] * w + off[1], pos)  # (N, H*W); offsets stay inside
        # visited before this pixel = a cursor later in row-major order (the scan is descending)
        done = ~(cursor[src] & (src > pos))
        while not bool(done.all()):
            src, done = torch.where(done, src, src.gather(1, src)), done | done.gather(1, src)
        flat = flat.gather(2, src[:, None].expand(n, c, h * w))
    return flat.reshape(n, c, h, w)


@register(
    "glass_blur", "Gaussian blur, local pixel shuffling (the reference's copy loop), Gaussian blur", native_gray=True
)
def glass_blur(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    sigma, delta, iterations = params("glass_blur", severity, *x.shape[-2:])
    delta = max(1, int(round(delta)))
    y = _ops.gaussian_blur(x, sigma)
    y = torch.floor(y * 255 + 1e-4) / 255  # the reference's np.uint8(... * 255) truncation
    y = local_shuffle(y, delta, iterations, gen)
    return _ops.gaussian_blur(y, sigma)


def motion_offsets(width: int, angles_deg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer tap offsets ``(a, b)``, each ``(N, width)``, of the imagecorruptions motion kernel.

    Tap ``i`` reads the pixel ``(h + a_i, w + b_i)`` (edge-clamped) with
    ``a_i = ceil(i sin(angle) - 0.5)``, ``b_i = ceil(i cos(angle) - 0.5)``.
    """
    t = torch.deg2rad(angles_deg.double())[:, None]
    i = torch.arange(width, device=angles_deg.device, dtype=torch.float64)[None]
    return torch.ceil(i * torch.sin(t) - 0.5).long(), torch.ceil(i * torch.cos(t) - 0.5).long()


def motion_blur_batch(
    x: torch.Tensor, radius: float, sigma: float, angles_deg: torch.Tensor, per_image: bool = False,
    fft: bool | None = None,
) -> torch.Tensor:  # fmt: skip
    """imagecorruptions' ``_motion_blur`` (ImageMagick-like) on ``(N, C, H, W)``, one angle per image.

    Kernel: ``width = 2 * radius + 1`` one-sided Gaussian weights ``exp(-i^2 / 2 sigma^2)``,
    normalised; tap ``i`` is the image shifted along the angle with edge replication; taps whose
    shift reaches the image size are dropped (the reference's ``break``). Applied as one
    per-image line kernel: by FFT on CUDA (``fft``: force either path), as a sum of shifted views
    on the CPU (per image, exact whatever the batch).

    The FFT's size follows the batch's largest shifts, so an image's float rounding depends on the
    batch it is in; ``per_image=True`` (the caller has a generator per image) runs the FFT on groups
    of images with the same shifts, each image then getting its single-image call's padding and size
    (equal to its single-image call up to the FFT's float rounding, which may differ for a batch of several).
    """
    n, _, h, w = x.shape
    fft = x.is_cuda if fft is None else fft
    width = 2 * int(round(radius)) + 1
    k = torch.exp(-(torch.arange(width, dtype=torch.float64) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.device)
    a, b = motion_offsets(width, angles_deg)
    keep = (a.abs() < h) & (b.abs() < w)
    wts = torch.where(keep, k[None], torch.zeros_like(k[None]))
    a, b = torch.where(keep, a, 0), torch.where(keep, b, 0)
    if per_image and fft and n > 1:
        zero = torch.zeros_like(a[:, 0])
        pads = torch.stack([torch.maximum(zero, -a.amin(1)), torch.maximum(zero, a.amax(1)),
                            torch.maximum(zero, -b.amin(1)), torch.maximum(zero, b.amax(1))], 1)  # fmt: skip
        groups, which = torch.unique(pads, dim=0, return_inverse=True)
        if len(groups) > 1:
            out = torch.empty_like(x)
            for gi in range(len(groups)):
                sel = torch.nonzero(which == gi).squeeze(1)
                out[sel] = motion_blur_batch(x[sel], radius, sigma, angles_deg[sel], fft=fft)
            return out
    top, bottom = int(max(0, -a.min())), int(max(0, a.max()))
    left, right = int(max(0, -b.min())), int(max(0, b.max()))
    canvas = torch.zeros(n, top + bottom + 1, left + right + 1, dtype=torch.float64, device=x.device)
    img = torch.arange(n, device=x.device)[:, None].expand_as(a)
    canvas.index_put_((img, a + top, b + left), wts, accumulate=True)
    xp = _ops.pad2d(x, top, bottom, left, right, "edge")
    if fft:
        return _ops.fft_correlate(xp, canvas[:, None].to(x.dtype), (h, w))
    # CPU: the line has at most ``width`` taps; summing shifted views beats the FFT (~2-5x).
    out = torch.zeros_like(x)
    for (i, p, q), v in zip(canvas.nonzero().tolist(), canvas[canvas != 0].tolist()):
        out[i].add_(xp[i, :, p : p + h, q : q + w], alpha=v)
    return out


@register("motion_blur", "directional Gaussian line blur, random angle in [-45, 45] deg", native_gray=True)
def motion_blur(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    radius, sigma = params("motion_blur", severity, *x.shape[-2:])
    angles = _rng.rand((x.shape[0],), gen, x.device, torch.float64) * 90 - 45
    return motion_blur_batch(x, radius, sigma, angles, per_image=_rng.per_image(gen))


def zoom_factors(name: str, severity: int, h: int, w: int) -> np.ndarray:
    """``np.arange(start, stop, step)`` of the table entry (same float quirks as the reference)."""
    start, stop, step = params(name, severity, h, w)
    return np.arange(start, stop, step)


@register("zoom_blur", "average of the image and centre-zoomed copies of itself", native_gray=True)
def zoom_blur(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    zooms = zoom_factors("zoom_blur", severity, *x.shape[-2:])
    out = x.clone()
    for z in zooms:
        out += _ops.clipped_zoom(x, float(z))
    return out / (len(zooms) + 1)
