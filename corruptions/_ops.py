"""Batched filtering and resampling helpers shared by the corruptions.

Separable linear operators (Gaussian blurs, zooms, PIL-style box resizes) are built once as dense
``(n_out, n_in)`` matrices with the reference's boundary handling folded in, so that applying them
to a batch is two matmuls: ``M_h @ x @ M_w.T`` -- exact for any kernel radius (even larger than the
image, as some elastic-transform sigmas are) and fast on CPU and GPU. Non-separable kernels (disk,
motion line) are applied by FFT. Matrices are built in float64 numpy and cached per device/dtype.
On CPU float32 the Gaussian blurs run as direct separable filters instead (OpenCV: O(radius) per
pixel, a few times faster than the dense matrices there).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import cv2
import numpy as np
import torch

_DEVICE_CACHE: dict[tuple, torch.Tensor] = {}
_POOL: ThreadPoolExecutor | None = None


def per_item(fn: Callable[[int], object], n: int) -> None:
    """``fn(i)`` for ``i < n``: on a small shared thread pool (OpenCV, Pillow's decoder and numpy
    release the GIL), or serially when torch is limited to one CPU thread
    (``torch.set_num_threads(1)``). ``fn`` must not draw random numbers: results may not depend
    on the thread count."""
    global _POOL
    if torch.get_num_threads() == 1 or n == 1:
        for i in range(n):
            fn(i)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 1)))
    list(_POOL.map(fn, range(n)))


def per_plane(x: torch.Tensor, fn: Callable[[np.ndarray, np.ndarray], object]) -> torch.Tensor:
    """``fn(src, dst)`` on each ``(H, W)`` plane of a CPU float32 ``(..., H, W)`` tensor, writing a new
    array of ``x``'s shape: ~1 MB of planes per task (in cache) on :func:`per_item`'s pool."""
    h, w = x.shape[-2:]
    src = x.detach().contiguous().numpy().reshape(-1, h, w)
    out = np.empty_like(src)
    per = max(1, (1 << 18) // (h * w))

    def run(t: int) -> None:
        for p in range(t * per, min((t + 1) * per, len(src))):
            fn(src[p], out[p])

    per_item(run, -(-len(src) // per))
    return torch.from_numpy(out.reshape(x.shape))


def to_device(key: tuple, array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``array`` as a tensor with ``like``'s device and dtype, cached under ``key``."""
    k = (key, like.device, like.dtype)
    t = _DEVICE_CACHE.get(k)
    if t is None:
        if len(_DEVICE_CACHE) > 512:
            _DEVICE_CACHE.clear()
        t = torch.as_tensor(array, dtype=like.dtype).to(like.device)
        _DEVICE_CACHE[k] = t
    return t


