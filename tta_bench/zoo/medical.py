"""`medical-resnet`: a small BatchNorm ResNet trained on a medical stream's source split on first use (cached).

The default model of the MedMNIST, Camelyon17 and confounded streams. A CIFAR-style ResNet (He et al.
2016): 3x3 stem, three stages of basic blocks (widths w, 2w, 4w; stride 2 between stages), global
average pooling, linear head. Inputs are 3-channel in [0, 1] (gray datasets arrive replicated), normalised
by a fixed 0.5/0.5. Inputs larger than 64 px get a strided stem and a max-pool (ImageNet-style), so
128/224 px MedMNIST+ and 96 px Camelyon patches cost about what 32-56 px images do. Stages are
`model.features[0..3]` (stem + 3 stages), as in small-cnn, for stage-wise methods.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.models import MODELS, ModelContext, cached_training, check_model_options, needs_source
from tta_bench.training import train_classifier


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv + BN when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class MedicalResNet(nn.Module):
    """Input (N,3,H,W) in [0,1] -> logits (N,num_classes). `blocks` basic blocks per stage."""

    def __init__(self, num_classes: int, width: int = 16, blocks: int = 1, large_input: bool = False) -> None:
        super().__init__()
        w = width
        stem: list[nn.Module] = [nn.Conv2d(3, w, 3, 2 if large_input else 1, 1, bias=False), nn.BatchNorm2d(w)]
        stem += [nn.ReLU(inplace=True)] + ([nn.MaxPool2d(3, 2, 1)] if large_input else [])

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                *[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(blocks)]
            )

        self.features = nn.Sequential(nn.Sequential(*stem), stage(w, w, 1), stage(w, 2 * w, 2), stage(2 * w, 4 * w, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features((x - 0.5) / 0.5)).flatten(1))


@MODELS.register("medical-resnet")
def medical_resnet(
    spec, ctx: ModelContext, *, width: int = 16, blocks: int = 1, source_epochs: int = 10, lr: float = 2e-3,
    batch_size: int = 64,
) -> nn.Module:  # fmt: skip
    """Small BatchNorm ResNet, trained on the stream's source split on first use and cached by its recipe."""
    needs_source("medical-resnet", spec)
    check_model_options("medical-resnet", {"width": width, "blocks": blocks, "source_epochs": source_epochs, "lr": lr,
                        "batch_size": batch_size}, {"width": 1, "blocks": 1, "source_epochs": 0, "lr": 0,
                        "batch_size": 1}, strict=("lr",))  # fmt: skip
    x0, _ = spec.source[0]
    if x0.shape[0] != 3:
        raise ValueError(f"medical-resnet takes 3-channel inputs; stream '{spec.name}' yields {tuple(x0.shape)}.")
    large = min(x0.shape[-2:]) > 64
    recipe = {
        "arch": "medical-resnet",
        "width": width,
        "blocks": blocks,
        "large_input": large,
        "classes": spec.num_classes,
        "epochs": source_epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": 0,
        "data": spec.source_fingerprint or spec.name,
    }

    def build() -> nn.Module:
        return MedicalResNet(spec.num_classes, width, blocks, large)

    def train(model: nn.Module) -> None:
        shift = max(1, min(x0.shape[-2:]) // 14)  # 2 px at 28 px
        train_classifier(
            model, spec.source, epochs=source_epochs, lr=lr, batch_size=batch_size, seed=0, shift=shift,
            desc=f"training medical-resnet on {spec.name}",
        )  # fmt: skip

    return cached_training(build, train, recipe, ctx.cache_dir, f"medical-resnet-{spec.info.get('flag', spec.name)}")
