"""Image files -> 8-bit RGB without silently changing what an image shows (Pillow; used by make-c and the harness).

Pillow's own `convert("RGB")` clips 16-bit grey to white (`I;16`: every value above 255 becomes 255), truncates
16-bit colour to its high byte and drops transparency, revealing whatever colour the transparent pixels hold.
`rgb_image` converts each mode by its meaning instead, or refuses it naming the file (tests/test_image_modes.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tta_bench.kernel import UserError

# Pillow modes converted by `rgb_image`; any other (32-bit integer I, float F, LAB, HSV, ...) is refused, naming it.
EXACT_MODES = ("RGB", "L", "1", "RGBX")  # 8-bit samples kept (grey replicated, 1-bit as 0/255, padding dropped)
CONVERTED_MODES = ("YCbCr", "CMYK")  # by Pillow: YCbCr (JPEG's) and CMYK (R = (255-C)(255-K)/255)
ALPHA_MODES = ("P", "PA", "RGBA", "RGBa", "LA", "La")  # palette looked up; alpha over white (opaque: unchanged)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # 16-bit grey: v * 255 / 65535, rounded


def rgb_image(im: Image.Image, path: Path | str, data: bytes | None = None) -> Image.Image:
    """An opened image as 8-bit RGB with the pixels it shows: 16-bit samples scaled by 255/65535 and rounded (16-bit
    grey and 16-bit colour PNGs, which Pillow would clip to white or truncate), palettes looked up, transparency
    (alpha, a palette's or a grey/RGB image's transparent colour) composited over white as a viewer shows it, CMYK
    and YCbCr converted. Modes whose value range the file does not state (32-bit integer `I`, float `F`) and any
    other mode are a UserError naming the file. `data`: the file's bytes where `path` is not a file (e.g. a pool)."""
    mode = im.mode
    if im.format == "PNG" and _sixteen_bit(im):
        return _png16(data if data is not None else Path(path).read_bytes(), path)
    if mode in SIXTEEN_BIT_MODES or (mode == "I" and (_sixteen_bit(im) or im.format == "PPM")):
        # 16-bit TIFF/PGM decode to I; Pillow scales a PGM's maxval (256..65535) to 0..65535
        grey = np.asarray(im).astype(np.float64)
        return Image.fromarray(_scale16(grey)).convert("RGB")
    if mode in EXACT_MODES and "transparency" not in im.info:
        return im.convert("RGB")  # (a decoded copy, also for RGB: the file may be closed after this)
    if mode in EXACT_MODES or mode in ALPHA_MODES:
        # a palette's or a colour key's transparency becomes alpha; premultiplied RGBa/La undone
        return _over_white((im.convert("LA") if mode == "La" else im).convert("RGBA"))
    if mode in CONVERTED_MODES:
        return im.convert("RGB")
    words = _MODE_WORDS.get(mode, "not 8/16-bit grey or colour")
    raise UserError(
        f"The image {path} has the pixel mode {mode!r} ({words}), whose conversion to 8-bit RGB would change its "
        "pixels or guess their range. Convert it to an 8-bit RGB PNG or JPEG (stating how its values map to 0-255), "
        "or remove it from the folder."
    )


_MODE_WORDS = {"I": "32-bit integer samples", "F": "32-bit float samples", "LAB": "CIELAB", "HSV": "HSV"}


def _sixteen_bit(im: Image.Image) -> bool:
    """Whether the file stores 16-bit samples (its decoder's raw mode, e.g. `I;16B`, `RGB;16B`)."""
    return any(";16" in str(getattr(t, "args", "")) for t in im.tile)


def _scale16(a: np.ndarray) -> np.ndarray:
    """16-bit samples (0..65535) -> 8-bit: v * 255 / 65535, rounded (v / 257 is never a tie)."""
    return np.rint(a / 257.0).astype(np.uint8)


def _png16(data: bytes, path: Path | str) -> Image.Image:
    """A 16-bit PNG (grey, grey+alpha, RGB, RGBA) decoded at full depth, scaled to 8 bits, alpha over white."""
    from torchvision.io import ImageReadMode, decode_png

    try:
        t = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except RuntimeError as e:
        raise UserError(f"Cannot decode the 16-bit PNG {path} ({e}); it is damaged. Replace it.") from None
    a = t.permute(1, 2, 0).numpy().astype(np.float64) / 65535.0  # (H, W, C) in [0, 1]
    c = a.shape[2]
    colour = a[..., :3] if c >= 3 else np.repeat(a[..., :1], 3, axis=2)
    if c in (2, 4):
        alpha = a[..., -1:]
        colour = colour * alpha + (1.0 - alpha)
    return Image.fromarray(np.rint(colour * 255.0).astype(np.uint8), "RGB")


def _over_white(rgba: Image.Image) -> Image.Image:
    """RGBA -> RGB composited over white: c * a + 255 * (1 - a), rounded (a = 255: c unchanged)."""
    a = np.asarray(rgba).astype(np.float64)
    alpha = a[..., 3:] / 255.0
    return Image.fromarray(np.rint(a[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8), "RGB")