def pad_indices(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """Source indices of an axis of length ``n`` padded by ``lo``/``hi`` samples.

    ``mode``: ``"edge"`` (scipy 'nearest', cv2 BORDER_REPLICATE), ``"reflect101"`` (cv2 default
    BORDER_REFLECT_101, scipy 'mirror': d c b | a b c d) or ``"symmetric"`` (scipy 'reflect',
    cv2 BORDER_REFLECT: b a | a b c d). Any pad length is allowed (repeated reflections).
    """
    i = np.arange(-lo, n + hi)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "symmetric":
        i = np.mod(i, 2 * n)
        return np.where(i < n, i, 2 * n - 1 - i)
    if mode == "reflect101":
        if n == 1:
            return np.zeros_like(i)
        i = np.mod(i, 2 * n - 2)
        return np.where(i < n, i, 2 * n - 2 - i)
    raise ValueError(f"unknown padding mode {mode!r}")


def correlation_matrix(n: int, kernel: np.ndarray, mode: str) -> np.ndarray:
    """``(n, n)`` matrix of a centred 1-D correlation with ``kernel`` (odd length) and padding."""
    r = len(kernel) // 2
    src = pad_indices(n, r, r, mode)
    m = np.zeros((n, n))
    rows = np.repeat(np.arange(n), len(kernel))
    cols = src[np.arange(n)[:, None] + np.arange(len(kernel))[None, :]].ravel()
    np.add.at(m, (rows, cols), np.tile(kernel, n))
    return m


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's sampled Gaussian: radius ``int(truncate * sigma + 0.5)``, sums to 1."""
    if sigma <= 0:
        return np.ones(1)
    r = int(truncate * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


@lru_cache(maxsize=256)
def gaussian_matrix(n: int, sigma: float, truncate: float, mode: str) -> np.ndarray:
    """``(n, n)`` matrix of skimage.filters.gaussian along one axis (``mode`` as in pad_indices)."""
    return correlation_matrix(n, gaussian_kernel(sigma, truncate), mode)


def apply_separable(x: torch.Tensor, mh: torch.Tensor, mw: torch.Tensor) -> torch.Tensor:
    """``mh @ x @ mw.T`` over the last two axes: ``(..., H, W) -> (..., H', W')``."""
    return torch.matmul(torch.matmul(mh, x), mw.transpose(0, 1))


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "edge") -> torch.Tensor:
    """skimage.filters.gaussian(x, sigma, mode, truncate) per channel: ``(..., H, W)`` -> same.

    skimage's default mode 'nearest' is ``"edge"``; its 'reflect' is ``"symmetric"``.
    """
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    taps = 2 * int(truncate * sigma + 0.5) + 1
    # direct filtering costs ~taps per pixel, the dense matrices ~(h + w): measured break-even on
    # CPU near taps = 0.4 (h + w) / 2 (elastic_transform's large sigmas stay on the matrices)
    if x.device.type == "cpu" and x.dtype == torch.float32 and mode in _CV_BORDER and taps <= 0.2 * (h + w):
        return _gaussian_blur_cv(x, float(sigma), float(truncate), mode)
    mh = to_device(("g", h, sigma, truncate, mode), gaussian_matrix(h, float(sigma), truncate, mode), x)
    mw = to_device(("g", w, sigma, truncate, mode), gaussian_matrix(w, float(sigma), truncate, mode), x)
    return apply_separable(x, mh, mw)


_CV_BORDER = {"edge": cv2.BORDER_REPLICATE, "symmetric": cv2.BORDER_REFLECT, "reflect101": cv2.BORDER_REFLECT_101}


def _gaussian_blur_cv(x: torch.Tensor, sigma: float, truncate: float, mode: str) -> torch.Tensor:
    """CPU float32 :func:`gaussian_blur`: the same sampled kernel as a direct separable filter
    (OpenCV ``sepFilter2D``, float32 accumulation) plane by plane -- O(radius) work per pixel
    instead of the dense matrices' O(size) -- on the shared pool. Agrees with the matrix path to
    float32 rounding (tests/test_corruptions.py), for kernels longer than the image too."""
    k = gaussian_kernel(sigma, truncate).astype(np.float32)
    border = _CV_BORDER[mode]
    return per_plane(x, lambda src, dst: cv2.sepFilter2D(src, cv2.CV_32F, k, k, dst=dst, borderType=border))


@lru_cache(maxsize=256)
def zoom_positions(n: int, zoom: float) -> np.ndarray:
    """Source coordinates (length ``n``) of the reference's ``clipped_zoom`` along one axis.

    Crop the centred ``ch = ceil(n / zoom)`` samples, upsample them with scipy.ndimage.zoom
    (order 1, corner-aligned: output ``o`` samples input ``o * (ch - 1) / (out - 1)``, with
    ``out = round(ch * zoom)``), then trim the centre ``n`` samples (make_imagenet_c.py's version).
    Output ``i`` linearly interpolates the input at the returned (fractional) coordinate.
    """
    ch = int(math.ceil(n / zoom))
    top = (n - ch) // 2
    out = int(round(ch * zoom))
    trim = (out - n) // 2
    o = np.arange(trim, trim + n)
    pos = o * (ch - 1) / (out - 1) if out > 1 else np.zeros(n)
    return top + pos


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """The reference's ``clipped_zoom`` (bilinear) of ``(N, C, H, W)`` images, on their device."""
    n, _, h, w = x.shape
    gy = zoom_positions(h, float(zoom)) * 2 / max(h - 1, 1) - 1
    gx = zoom_positions(w, float(zoom)) * 2 / max(w - 1, 1) - 1
    grid = np.stack(np.broadcast_arrays(gx[None, :], gy[:, None]), -1)[None]
    g = to_device(("zoom", h, w, float(zoom)), grid, x).expand(n, -1, -1, -1)
    return torch.nn.functional.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=True)


