"""Per-sample test-time augmentation pieces shared by MEMO, TPT, VTE, TDA and `tta_aug`.

`augmix_views(x, n, rng)`: `n` random views of ONE image, as the `AugMixAugmenter` of the official code builds
them (zhangmarvin/memo `*/utils/third_party.py`, azshue/TPT `data/datautils.py` + `data/augmix_ops.py`,
mariodoebler/test-time-adaptation `classification/augmentations/transforms_augmix.py` + `augmix_ops.py`):
a pre-augmentation (`crop="pad"`: random crop with 4-pixel zero padding + horizontal flip, the CIFAR branch;
`crop="resized"`: RandomResizedCrop to the input size, scale (0.08, 1), ratio (3/4, 4/3), bilinear + flip), then,
with `augmix=True`, AugMix (Hendrycks et al., ICLR 2020) at severity 1: Dirichlet(1,1,1) weights w, Beta(1,1)
mix m, three chains of 1-3 ops drawn from {autocontrast, equalize, posterize, rotate, solarize, shear_x,
shear_y, translate_x, translate_y}, view = m · pre + (1 - m) · Σ w_i chain_i. Mixing happens on [0,1] images
(the official mixes normalised tensors; normalisation is affine and the weights sum to 1, so it is the same).
The ops run on PIL images, as the official ones, after rounding the image to uint8 (the official pipelines load
uint8 images). Deviation: every draw comes from one numpy Generator (`rng`) instead of numpy's and torch's
global RNGs, so that views are reproducible and injectable; `seeded_rng()` seeds it from torch's global RNG.
Geometric ops fill with black (`fill`; the suite and TPT; MEMO's CIFAR code fills with grey 128).

`marginal_entropy` (MEMO) = `avg_entropy` (TPT/TDA): entropy of the mean of the views' softmax, computed in
log space as officially. `select_confident(logits, p)`: indices of the int(N·p) lowest-entropy rows (TPT).
`PriorBN`: MEMO's BatchNorm prior (`_modified_bn_forward` of memo `imagenet-exps/utils/train_helpers.py`, the
suite's `AlphaBatchNorm`): statistics = prior · source + (1 - prior) · batch, batch statistics detached with
the unbiased variance, as a train-mode `batch_norm` with momentum 1 computes them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps

from tta_bench.kernel import UserError
from tta_bench.methods.base import BN_TYPES

PER_POINT = (
    "one test point at a time inside any batch: the harness batch size changes only which random views are drawn"
)


# --- AugMix operations (severity `level`, PIL image) ----------------------------------------------------
def _level(rng: np.random.Generator, n: float) -> float:
    return rng.uniform(0.1, n)


def _sign(rng: np.random.Generator, v: float) -> float:
    return -v if rng.uniform() > 0.5 else v


def _affine(img: Image.Image, coeffs: tuple, fill: int) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=_fill(img, fill))


def _fill(img: Image.Image, fill: int):
    return fill if img.mode == "L" else (fill,) * len(img.getbands())


def _shear(img, level, rng, fill, axis):
    s = _sign(rng, float(_level(rng, level)) * 0.3 / 10)
    return _affine(img, (1, s, 0, 0, 1, 0) if axis == 0 else (1, 0, 0, s, 1, 0), fill)


def _translate(img, level, rng, fill, axis):
    t = int(_level(rng, level) * (img.size[axis] / 3) / 10)
    t = -t if rng.random() > 0.5 else t
    return _affine(img, (1, 0, t, 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, t), fill)


# The colour ops as per-band lookup tables in numpy: the same tables as Pillow's ImageOps (pure-Python loops, which
# cost ~5 ms per 32-pixel image; tests/test_memo.py checks them against ImageOps pixel for pixel).
def _apply_luts(img: Image.Image, lut_of) -> Image.Image:
    a = np.asarray(img)
    bands = a[..., None] if a.ndim == 2 else a
    out = np.stack([lut_of(np.bincount(b.ravel(), minlength=256))[b] for b in np.moveaxis(bands, -1, 0)], -1)
    return Image.fromarray(out[..., 0] if a.ndim == 2 else out, img.mode)


def _autocontrast_lut(h: np.ndarray) -> np.ndarray:
    nz = np.flatnonzero(h)
    lo, hi = int(nz[0]), int(nz[-1])
    if hi <= lo:
        return np.arange(256, dtype=np.uint8)
    scale = 255.0 / (hi - lo)
    return np.clip(np.trunc(np.arange(256) * scale + (-lo * scale)), 0, 255).astype(np.uint8)


def _equalize_lut(h: np.ndarray) -> np.ndarray:
    histo = h[h > 0]
    step = (int(histo.sum()) - int(histo[-1])) // 255 if len(histo) > 1 else 0
    if not step:
        return np.arange(256, dtype=np.uint8)
    n = step // 2 + np.concatenate([[0], np.cumsum(h)[:-1]])
    return np.clip(n // step, 0, 255).astype(np.uint8)


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    lut = (np.arange(256) & ~(2 ** (8 - bits) - 1)).astype(np.uint8)
    return _apply_luts(img, lambda h: lut)


def _solarize(img: Image.Image, threshold: int) -> Image.Image:
    i = np.arange(256)
    lut = np.where(i < threshold, i, 255 - i).astype(np.uint8)
    return _apply_luts(img, lambda h: lut)


OPS = {
    "autocontrast": lambda img, lv, rng, fill: _apply_luts(img, _autocontrast_lut),
    "equalize": lambda img, lv, rng, fill: _apply_luts(img, _equalize_lut),
    "posterize": lambda img, lv, rng, fill: _posterize(img, 4 - int(_level(rng, lv) * 4 / 10)),
    "rotate": lambda img, lv, rng, fill: img.rotate(
        _sign(rng, int(_level(rng, lv) * 30 / 10)), resample=Image.BILINEAR, fillcolor=_fill(img, fill)
    ),
    "solarize": lambda img, lv, rng, fill: _solarize(img, 256 - int(_level(rng, lv) * 256 / 10)),
    "shear_x": lambda img, lv, rng, fill: _shear(img, lv, rng, fill, 0),
    "shear_y": lambda img, lv, rng, fill: _shear(img, lv, rng, fill, 1),
    "translate_x": lambda img, lv, rng, fill: _translate(img, lv, rng, fill, 0),
    "translate_y": lambda img, lv, rng, fill: _translate(img, lv, rng, fill, 1),
}
OP_LIST = list(OPS.values())  # the official `augmentations` list, same order


# --- conversions and pre-augmentation -------------------------------------------------------------------
def to_pil(x: torch.Tensor) -> Image.Image:
    """(C,H,W) float in [0,1], C in {1,3} -> uint8 PIL image."""
    a = (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(a[0].numpy(), "L") if len(a) == 1 else Image.fromarray(a.permute(1, 2, 0).numpy())


def to_tensor(img: Image.Image) -> torch.Tensor:
    a = torch.from_numpy(np.array(img, dtype=np.float32) / 255.0)
    return a[None] if a.dim() == 2 else a.permute(2, 0, 1)


def _resized_crop_box(w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params (scale (0.08,1), ratio (3/4,4/3)) -> (left, top, w, h)."""
    area, log_r = w * h, (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    in_ratio = w / h  # fallback: central crop with the ratio clamped
    cw, ch = (
        (w, int(round(w / (4 / 3))))
        if in_ratio > 4 / 3
        else ((int(round(h * 3 / 4)), h) if in_ratio < 3 / 4 else (w, h))
    )
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def preaugment(img: Image.Image, rng: np.random.Generator, crop: str) -> Image.Image:
    """`crop="pad"`: RandomCrop(size, padding=4) + flip; `crop="resized"`: RandomResizedCrop(size) + flip."""
    w, h = img.size
    if crop == "pad":
        padded = ImageOps.expand(img, border=4, fill=0)
        i, j = int(rng.integers(0, 9)), int(rng.integers(0, 9))
        img = padded.crop((j, i, j + w, i + h))
    elif crop == "resized":
        left, top, cw, ch = _resized_crop_box(w, h, rng)
        img = img.resize((w, h), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    else:
        raise ValueError(f"crop must be 'pad' or 'resized', got {crop!r}")
    return ImageOps.mirror(img) if rng.random() < 0.5 else img


def augmix_view(
    img: Image.Image, rng: np.random.Generator, crop: str, augmix: bool = True, severity: int = 1, fill: int = 0
) -> torch.Tensor:
    """One view (C,H,W) in [0,1] of PIL `img` (the official `augmix()`)."""
    orig = preaugment(img, rng, crop)
    x = to_tensor(orig)
    if not augmix:
        return x
    w = np.float32(rng.dirichlet([1.0, 1.0, 1.0]))
    m = np.float32(rng.beta(1.0, 1.0))
    mix = torch.zeros_like(x)
    for i in range(3):
        aug = orig.copy()
        for _ in range(int(rng.integers(1, 4))):
            aug = OP_LIST[int(rng.integers(len(OP_LIST)))](aug, severity, rng, fill)
        mix += float(w[i]) * to_tensor(aug)
    return float(m) * x + (1 - float(m)) * mix


def augmix_views(
    x: torch.Tensor,
    n: int,
    rng: np.random.Generator,
    crop: str = "resized",
    augmix: bool = True,
    severity: int = 1,
    fill: int = 0,
) -> torch.Tensor:
    """`n` views (n,C,H,W) of the single image `x` (C,H,W) in [0,1], on x's device and dtype."""
    img = to_pil(x)
    views = [augmix_view(img, rng, crop, augmix, severity, fill) for _ in range(n)]
    if not views:
        return x.new_zeros((0, *x.shape))
    return torch.stack(views).to(device=x.device, dtype=x.dtype)


def seeded_rng() -> np.random.Generator:
    """A numpy Generator seeded from torch's global RNG (so the harness's seed fixes every view)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


def check_crop(crop: str) -> None:
    if crop not in ("auto", "pad", "resized"):
        raise UserError(f"method option 'crop' must be 'auto', 'pad' or 'resized', got {crop!r}.")


def default_crop(x: torch.Tensor) -> str:
    """The official per-dataset choice, by resolution: 32-pixel (CIFAR) images get "pad", larger ones "resized"."""
    return "pad" if max(x.shape[-2:]) <= 32 else "resized"


# --- losses and selection ----------------------------------------------------------------------------------
def marginal_entropy(outputs: torch.Tensor) -> torch.Tensor:
    """Entropy of the marginal p̄ = mean_i softmax(outputs_i), (N,C) -> scalar, in log space (MEMO/TPT)."""
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg = logits.logsumexp(dim=0) - math.log(logits.shape[0])
    avg = avg.clamp(min=torch.finfo(avg.dtype).min)
    return -(avg * avg.exp()).sum(dim=-1)


def select_confident(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Indices of the int(N·p) rows of lowest softmax entropy (at least one; the official takes int(N·p))."""
    ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    return torch.argsort(ent, descending=False)[: max(1, int(len(ent) * p))]


# --- BatchNorm with a source prior ---------------------------------------------------------------------------
class PriorBN(nn.Module):
    """Wraps a BN layer (`.layer`); normalises with prior · running stats + (1 - prior) · detached batch stats."""

    def __init__(self, layer: nn.Module, prior: float) -> None:
        super().__init__()
        self.layer, self.prior = layer, float(prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.layer
        with torch.no_grad():  # F.batch_norm(training=True, momentum=1.0) into fresh buffers: unbiased variance
            dims = [d for d in range(x.dim()) if d != 1]
            var_b, mean_b = torch.var_mean(x, dim=dims, correction=1)
        mean = self.prior * bn.running_mean + (1 - self.prior) * mean_b
        var = self.prior * bn.running_var + (1 - self.prior) * var_b
        return F.batch_norm(x, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)

    def extra_repr(self) -> str:
        return f"prior={self.prior}"


def use_prior_bn(model: nn.Module, prior: float) -> int:
    """Replace every BN layer of `model` in place by `PriorBN(layer, prior)`; returns how many. Eval mode."""
    model.eval()
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        if not isinstance(parent, PriorBN)
        for name, child in parent.named_children()
        if isinstance(child, BN_TYPES)
    ]
    for parent, name, child in swaps:
        if child.running_mean is None:
            raise ValueError(f"BN layer '{name}' has no running statistics to use as a prior (a source model?).")
        setattr(parent, name, PriorBN(child, prior))
    return len(swaps)
