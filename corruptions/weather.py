"""Weather corruptions: snow, frost, fog, spatter.

Algorithms and tables: Hendrycks & Dietterich, make_imagenet_c.py / make_cifar_c.py (see tables.py).
Snow's motion blur uses the ``imagecorruptions`` numpy line kernel (blur.motion_blur_batch).
"""

from __future__ import annotations

import importlib.util
import os

import cv2
import numpy as np
import torch

from . import _ops, _rng
from ._color import to_gray
from ._registry import register
from .blur import motion_blur_batch
from .tables import FROST_TEXTURE_SCALE, family, next_power_of_2, params, scale


@register("snow", "falling snow flakes (zoomed, thresholded, motion-blurred noise), whitened image", native_gray=True)
def snow(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    n, _, h, w = x.shape
    loc, sd, zoom, thresh, radius, sigma, blend = params("snow", severity, h, w)
    layer = _rng.randn((n, 1, h, w), gen, x.device, x.dtype) * sd + loc
    layer = _ops.clipped_zoom(layer, zoom)
    layer = torch.where(layer < thresh, torch.zeros_like(layer), layer).clamp(0, 1)
    angles = _rng.rand((n,), gen, x.device, torch.float64) * 90 - 135
    layer = motion_blur_batch(layer, radius, sigma, angles, per_image=_rng.per_image(gen))
    layer = torch.round(layer * 255).clamp(0, 255) / 255  # the reference stores the layer as uint8
    x = blend * x + (1 - blend) * torch.maximum(x, to_gray(x) * 1.5 + 0.5)
    return x + layer + torch.flip(layer, dims=(-2, -1))


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, gen: _rng.Gen, device: torch.device) -> torch.Tensor:
    """``n`` diamond-square height maps ``(n, mapsize, mapsize)`` in [0, 1] (float32).

    Same recursion as the reference's ``plasma_fractal`` (after FLHerne/mapgen): corners start at
    0, each midpoint is the mean of its four neighbours (wrapping) plus ``wibble * U(-wibble,
    wibble)``, ``wibble`` starts at 100 and is divided by ``wibbledecay`` per octave.
    """
    assert mapsize & (mapsize - 1) == 0, "mapsize must be a power of two"
    a = torch.zeros((n, mapsize, mapsize), dtype=torch.float32, device=device)
    step, wibble = mapsize, 100.0

    def wibbled(s: torch.Tensor) -> torch.Tensor:
        u = _rng.rand(s.shape, gen, device)
        return (u * (2 * wibble * wibble) - wibble * wibble).add_(s, alpha=0.25)

    while step >= 2:
        half = step // 2
        corners = a[:, ::step, ::step]
        sq = corners + torch.roll(corners, -1, 1)
        sq = sq + torch.roll(sq, -1, 2)
        a[:, half::step, half::step] = wibbled(sq)
        dr = a[:, half::step, half::step]
        ul = a[:, ::step, ::step]
        a[:, ::step, half::step] = wibbled(dr + torch.roll(dr, 1, 1) + ul + torch.roll(ul, -1, 2))
        a[:, half::step, ::step] = wibbled(dr + torch.roll(dr, 1, 2) + ul + torch.roll(ul, -1, 1))
        step //= 2
        wibble /= wibbledecay
    a -= a.amin((1, 2), keepdim=True)
    return a.div_(a.amax((1, 2), keepdim=True))