@lru_cache(maxsize=256)
def box_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of Pillow's ``Image.BOX`` resampling along one axis.

    Pillow's coefficients: ``scale = n_in / n_out``, ``fs = max(scale, 1)``, support ``0.5 * fs``;
    output ``o`` has centre ``(o + 0.5) * scale`` and weights ``box((j - centre + 0.5) / fs)``
    over ``j`` in ``[int(centre - support + 0.5), int(centre + support + 0.5))``, normalised, with
    ``box(t) = 1 if -0.5 < t <= 0.5``.
    """
    scale = n_in / n_out
    fs = max(scale, 1.0)
    support = 0.5 * fs
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        j = np.arange(lo, hi)
        t = (j - centre + 0.5) / fs
        w = ((t > -0.5) & (t <= 0.5)).astype(float)
        if w.sum() > 0:
            m[o, lo:hi] = w / w.sum()
    return m


@lru_cache(maxsize=256)
def box_runs(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow ``Image.BOX`` along one axis as runs: output ``o`` is the unweighted mean of inputs
    ``starts[o] .. starts[o] + sizes[o] - 1`` (int64 arrays of length ``n_out``).

    Read off :func:`box_resize_matrix`, whose rows are equal weights on one contiguous range
    (checked). Upsampling gives runs of length 1: a pure selection of input ``starts[o]``.
    """
    m = box_resize_matrix(n_in, n_out)
    nz = m > 0
    starts, sizes = nz.argmax(1), nz.sum(1)
    ends = n_in - nz[:, ::-1].argmax(1)
    if not (sizes.min() > 0 and np.array_equal(ends - starts, sizes)):
        raise AssertionError(f"box_resize_matrix({n_in}, {n_out}) has an empty or split row")
    starts.flags.writeable = sizes.flags.writeable = False
    return starts, sizes


def fast_len(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5 (a fast FFT length)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def fft_correlate(xpad: torch.Tensor, kernel: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """'Valid' 2-D correlation of padded images with kernels, by FFT.

    ``xpad``: ``(B, C, H + kh - 1, W + kw - 1)`` already padded; ``kernel``: ``(B or 1, 1, kh, kw)``
    (one kernel per image, shared by its channels). Returns ``(B, C, H, W)`` with
    ``out[i, j] = sum_{a, b} kernel[a, b] * xpad[i + a, j + b]``.
    """
    kh, kw = kernel.shape[-2:]
    ph, pw = fast_len(xpad.shape[-2]), fast_len(xpad.shape[-1])
    flipped = torch.flip(kernel, dims=(-2, -1))
    xf = torch.fft.rfft2(xpad, s=(ph, pw))
    kf = torch.fft.rfft2(flipped, s=(ph, pw))
    y = torch.fft.irfft2(xf * kf, s=(ph, pw))
    h, w = out_hw
    return y[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w]


def pad2d(x: torch.Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> torch.Tensor:
    """Pad the last two axes of ``x`` (any pad length, modes of pad_indices)."""
    h, w = x.shape[-2:]
    native = {"edge": "replicate", "reflect101": "reflect"}.get(mode)
    if native and x.dim() == 4 and (mode == "edge" or max(top, bottom) < h and max(left, right) < w):
        return torch.nn.functional.pad(x, (left, right, top, bottom), mode=native)
    ih = to_device(("pad", h, top, bottom, mode), pad_indices(h, top, bottom, mode), x.new_empty(0, dtype=torch.long))
    iw = to_device(("pad", w, left, right, mode), pad_indices(w, left, right, mode), x.new_empty(0, dtype=torch.long))
    return x.index_select(-2, ih).index_select(-1, iw)


def filter2d(x: torch.Tensor, kernel: np.ndarray, mode: str = "reflect101") -> torch.Tensor:
    """cv2.filter2D(x, -1, kernel) per channel (correlation, odd ``kernel``): ``(N, C, H, W)``.

    CPU float32 with reflect-101 borders: OpenCV's filter2D (the reference's own routine: direct
    for small kernels, DFT for large ones) plane by plane on the shared pool, in place of a
    padded copy. Where the kernel radius reaches the image size (repeated reflections), the batch
    is padded first and its planes stacked into one tall image. Otherwise ``conv2d`` for small
    kernels and FFT for large ones. All paths agree up to float rounding.
    """
    kh, kw = kernel.shape
    rh, rw = kh // 2, kw // 2
    n, c, h, w = x.shape
    if x.device.type == "cpu" and x.dtype == torch.float32 and mode == "reflect101":
        k32 = kernel.astype(np.float32)
        if rh < h and rw < w:
            return per_plane(x, lambda src, dst: cv2.filter2D(src, -1, k32, dst=dst, borderType=cv2.BORDER_REFLECT_101))
        xp = pad2d(x, rh, rh, 0, 0, mode)
        tall = xp.reshape(n * c * (h + 2 * rh), w).numpy()
        out = cv2.filter2D(tall, -1, k32, borderType=cv2.BORDER_REFLECT_101)
        return torch.from_numpy(out).reshape(n, c, h + 2 * rh, w)[:, :, rh : rh + h]
    xp = pad2d(x, rh, rh, rw, rw, mode)
    k = torch.as_tensor(kernel, dtype=x.dtype, device=x.device)
    if kh * kw <= 49:
        return torch.nn.functional.conv2d(xp.reshape(n * c, 1, *xp.shape[-2:]), k[None, None]).reshape(n, c, h, w)
    return fft_correlate(xp, k[None, None], (h, w))
