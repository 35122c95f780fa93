"""`resnet{20,32,44,56}-cifar10`: He et al.'s CIFAR ResNets with option-A (parameter-free) shortcuts.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2: a 3×3 stem
with 16 filters, three stages of n basic blocks (16, 32, 64 filters; stride 2 at the start of stages 2
and 3), global average pooling and a linear layer; depth 6n+2. Option A: a shortcut that changes shape
subsamples by 2 and zero-pads the new channels (no parameters).

Weights: akamaster/pytorch_resnet_cifar10 (BSD-2), published clean test errors 8.27 / 7.37 / 6.90 /
6.61 %; legacy `torch.save` dicts `{'best_prec1', 'state_dict'}` with `module.`-prefixed keys, trained
with ImageNet's mean/std input normalisation. The hex in each file name is the start of its SHA-256.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    ModelContext,
    Normalized,
    describe,
    fetch,
    load_into,
    load_state_file,
    sha256_file,
)

_REPO = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models"
# depth -> (file name as published / cached, SHA-256 prefix, download file name in the repository)
CHECKPOINTS = {
    20: ("resnet20-12fca82f.th", "12fca82f", "resnet20-12fca82f.th"),
    32: ("resnet32-d509ac18.th", "d509ac18", "resnet32.th"),
    44: ("resnet44-014dd654.th", "014dd654", "resnet44-014dd654.th"),
    56: ("resnet56-4bfd9763.th", "4bfd9763", "resnet56.th"),
}


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN + shortcut, ReLU. Option-A shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if (stride != 1 or cin != cout) else None

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is None:
            return x
        # Option A: take every other pixel, zero-pad the channel dimension on both sides.
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Input (N,3,32,32) normalised -> logits (N,num_classes). Depth 6n+2; stages `layer1..3`."""

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}.")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(cin: int, cout: int, n: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load an akamaster checkpoint (or a plain state_dict), stripping the `module.` prefix."""
    load_into(model, load_state_file(path), path, strict=False)  # UserErrors name the file (and the depth)


def _factory(depth: int):
    fname, sha, remote = CHECKPOINTS[depth]

    def factory(spec, ctx: ModelContext, *, weights: str | None = None) -> nn.Module:
        if spec is not None and spec.num_classes != 10:
            raise UserError(f"resnet{depth}-cifar10 has 10 classes, but stream '{spec.name}' has {spec.num_classes}.")
        net = CifarResNet(depth, 10)
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise UserError(f"model.weights={weights}: no such file (expected akamaster's {fname}).")
            sha256 = sha256_file(path)
        else:
            path = fetch(f"{_REPO}/{remote}", ctx.weights_dir / "cifar10-resnet" / fname, sha, what=f"resnet{depth}")
            sha256 = sha256_file(path)
        load_checkpoint(net, path)
        model = Normalized(net, IMAGENET_MEAN, IMAGENET_STD)
        return describe(model, weights=str(path), sha256=sha256, source="akamaster/pytorch_resnet_cifar10")

    factory.__doc__ = f"ResNet-{depth} for CIFAR-10 (He et al. 2016, option-A shortcuts), akamaster weights."
    return factory


for _d in CHECKPOINTS:
    MODELS.register(f"resnet{_d}-cifar10")(_factory(_d))