@register("fog", "additive plasma-fractal (diamond-square) haze with contrast loss", native_gray=True)
def fog(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    n, _, h, w = x.shape
    strength, decay = params("fog", severity, h, w)
    plasma = plasma_fractal(n, next_power_of_2(max(h, w)), decay, gen, x.device)[:, None, :h, :w]
    plasma = plasma.to(x.dtype).contiguous().mul_(strength)
    max_val = x.amax((1, 2, 3), keepdim=True)
    return (x + plasma).mul_(max_val / (max_val + strength))


_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
_FROST_CACHE: dict[tuple, object] = {}


def frost_dir() -> str:
    """Folder of the frost textures shipped in the ``imagecorruptions`` wheel (Apache-2.0)."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the frost corruption needs the frost texture images shipped with the 'imagecorruptions' "
            "package (a declared dependency of tta_bench); install it with `pip install imagecorruptions`."
        )
    return os.path.join(spec.submodule_search_locations[0], "frost")


def frost_textures(h: int, w: int) -> list[np.ndarray]:
    """The five textures the reference draws from (``randint(5)``: frost6 is never used), RGB uint8,
    scaled by the family's texture scale times ``s`` (tables.py), at least ``(h + 1, w + 1)``."""
    factor = FROST_TEXTURE_SCALE[family(h, w)] * scale(h, w)
    key = (round(factor, 6), h, w)
    if key not in _FROST_CACHE:
        out = []
        for name in _FROST_FILES:
            tex = cv2.imread(os.path.join(frost_dir(), name))
            if tex is None:
                raise RuntimeError(f"could not read frost texture {name!r} in {frost_dir()}")
            if factor != 1.0:
                tex = cv2.resize(tex, (0, 0), fx=factor, fy=factor)  # bilinear, as the reference
            grow = max((h + 1) / tex.shape[0], (w + 1) / tex.shape[1])
            if grow > 1:  # texture smaller than the image: enlarge it to fit (imagecorruptions' rule)
                size = (int(np.ceil(tex.shape[1] * grow)), int(np.ceil(tex.shape[0] * grow)))
                tex = cv2.resize(tex, size, interpolation=cv2.INTER_CUBIC)
            out.append(np.ascontiguousarray(tex[..., ::-1]))
        _FROST_CACHE[key] = out
    return _FROST_CACHE[key]


def _frost_stack(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The textures zero-padded into one ``(5, th, tw, 3)`` uint8 array, and their ``(5, 2)`` sizes."""
    key = ("stack", h, w)
    if key not in _FROST_CACHE:
        texs = frost_textures(h, w)
        th, tw = max(t.shape[0] for t in texs), max(t.shape[1] for t in texs)
        stack = np.zeros((len(texs), th, tw, 3), np.uint8)
        for i, t in enumerate(texs):
            stack[i, : t.shape[0], : t.shape[1]] = t
        _FROST_CACHE[key] = (stack, np.array([t.shape[:2] for t in texs]))
    return _FROST_CACHE[key]


@register("frost", "blend with a randomly cropped frost texture")
def frost(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    n, _, h, w = x.shape
    c_img, c_frost = params("frost", severity, h, w)
    stack, sizes_np = _frost_stack(h, w)
    tex = _ops.to_device(("frost", h, w), stack, x)
    sizes = _ops.to_device(("frost_sz", h, w), sizes_np, x.new_empty(0, dtype=torch.long))
    idx = _rng.randint(0, len(stack), (n,), gen, x.device)
    u = _rng.rand((2, n), gen, x.device, torch.float64, dim=1)
    y0 = (u[0] * (sizes[idx, 0] - h)).long()  # randint(0, th - h) per image
    x0 = (u[1] * (sizes[idx, 1] - w)).long()
    rows = y0[:, None, None] + torch.arange(h, device=x.device)[None, :, None]
    cols = x0[:, None, None] + torch.arange(w, device=x.device)[None, None, :]
    crop = tex[idx[:, None, None], rows, cols].permute(0, 3, 1, 2)
    return c_img * x + c_frost * crop / 255


def _liquid_distance(liquid_u8: np.ndarray) -> np.ndarray:
    """The reference's cv2 edge-distance shading of one uint8 liquid layer -> float32 ``(H, W)``.

    Canny edges, L2 distance transform (mask 5), truncated at 20, box-blurred, histogram-equalised,
    embossed with a 3x3 kernel (saturating uint8), box-blurred. Runs per image with OpenCV on the
    CPU: the one per-image step of this package besides JPEG.
    """
    dist = 255 - cv2.Canny(liquid_u8, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32)
    dist = cv2.filter2D(dist, cv2.CV_8U, emboss)
    return cv2.blur(dist, (3, 3)).astype(np.float32)


@register("spatter", "liquid splashes (severity 1-3) or mud (4-5) occluding the image")
def spatter(x: torch.Tensor, severity: int, gen: _rng.Gen) -> torch.Tensor:
    n, _, h, w = x.shape
    loc, sd, sigma, thresh, c4, mud = params("spatter", severity, h, w)
    liquid = _rng.randn((n, 1, h, w), gen, x.device, x.dtype).mul_(sd).add_(loc)
    liquid = _ops.gaussian_blur(liquid, sigma)
    liquid = torch.where(liquid < thresh, torch.zeros_like(liquid), liquid)
    if mud:
        m = (liquid > thresh).to(x.dtype)
        m = _ops.gaussian_blur(m, c4)
        m = torch.where(m < 0.8, torch.zeros_like(m), m)
        color = torch.tensor([63, 42, 20], dtype=x.dtype, device=x.device)[None, :, None, None] / 255
        return x * (1 - m) + color * m
    # np.uint8(v * 255): truncation, and out-of-range values wrap modulo 256 as numpy does on x86
    u8 = torch.remainder(torch.floor(liquid * 255), 256).to(torch.uint8)
    u8_np = u8[:, 0].cpu().numpy()
    dist = np.stack([_liquid_distance(img) for img in u8_np])
    m = u8.to(x.dtype) * torch.as_tensor(dist, device=x.device, dtype=x.dtype)[:, None]
    peak = m.amax((2, 3), keepdim=True)
    m = m / torch.where(peak > 0, peak, torch.ones_like(peak)) * c4
    color = torch.tensor([175, 238, 238], dtype=x.dtype, device=x.device)[None, :, None, None] / 255
    return x + m * color
