"""Severity parameter tables, transcribed from Hendrycks & Dietterich's reference generators.

Sources (hendrycks/robustness, ``ImageNet-C/create_c/``):

* :data:`IMAGENET` -- ``make_imagenet_c.py`` (images resized to 256, center-cropped to 224 px);
* :data:`CIFAR` -- ``make_cifar_c.py`` (32 px CIFAR-10/100 test images).

Each entry holds the five per-severity parameter tuples exactly as in the reference (the field
meaning is given in the comment above each entry). ``motion_blur`` and ``snow`` call ImageMagick's
``motion_blur(radius, sigma, angle)`` in the reference; we use the numpy kernel of the
``imagecorruptions`` package (bethgelab), which reimplements it with the same (radius, sigma).

Other image sizes (the documented rule, implemented by :func:`params`)
----------------------------------------------------------------------
An image of side ``size = min(H, W)`` uses the table of the nearest family on a log scale: CIFAR
(32 px) when ``size <= 84`` (≈ sqrt(32 * 224)), ImageNet (224 px) otherwise. So MedMNIST 28/64 px and
32 px digits use the CIFAR table, 128/224 px the ImageNet table. Parameters measured in pixels
(:data:`SPATIAL`: blur radii and sigmas, glass-blur shuffle distance, motion-blur radius/sigma,
spatter smoothing, elastic displacement/smoothing/affine jitter, frost texture scale) are multiplied
by ``s = size / base`` (base 32 or 224), so that at exactly 32 / 224 px the tables are used
unchanged. Relative parameters (noise levels, zoom factors, pixelate fraction, contrast, JPEG
quality, intensities) are size-independent and are not scaled. Fog always uses a plasma map of side
``next_power_of_2(max(H, W))`` (256 at 224 px, 32 at 32 px, as in the reference).
"""

from __future__ import annotations

import math

IMAGENET_SIZE = 224
CIFAR_SIZE = 32
FAMILY_THRESHOLD = 84  # ~ sqrt(32 * 224): nearest family on a log scale

_E = 244  # make_imagenet_c.py's elastic constants use 244 ("should have been 224", sic)
_C = CIFAR_SIZE  # make_cifar_c.py's IMSIZE

IMAGENET: dict[str, list] = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],  # std
    "shot_noise": [60, 25, 12, 5, 3],  # photons per unit intensity
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],  # s&p amount
    "speckle_noise": [0.15, 0.2, 0.35, 0.45, 0.6],  # multiplicative std
    "gaussian_blur": [1, 2, 3, 4, 6],  # sigma (px)
    # (sigma px, max_delta px, iterations)
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    # (disk radius px, alias_blur sigma px)
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    # (radius px, sigma px); angle ~ U(-45, 45) degrees
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    # zoom factors: np.arange(start, stop, step)
    "zoom_blur": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
    # (loc, scale, zoom, threshold, blur radius px, blur sigma px, blend)
    "snow": [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ],
    # (image weight, frost weight)
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    # (fog strength, plasma wibble decay)
    "fog": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],  # added to HSV value
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],  # factor around the per-channel mean
    # (alpha px, sigma px, affine jitter px)
    "elastic_transform": [
        (_E * 2, _E * 0.7, _E * 0.1),
        (_E * 2, _E * 0.08, _E * 0.2),
        (_E * 0.05, _E * 0.01, _E * 0.02),
        (_E * 0.07, _E * 0.01, _E * 0.02),
        (_E * 0.12, _E * 0.01, _E * 0.02),
    ],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],  # downsampling fraction
    "jpeg_compression": [25, 18, 15, 10, 7],  # JPEG quality
    # (loc, scale, sigma px, threshold, intensity / mud sigma px, 0 = liquid | 1 = mud)
    "spatter": [
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ],
    # (saturation factor, saturation offset)
    "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
}

CIFAR: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "elastic_transform": [
        (_C * 0, _C * 0, _C * 0.08),
        (_C * 0.05, _C * 0.2, _C * 0.07),
        (_C * 0.08, _C * 0.06, _C * 0.06),
        (_C * 0.1, _C * 0.04, _C * 0.05),
        (_C * 0.1, _C * 0.03, _C * 0.03),
    ],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
    "spatter": [
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ],
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
}

# Frost textures: ImageNet crops the texture at its native resolution, CIFAR first shrinks it by
# 0.2 (cv2.resize(fx=0.2, fy=0.2), bilinear).
FROST_TEXTURE_SCALE = {"imagenet": 1.0, "cifar": 0.2}

# Indices of the fields of each entry that are in pixels (scaled by size / base, see module doc).
SPATIAL: dict[str, tuple[int, ...]] = {
    "gaussian_blur": (0,),
    "glass_blur": (0, 1),
    "defocus_blur": (0, 1),
    "motion_blur": (0, 1),
    "snow": (4, 5),
    "elastic_transform": (0, 1, 2),
    "spatter": (2, 4),  # field 4 is a sigma only for mud (field 5 == 1); see weather.spatter
}

TABLES = {"imagenet": IMAGENET, "cifar": CIFAR}
BASE_SIZE = {"imagenet": IMAGENET_SIZE, "cifar": CIFAR_SIZE}


def family(height: int, width: int) -> str:
    """Table family (``"cifar"`` or ``"imagenet"``) for an image of ``height x width`` pixels."""
    return "cifar" if min(height, width) <= FAMILY_THRESHOLD else "imagenet"


def scale(height: int, width: int) -> float:
    """Spatial scale ``s = min(H, W) / base`` of the family's base size (1.0 at 32 and 224 px)."""
    return min(height, width) / BASE_SIZE[family(height, width)]


def params(name: str, severity: int, height: int, width: int):
    """The parameter entry of ``name`` at ``severity`` for an ``H x W`` image, pixel fields scaled.

    Returns a float/int scalar or a tuple, as in the tables. At 32 and 224 px (s == 1) the entry
    is returned unchanged.
    """
    fam = family(height, width)
    entry = TABLES[fam][name][severity - 1]
    s = scale(height, width)
    fields = SPATIAL.get(name, ())
    if name == "spatter" and entry[5] == 0:
        fields = (2,)  # liquid: field 4 is an intensity, not a length
    if s == 1.0 or not fields:
        return entry
    if not isinstance(entry, tuple):
        return entry * s
    return tuple(v * s if i in fields else v for i, v in enumerate(entry))


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, math.ceil(math.log2(n)))
