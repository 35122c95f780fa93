"""MedMNIST-C corruptions (Di Salvo, Doerrich & Ledig 2024, "MedMNIST-C: Comprehensive benchmark and
improved classifier robustness by simulating realistic image corruptions", arXiv:2406.17536).

MedMNIST-C corrupts each MedMNIST+ test set with a modality-specific list of corruptions, each with its
own five-level parameter table per dataset. :data:`MEDMNIST_C` transcribes those lists and tables from the
official code (francescodisalvo05/medmnistc-api, ``medmnistc/corruptions/registry.py``, ``CORRUPTIONS_DS``;
entries with six values keep the first five, the ones the generator uses). :func:`medmnist_c` applies
corruption ``name`` of dataset ``flag`` at a severity, with that dataset's parameters.

The corruptions MedMNIST-C adds to ImageNet-C are also registered for :func:`corruptions.corrupt`
(parameters: the table of the dataset in ``DEFAULT_FLAG``): ``brightness_up/down`` and
``contrast_up/down`` (Pillow ImageEnhance factors), ``gamma_corr_up/down`` (x ** gamma; X-ray, CT),
``stain_deposit`` and ``bubble`` (pathology, blood smears), ``black_corner`` and ``characters``
(dermatoscopy).

Image sizes. MedMNIST-C's tables are defined on 224 px images. Parameters measured in pixels (blur
radii/sigmas/kernels, bubble radii, stain size) are multiplied by ``s = min(H, W) / 224``; text for
``characters`` is rendered at 224 px and area-resampled to the image size. Relative parameters (noise
levels, factors, JPEG quality, pixelate fraction, corner radius) are used unchanged. Like the reference,
every corruption works on RGB; :func:`medmnist_c` with ``gray=True`` converts the result back to luma
(Pillow ``convert('L')``) and replicates it, and quantises the output to 8-bit levels (the reference
stores uint8 images).

Stain inks: the reference samples ink masks from a bundled asset (``assets/inks.npz``); here an ink is
a procedural irregular blob (disk with a random low-order Fourier boundary, soft edge, opacity 0.5-0.9),
16-40 px across at 224 px (24-56 px at severity >= 4, where the reference switches to its larger inks).
"""

from __future__ import annotations

import math
import string

import numpy as np
import torch
import torch.nn.functional as F

from . import _ops, _rng
from ._color import hsv2rgb, rgb2hsv, to_gray
from ._registry import register
from .blur import disk_kernel, motion_blur_batch
from .digital import _jpeg_roundtrip
from .noise import poisson_8bit

BASE = 224  # the resolution MedMNIST-C's tables are defined at

