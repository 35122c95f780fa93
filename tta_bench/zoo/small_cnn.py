"""`small-cnn`: a small BatchNorm CNN trained on the stream's source split on first use (cached).

The default model of the embedded `digits-c` stream. Four conv stages (`model.features[0..3]`) then a
linear head, so stage-wise methods (EcoTTA) find natural partitions.
"""

from __future__ import annotations

import torch.nn as nn

from tta_bench.models import MODELS, ModelContext, cached_training, check_model_options, needs_source
from tta_bench.training import train_classifier


def _stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Input (N,C,32,32) in [0,1] -> logits (N,num_classes). Normalises by a fixed 0.5/0.5 internally."""

    def __init__(self, num_classes: int = 10, in_ch: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        # Pool after the first stage: 32×32 inputs upsampled from small images carry no detail at full size,
        # and this keeps a forward pass ~4 MMAC per image (the embedded default must run in a minute on CPU).
        self.features = nn.Sequential(
            _stage(in_ch, w, True), _stage(w, 2 * w, True), _stage(2 * w, 4 * w, True), _stage(4 * w, 8 * w, False)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features((x - 0.5) / 0.5)).flatten(1))


@MODELS.register("small-cnn")
def small_cnn(spec, ctx: ModelContext, *, width: int = 16, source_epochs: int = 12, lr: float = 3e-3) -> nn.Module:
    """Small BatchNorm CNN (4 stages), trained on the stream's source split on first use and cached."""
    needs_source("small-cnn", spec)
    check_model_options("small-cnn", {"width": width, "source_epochs": source_epochs, "lr": lr},
                        {"width": 1, "source_epochs": 0, "lr": 0}, strict=("lr",))  # fmt: skip
    x0, _ = spec.source[0]
    recipe = {
        "arch": "small-cnn-v2",
        "width": width,
        "in_ch": int(x0.shape[0]),
        "classes": spec.num_classes,
        "epochs": source_epochs,
        "lr": lr,
        "seed": 0,
        "data": spec.source_fingerprint or spec.name,
    }

    def build() -> nn.Module:
        return SmallCNN(spec.num_classes, int(x0.shape[0]), width)

    def train(model: nn.Module) -> None:
        desc = f"training small-cnn on {spec.name}"
        train_classifier(model, spec.source, epochs=source_epochs, lr=lr, seed=0, desc=desc)

    return cached_training(build, train, recipe, ctx.cache_dir, f"small-cnn-{spec.name}")
