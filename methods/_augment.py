"""CoTTA's test-time augmentation (also RoTTA's strong augmentation), batch-wise, in torch.

Behaviour of `get_tta_transforms()` in qinenergy/cotta `cifar/cotta.py` (+ `cifar/my_transforms.py`),
which BIT-DA/RoTTA reuses as `core/utils/custom_transforms.py`: one random draw of every parameter per
call, applied to the whole batch (the official code calls the Compose on the batch tensor). Steps:
clip [0,1] -> colour jitter in a random order (brightness [0.6,1.4], contrast [0.7,1.3], saturation
[0.5,1.5], hue [-0.06,0.06], gamma [0.7,1.3] after clamping to [1e-8,1]) -> edge padding by n/2 ->
random affine (±15°, translation ±1/16 of the padded size, scale [0.9,1.1], bilinear) -> Gaussian blur
(kernel 5, sigma [0.001,0.5]) -> centre crop back to n -> horizontal flip (p 0.5) -> Gaussian noise
(std 0.005) -> clip. `soft=True` gives the official soft ranges.

The random draws come from torch's global RNG in the official order (torch.randperm(5), one
`uniform_` per jitter factor, torchvision's RandomAffine/GaussianBlur/RandomHorizontalFlip draws, and the
noise drawn on the CPU then moved to the input's device), so with the same seed this reproduces the
official pipeline built from torchvision's transforms on the current torchvision.
"""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

HARD = {
    "brightness": (0.6, 1.4),
    "contrast": (0.7, 1.3),
    "saturation": (0.5, 1.5),
    "hue": (-0.06, 0.06),
    "gamma": (0.7, 1.3),
    "degrees": (-15.0, 15.0),
    "scale": (0.9, 1.1),
    "sigma": (0.001, 0.5),
}
SOFT = {
    "brightness": (0.8, 1.2),
    "contrast": (0.85, 1.15),
    "saturation": (0.75, 1.25),
    "hue": (-0.03, 0.03),
    "gamma": (0.85, 1.15),
    "degrees": (-8.0, 8.0),
    "scale": (0.95, 1.05),
    "sigma": (0.001, 0.25),
}
_JITTER = ("brightness", "contrast", "saturation", "hue", "gamma")  # index order of ColorJitterPro


def _uniform(lo: float, hi: float) -> float:
    return torch.empty(1).uniform_(lo, hi).item()


def color_jitter(x: torch.Tensor, r: dict) -> torch.Tensor:
    """ColorJitterPro: the five adjustments in the order of torch.randperm(5), one factor each."""
    for i in torch.randperm(5).tolist():
        name = _JITTER[i]
        f = torch.tensor(1.0).uniform_(*r[name]).item()
        if name == "brightness":
            x = TF.adjust_brightness(x, f)
        elif name == "contrast":
            x = TF.adjust_contrast(x, f)
        elif name == "saturation":
            x = TF.adjust_saturation(x, f)
        elif name == "hue":
            x = TF.adjust_hue(x, f)
        else:  # gamma; the clamp avoids NaN gradients after contrast (as in the official code)
            x = TF.adjust_gamma(x.clamp(1e-8, 1.0), f)
    return x


def tta_augment(x: torch.Tensor, soft: bool = False, gaussian_std: float = 0.005) -> torch.Tensor:
    """One random augmentation of the batch `x` (N,C,H,W) in [0,1]; returns the same shape, in [0,1]."""
    r = SOFT if soft else HARD
    n_h, n_w = x.shape[-2:]
    x = color_jitter(x.clamp(0.0, 1.0), r)
    x = TF.pad(x, [int(n_h / 2)], padding_mode="edge")
    height, width = x.shape[-2:]
    angle = float(_uniform(*r["degrees"]))
    max_dx, max_dy = float(width / 16), float(height / 16)
    tx = int(round(_uniform(-max_dx, max_dx)))
    ty = int(round(_uniform(-max_dy, max_dy)))
    scale = float(_uniform(*r["scale"]))
    x = TF.affine(x, angle, [tx, ty], scale, [0.0, 0.0], InterpolationMode.BILINEAR, fill=[0.0] * x.shape[-3])
    sigma = _uniform(*r["sigma"])
    x = TF.gaussian_blur(x, [5, 5], [sigma, sigma])
    x = TF.center_crop(x, [n_h, n_w])
    if torch.rand(1) < 0.5:
        x = TF.hflip(x)
    x = x + (torch.randn(x.size()) * gaussian_std + 0.0).to(x.device)
    return x.clamp(0.0, 1.0)


def light_augment(x: torch.Tensor, padding_mode: str = "reflect") -> torch.Tensor:
    """ROID's / CMF's augmentation: `get_tta_transforms(size, padding_mode="reflect", cotta_augs=False)` of
    mariodoebler/test-time-adaptation `classification/augmentations/transforms_cotta.py`.

    The pipeline of `tta_augment` (hard ranges, same draw order) without its Gaussian blur and noise, with reflect
    padding: clip -> colour jitter -> pad n/2 -> random affine -> centre crop -> horizontal flip (p 0.5) -> clip.
    """
    r = HARD
    n_h, n_w = x.shape[-2:]
    x = color_jitter(x.clamp(0.0, 1.0), r)
    x = TF.pad(x, [int(n_h / 2)], padding_mode=padding_mode)
    height, width = x.shape[-2:]
    angle = float(_uniform(*r["degrees"]))
    max_dx, max_dy = float(width / 16), float(height / 16)
    tx = int(round(_uniform(-max_dx, max_dx)))
    ty = int(round(_uniform(-max_dy, max_dy)))
    scale = float(_uniform(*r["scale"]))
    x = TF.affine(x, angle, [tx, ty], scale, [0.0, 0.0], InterpolationMode.BILINEAR, fill=[0.0] * x.shape[-3])
    x = TF.center_crop(x, [n_h, n_w])
    if torch.rand(1) < 0.5:
        x = TF.hflip(x)
    return x.clamp(0.0, 1.0)