# fmt: off
MEDMNIST_C: dict[str, dict[str, tuple]] = {
    "pathmnist": {
        "pixelate": (0.8, 0.6, 0.40, 0.30, 0.25), "jpeg_compression": (50, 30, 15, 10, 7),
        "defocus_blur": ((3, 0.1), (4, 0.1), (5, 0.2), (6, 0.2), (7, 0.3)),
        "motion_blur": ((5, 5), (10, 5), (15, 5), (15, 8), (15, 12)),
        "brightness_up": (1.1, 1.15, 1.2, 1.22, 1.25), "brightness_down": (0.85, 0.80, 0.75, 0.72, 0.70),
        "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6), "contrast_down": (0.8, 0.7, 0.6, 0.55, 0.5),
        "saturate": (0.05, 0.10, 0.15, 0.20, 0.25), "stain_deposit": (1, 2, 3, 4, 5),
        "bubble": ((7, 15), (10, 15), (12, 15), (15, 20), (17, 25)),
    },
    "bloodmnist": {
        "pixelate": (0.6, 0.5, 0.40, 0.30, 0.25), "jpeg_compression": (50, 30, 15, 10, 7),
        "defocus_blur": ((2, 0.01), (3, 0.1), (4, 0.1), (5, 0.1), (6, 0.1)),
        "motion_blur": ((3, 3), (5, 5), (10, 5), (10, 7), (10, 9)),
        "brightness_up": (1.1, 1.2, 1.3, 1.35, 1.4), "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),
        "contrast_up": (1.1, 1.15, 1.2, 1.25, 1.3), "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.5),
        "saturate": (0.05, 0.10, 0.15, 0.17, 0.20), "stain_deposit": (1, 2, 3, 3, 3),
        "bubble": ((5, 10), (7, 10), (10, 10), (12, 12), (15, 12)),
    },
    "dermamnist": {
        "pixelate": (0.7, 0.5, 0.40, 0.30, 0.25), "jpeg_compression": (30, 20, 15, 10, 7),
        "gaussian_noise": (0.04, .08, .12, 0.18, 0.26), "speckle_noise": (0.05, 0.15, 0.2, 0.35, 0.45),
        "impulse_noise": (0.01, 0.03, 0.06, 0.09, 0.17), "shot_noise": (60, 25, 18, 10, 5),
        "defocus_blur": ((4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)),
        "motion_blur": ((10, 5), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
        "brightness_up": (1.1, 1.2, 1.3, 1.4, 1.5), "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),
        "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6), "contrast_down": (0.8, 0.7, 0.6, 0.5, 0.4),
        "black_corner": (1.10, 1.05, 1.00, 0.90, 0.95),  # sic: severity 5 is milder than 4 in the reference
        "characters": ((1, 6, 0.14), (2, 7, 0.15), (3, 8, 0.16), (4, 9, 0.17), (6, 10, 0.18)),
    },
    "retinamnist": {
        "pixelate": (0.8, 0.60, 0.50, 0.40, 0.35), "jpeg_compression": (30, 25, 20, 10, 5),
        "gaussian_noise": (0.04, 0.08, 0.12, 0.16, 0.20), "speckle_noise": (0.10, 0.15, 0.20, 0.25, 0.30),
        "defocus_blur": ((4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)),
        "motion_blur": ((8, 5), (15, 5), (15, 8), (15, 12), (20, 15)),
        "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5), "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
    "tissuemnist": {
        "pixelate": (0.40, 0.30, 0.20, 0.15, 0.10), "jpeg_compression": (25, 20, 15, 10, 7),
        "impulse_noise": (0.01, 0.015, 0.02, 0.025, 0.03), "gaussian_blur": (13, 15, 17, 21, 25),
        "brightness_up": (1.3, 1.4, 1.5, 1.6, 1.7), "brightness_down": (0.8, 0.7, 0.6, 0.5, 0.4),
        "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6), "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
    "octmnist": {
        "pixelate": (0.30, 0.25, 0.20, 0.15, 0.10), "jpeg_compression": (30, 15, 10, 7, 5),
        "speckle_noise": (0.15, 0.30, 0.40, 0.50, 0.60),
        "defocus_blur": ((0.5, 0.6), (1, 0.5), (1.5, 0.1), (2.0, 0.5), (2.5, 0.1)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), "contrast_down": (0.6, 0.4, 0.3, 0.2, 0.15),
    },
    "breastmnist": {
        "pixelate": (0.30, 0.25, 0.20, 0.15, 0.10), "jpeg_compression": (50, 30, 15, 10, 7),
        "speckle_noise": (0.10, 0.15, 0.20, 0.25, 0.30),
        "motion_blur": ((5, 5), (9, 7), (9, 10), (13, 10), (17, 12)),
        "brightness_up": (1.4, 1.5, 1.6, 1.8, 2.0), "brightness_down": (0.55, 0.5, 0.45, 0.4, 0.3),
        "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
    "chestmnist": {
        "pixelate": (0.30, 0.25, 0.20, 0.15, 0.10), "jpeg_compression": (50, 30, 15, 10, 7),
        "gaussian_noise": (0.04, .08, .12, 0.18, 0.26), "speckle_noise": (0.05, 0.15, 0.2, 0.35, 0.45),
        "impulse_noise": (0.01, 0.03, 0.06, 0.09, 0.17), "shot_noise": (60, 25, 18, 10, 5),
        "gaussian_blur": (3, 5, 7, 9, 11),
        "brightness_up": (1.1, 1.2, 1.3, 1.4, 1.5), "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),
        "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6), "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
        "gamma_corr_up": (1.1, 1.2, 1.3, 1.4, 1.6), "gamma_corr_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
    "pneumoniamnist": {
        "pixelate": (0.8, 0.7, 0.6, 0.5, 0.40), "jpeg_compression": (50, 30, 15, 10, 7),
        "gaussian_noise": (0.04, 0.05, 0.06, 0.07, 0.08), "speckle_noise": (0.05, 0.07, 0.10, 0.15, 0.20),
        "impulse_noise": (0.005, 0.01, 0.013, 0.017, 0.02), "shot_noise": (300, 200, 150, 100, 80),
        "gaussian_blur": (3, 5, 7, 9, 11),
        "brightness_up": (1.1, 1.2, 1.3, 1.4, 1.5), "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),
        "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6), "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
        "gamma_corr_up": (1.1, 1.2, 1.3, 1.4, 1.6), "gamma_corr_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
    "organamnist": {
        "pixelate": (0.7, 0.6, 0.5, 0.40, 0.35), "jpeg_compression": (50, 30, 15, 10, 7),
        "gaussian_noise": (0.04, 0.08, 0.12, 0.16, 0.20), "speckle_noise": (0.05, 0.10, 0.20, 0.30, 0.40),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.08), "shot_noise": (200, 100, 50, 25, 15),
        "gaussian_blur": (11, 13, 15, 17, 21),
        "brightness_up": (1.2, 1.3, 1.4, 1.5, 1.6), "brightness_down": (0.8, 0.75, 0.7, 0.65, 0.60),
        "contrast_up": (1.3, 1.4, 1.6, 1.7, 1.8), "contrast_down": (0.8, 0.7, 0.6, 0.55, 0.5),
        "gamma_corr_up": (1.3, 1.4, 1.6, 1.8, 2.0), "gamma_corr_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
}
# fmt: on
MEDMNIST_C["organcmnist"] = MEDMNIST_C["organsmnist"] = MEDMNIST_C["organamnist"]  # identical in the reference
# Parameters of the registered corruptions when called through corruptions.corrupt().
DEFAULT_FLAG = {
    **dict.fromkeys(("brightness_up", "brightness_down", "contrast_up", "contrast_down"), "chestmnist"),
    **dict.fromkeys(("gamma_corr_up", "gamma_corr_down"), "chestmnist"),
    **dict.fromkeys(("stain_deposit", "bubble"), "pathmnist"),
    **dict.fromkeys(("black_corner", "characters"), "dermamnist"),
}


def _grid(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = x.shape[-2:]
    yy = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1)
    xx = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
    return yy, xx


# --- photometric (Pillow ImageEnhance / torchvision semantics) -------------------------------------------
def brightness_factor(x: torch.Tensor, f: float) -> torch.Tensor:
    """ImageEnhance.Brightness: blend with black, ``x * f``."""
    return x * f


def contrast_factor(x: torch.Tensor, f: float) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with the image's mean luma (rounded to an 8-bit level)."""
    mean = torch.round(to_gray(x).mean((1, 2, 3), keepdim=True) * 255) / 255
    return mean + f * (x - mean)


def gamma(x: torch.Tensor, g: float) -> torch.Tensor:
    """torchvision adjust_gamma (gain 1): ``x ** g``; g > 1 darkens, g < 1 brightens."""
    return x.clamp(0, 1) ** g


def saturate_add(x: torch.Tensor, c: float) -> torch.Tensor:
    """HSV saturation + c (clipped), as the reference's Saturate."""
    hsv = rgb2hsv(x)
    return hsv2rgb(torch.cat((hsv[:, :1], (hsv[:, 1:2] + c).clamp(0, 1), hsv[:, 2:]), 1))


# --- task-specific -------------------------------------------------------------------------------------
def black_corner(x: torch.Tensor, mult: float) -> torch.Tensor:
    """Black outside a centred disk of radius ``min(H, W) // 2 * mult`` (dermatoscope vignette)."""
    h, w = x.shape[-2:]
    yy, xx = _grid(x)
    r = min(w // 2, h // 2) * mult  # the reference truncates to int: same at 224 px, keeps 28 px levels apart
    inside = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= r * r
    return x * inside.to(x.dtype)[:, None]


def _coupled_int(u: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Uniform integers in [lo, hi] (like random.randint) from uniforms ``u``: with the same ``u``, a larger
    ``hi`` never gives a smaller value, so one generator seed yields nested corruptions across severities."""
    return (lo + torch.floor(u * (hi - lo + 1))).clamp_(max=hi)


MAX_BUBBLES, MAX_MARKS, MAX_WORDS = 25, 5, 6  # largest counts in the tables: every severity draws the same slots


def bubble(x: torch.Tensor, max_radius: int, max_bubbles: int, gen: _rng.Gen) -> torch.Tensor:
    """Translucent white bubbles: randint(7, max_bubbles) of radius randint(3, max_radius) px (at 224 px),
    each a disk of alpha 100/255 inside a 2 px ring of alpha 130/255; later bubbles cover earlier ones,
    then the layer is alpha-composited over the image (the reference's Pillow drawing)."""
    n, _, h, w = x.shape
    s = min(h, w) / BASE
    u = _rng.rand((n, MAX_BUBBLES + 1, 3), gen, x.device)
    count = _coupled_int(u[:, 0, 0], 7, max(7, max_bubbles))
    radius = _coupled_int(u[:, 1:, 0], 3, max_radius) * s
    cy = radius + u[:, 1:, 1] * (h - 2 * radius).clamp_min(0)
    cx = radius + u[:, 1:, 2] * (w - 2 * radius).clamp_min(0)
    yy, xx = _grid(x)
    alpha = torch.zeros(n, h, w, device=x.device)
    for k in range(max(7, max_bubbles)):
        d2 = (yy - cy[:, k, None, None]) ** 2 + (xx - cx[:, k, None, None]) ** 2
        r = radius[:, k, None, None]
        active = (k < count)[:, None, None]
        alpha = torch.where(active & (d2 <= (r + 2 * s) ** 2), 130 / 255, alpha)
        alpha = torch.where(active & (d2 <= r**2), 100 / 255, alpha)
    a = alpha[:, None].to(x.dtype)
    return x * (1 - a) + a


def stain_deposit(x: torch.Tensor, max_marks: int, severity: int, gen: _rng.Gen) -> torch.Tensor:
    """Dark ink marks: randint(1, max_marks) procedural blobs per image, ``x *= 1 - ink``."""
    n, _, h, w = x.shape
    s = min(h, w) / BASE
    lo, hi = (12, 28) if severity >= 4 else (8, 20)  # blob radius range, px at 224
    u = _rng.rand((n, MAX_MARKS + 1, 10), gen, x.device)
    count = _coupled_int(u[:, 0, 0], 1, max_marks)
    u = u[:, 1:]
    radius = (lo + (hi - lo) * u[..., 0]) * s
    margin = 10 * s
    cy = margin + radius + u[..., 1] * (h - 2 * (margin + radius)).clamp_min(0)
    cx = margin + radius + u[..., 2] * (w - 2 * (margin + radius)).clamp_min(0)
    opacity = 0.5 + 0.4 * u[..., 3]
    amp, phase = 0.25 * u[..., 4:7], 2 * math.pi * u[..., 7:10]  # boundary wobble, harmonics 2..4
    yy, xx = _grid(x)
    soft = max(0.75, 2 * s)  # soft edge, px
    keep = torch.ones(n, h, w, device=x.device)
    for k in range(max_marks):
        dy, dx = yy - cy[:, k, None, None], xx - cx[:, k, None, None]
        theta = torch.atan2(dy, dx)
        wobble = sum(
            amp[:, k, j, None, None] * torch.cos((j + 2) * theta + phase[:, k, j, None, None]) for j in range(3)
        )
        edge = radius[:, k, None, None] * (1 + wobble)
        ink = opacity[:, k, None, None] * torch.sigmoid((edge - torch.sqrt(dy**2 + dx**2)) / soft)
        keep = keep * torch.where((k < count)[:, None, None], 1 - ink, torch.ones_like(ink))
    return x * keep[:, None].to(x.dtype)


def characters(x: torch.Tensor, max_words: int, max_letters: int, max_scale: float,
               gen: _rng.Gen) -> torch.Tensor:  # fmt: skip
    """Random lowercase words in random colours (cv2 FONT_HERSHEY_DUPLEX, thickness 1), drawn at 224 px:
    randint(1, max_words) words of randint(3, max_letters) letters, font scale randint(14, 100 max_scale)
    / 100; the text layer is area-resampled to the image size and composited (pen marks on skin)."""
    import cv2

    n, _, h, w = x.shape
    rngs = [np.random.default_rng(s) for s in _rng.seeds(gen, n, x.device)]  # one, or one per image
    if _rng.per_image(gen):
        u = np.concatenate([g.random((1, 1 + MAX_WORDS, 16)) for g in rngs]) if n else np.zeros((0, 1 + MAX_WORDS, 16))
    else:
        u = rngs[0].random((n, 1 + MAX_WORDS, 16))  # same slots at every severity (nested corruptions, like bubble)

    def pick(v: float, lo: int, hi: int) -> int:
        return min(hi, lo + int(v * (hi - lo + 1)))

    color = np.zeros((n, 3, BASE, BASE), np.float32)
    cover = np.zeros((n, 1, BASE, BASE), np.float32)
    for i in range(n):
        canvas, mask = np.zeros((BASE, BASE, 3), np.uint8), np.zeros((BASE, BASE), np.uint8)
        for v in u[i, 1 : 1 + pick(u[i, 0, 0], 1, max_words)]:
            k = pick(v[0], 3, max_letters)
            text = "".join(string.ascii_lowercase[pick(c, 0, 25)] for c in v[6 : 6 + k])
            scale = pick(v[1], 14, int(max_scale * 100)) / 100
            org = (pick(v[2], 10, max(10, BASE - 8 * k)), pick(v[3], 10, BASE - 10))
            rgb = tuple(pick(c, 0, 255) for c in v[4:6].tolist() + [v[15]])
            cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_DUPLEX, scale, rgb, 1, cv2.LINE_AA)
            cv2.putText(mask, text, org, cv2.FONT_HERSHEY_DUPLEX, scale, 255, 1, cv2.LINE_AA)
        cover[i, 0] = mask / 255.0
        color[i] = canvas.transpose(2, 0, 1) / 255.0
    color_t, cover_t = torch.from_numpy(color).to(x), torch.from_numpy(cover).to(x)
    premult = color_t * cover_t  # cv2 anti-aliasing blends colour with the background by coverage
    if (h, w) != (BASE, BASE):
        premult, cover_t = (F.interpolate(t, size=(h, w), mode="area") for t in (premult, cover_t))
    return x * (1 - cover_t) + premult


# --- standard corruptions with MedMNIST-C's per-dataset parameters ------------------------------------------
def _gauss_blur_kernel(x: torch.Tensor, k: int) -> torch.Tensor:
    """torchvision gaussian_blur(kernel_size=k): sigma = 0.3 ((k - 1) / 2 - 1) + 0.8, reflect padding."""
    s = min(x.shape[-2:]) / BASE
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    return _ops.gaussian_blur(x, sigma * s, truncate=(k - 1) / 2 / sigma, mode="reflect101")


def _pixelate(x: torch.Tensor, f: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * f)), max(1, int(w * f))
    m = [
        _ops.to_device(("box", a, b), _ops.box_resize_matrix(a, b), x) for a, b in ((h, sh), (w, sw), (sh, h), (sw, w))
    ]
    return _ops.apply_separable(_ops.apply_separable(x, m[0], m[1]), m[2], m[3])


def _jpeg(x: torch.Tensor, q: int) -> torch.Tensor:
    u8 = torch.round(x.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([_jpeg_roundtrip(im, int(q)) for im in u8])
    return torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).to(x.dtype) / 255


def _impulse(x: torch.Tensor, amount: float, gen: _rng.Gen) -> torch.Tensor:
    flip = _rng.rand(x.shape, gen, x.device, x.dtype) <= amount
    salt = _rng.rand(x.shape, gen, x.device, x.dtype) <= 0.5
    return torch.where(flip, salt.to(x.dtype), x)


def apply(x: torch.Tensor, name: str, p, severity: int, gen: _rng.Gen) -> torch.Tensor:
    """Corruption ``name`` with parameter entry ``p`` on an RGB batch ``(N, 3, H, W)`` in [0, 1]."""
    s = min(x.shape[-2:]) / BASE
    randn = lambda: _rng.randn(x.shape, gen, x.device, x.dtype)  # noqa: E731
    if name in ("brightness_up", "brightness_down"):
        return brightness_factor(x, p)
    if name in ("contrast_up", "contrast_down"):
        return contrast_factor(x, p)
    if name in ("gamma_corr_up", "gamma_corr_down"):
        return gamma(x, p)
    ops = {
        "saturate": lambda: saturate_add(x, p),
        "black_corner": lambda: black_corner(x, p),
        "bubble": lambda: bubble(x, *p, gen),
        "stain_deposit": lambda: stain_deposit(x, p, severity, gen),
        "characters": lambda: characters(x, *p, gen),
        "gaussian_noise": lambda: x + randn() * p,
        "speckle_noise": lambda: x + x * randn() * p,
        "impulse_noise": lambda: _impulse(x, p, gen),
        "shot_noise": lambda: poisson_8bit(x.clamp(0, 1), float(p), gen) / p,
        "gaussian_blur": lambda: _gauss_blur_kernel(x, p),
        "defocus_blur": lambda: _ops.filter2d(x, disk_kernel(p[0] * s, max(p[1] * s, 1e-3)), "reflect101"),
        "motion_blur": lambda: motion_blur_batch(
            x,
            p[0] * s,
            p[1] * s,
            _rng.rand((x.shape[0],), gen, x.device, torch.float64) * 90 - 45,
            per_image=_rng.per_image(gen),
        ),
        "zoom_blur": lambda: (
            (x + sum(_ops.clipped_zoom(x, float(z)) for z in np.arange(*p))) / (len(np.arange(*p)) + 1)
        ),
        "pixelate": lambda: _pixelate(x, p),
        "jpeg_compression": lambda: _jpeg(x, p),
    }
    if name not in ops:
        raise ValueError(f"unknown MedMNIST-C corruption {name!r} (known: {', '.join(sorted(ops) + sorted(_REG))})")
    return ops[name]()


def medmnist_c(x: torch.Tensor, flag: str, name: str, severity: int, gen: _rng.Gen = None,
               gray: bool = False) -> torch.Tensor:  # fmt: skip
    """MedMNIST-C corruption ``name`` of dataset ``flag`` at ``severity`` (1..5) on ``(N, 3, H, W)`` in [0, 1].

    Returns the same shape/dtype/device, quantised to 8-bit levels; ``gray``: luma, replicated to 3 channels.
    ``gen``: a generator, ``None``, or one generator per image (as :func:`corruptions.corrupt`).
    """
    if flag not in MEDMNIST_C or name not in MEDMNIST_C[flag]:
        known = ", ".join(MEDMNIST_C.get(flag, {})) or f"flags: {', '.join(MEDMNIST_C)}"
        raise ValueError(f"MedMNIST-C has no corruption {name!r} for {flag!r} (known: {known})")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    out = apply(x.float(), name, MEDMNIST_C[flag][name][severity - 1], severity, gen).clamp(0, 1)
    if gray:
        out = to_gray(out).expand(-1, 3, -1, -1)
    return (torch.round(out * 255) / 255).to(x.dtype).contiguous()


def _registered(name: str):
    def fn(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
        return apply(x, name, MEDMNIST_C[DEFAULT_FLAG[name]][name][severity - 1], severity, gen)

    fn.__name__ = name
    return fn


_REG = {
    "brightness_up": "brightness x f, f > 1 (Pillow ImageEnhance; MedMNIST-C)",
    "brightness_down": "brightness x f, f < 1 (Pillow ImageEnhance; MedMNIST-C)",
    "contrast_up": "contrast about the mean luma x f, f > 1 (Pillow ImageEnhance; MedMNIST-C)",
    "contrast_down": "contrast about the mean luma x f, f < 1 (Pillow ImageEnhance; MedMNIST-C)",
    "gamma_corr_up": "gamma correction x ** g, g > 1: darker (X-ray/CT; MedMNIST-C)",
    "gamma_corr_down": "gamma correction x ** g, g < 1: brighter (X-ray/CT; MedMNIST-C)",
    "stain_deposit": "dark ink stains on the slide (pathology/blood; MedMNIST-C)",
    "bubble": "translucent white air bubbles (pathology/blood; MedMNIST-C)",
    "black_corner": "black outside a centred disk, dermatoscope vignette (MedMNIST-C)",
    "characters": "random coloured handwriting-like text, pen marks (dermatoscopy; MedMNIST-C)",
}
for _name, _desc in _REG.items():
    register(_name, _desc)(_registered(_name))
