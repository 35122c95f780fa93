"""Colour-space helpers following scikit-image's conventions (``skimage.color.rgb2hsv/hsv2rgb``)."""

from __future__ import annotations

import torch

# cv2.cvtColor(RGB2GRAY) / ITU-R BT.601 luma weights
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def rgb2hsv(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB in [0, 1] -> HSV, each in [0, 1], exactly as skimage (hue 0 for grays)."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    delta = v - x.min(1).values
    gray = delta == 0
    safe = torch.where(gray, torch.ones_like(delta), delta)
    s = torch.where(gray, torch.zeros_like(v), delta / torch.where(v == 0, torch.ones_like(v), v))
    # skimage assigns red, then green, then blue: the last maximal channel wins ties
    h = (g - b) / safe
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(gray, torch.zeros_like(h), h)
    return torch.stack((h, s, v), 1)


def hsv2rgb(hsv: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` HSV in [0, 1] -> RGB, exactly as skimage."""
    h, s, v = hsv.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    hi = torch.remainder(hi, 6).long()
    table = torch.stack(
        [
            torch.stack((v, t, p), 1),
            torch.stack((q, v, p), 1),
            torch.stack((p, v, t), 1),
            torch.stack((p, q, v), 1),
            torch.stack((t, p, v), 1),
            torch.stack((v, p, q), 1),
        ],
        0,
    )  # (6, N, 3, H, W)
    idx = hi[None, :, None].expand(1, -1, 3, -1, -1)
    return table.gather(0, idx)[0]


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` -> ``(N, 1, H, W)`` luma with cv2's RGB2GRAY weights."""
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device)
    return (x * w[None, :, None, None]).sum(1, keepdim=True)
