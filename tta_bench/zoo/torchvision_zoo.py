"""torchvision ImageNet classifiers (`resnet18`, `resnet50`, ...) with their published weight enums.

Weights are looked up, in order, in `<weights dir>/torchvision/<file>` and torch hub's cache
(`$TORCH_HOME/hub/checkpoints/<file>`), else downloaded into the weights dir (the file name carries the
start of its SHA-256, which torch hub checks). Offline with neither: a UserError naming the file.
The enum's own eval transform (resize 256, crop 224) is the streams' job; its mean/std belong to the
model (`Normalized`), so the model takes inputs in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchvision.models as tvm

from tta_bench.kernel import UserError
from tta_bench.models import MODELS, ModelContext, Normalized, describe, sha256_file

# registered name -> (torchvision builder name, default weights): V1 weights are the TTA papers' sources
# (Tent, CoTTA, EATA use torchvision's original ResNet-50, as does RobustBench's Standard_R50).
ARCHS = {
    "resnet18": ("resnet18", "IMAGENET1K_V1"),
    "resnet34": ("resnet34", "IMAGENET1K_V1"),
    "resnet50": ("resnet50", "IMAGENET1K_V1"),
    "resnet101": ("resnet101", "IMAGENET1K_V1"),
    "wide-resnet50-2": ("wide_resnet50_2", "IMAGENET1K_V1"),
    "mobilenet-v2": ("mobilenet_v2", "IMAGENET1K_V1"),
    "efficientnet-b0": ("efficientnet_b0", "IMAGENET1K_V1"),
    "convnext-tiny": ("convnext_tiny", "IMAGENET1K_V1"),
    "vit-b-16": ("vit_b_16", "IMAGENET1K_V1"),
}


def weights_enum(arch: str, tag: str):
    enum = tvm.get_model_weights(arch)
    try:
        return enum[tag]
    except KeyError:
        raise UserError(
            f"torchvision {arch} has no weights '{tag}'. Choose one of: {', '.join(w.name for w in enum)} "
            "(--set model.weights_tag=...)."
        ) from None


def state_dict_for(w, weights_dir: Path) -> tuple[dict, Path]:
    """The state_dict of weight enum `w`: from the weights dir, torch hub's cache, or downloaded."""
    fname = w.url.rsplit("/", 1)[-1]
    ours = Path(weights_dir) / "torchvision"
    for p in (ours / fname, Path(torch.hub.get_dir()) / "checkpoints" / fname):
        if p.is_file():
            return torch.load(p, map_location="cpu", weights_only=True), p
    try:
        sd = torch.hub.load_state_dict_from_url(w.url, model_dir=str(ours), map_location="cpu", check_hash=True)
    except Exception as e:  # noqa: BLE001 - URLError, HTTPError, hash mismatch: all say "place the file by hand"
        raise UserError(
            f"Could not download {w.url} ({e}). If this machine is offline, download {fname} elsewhere and place "
            f"it at {ours / fname} (or in torch hub's cache {Path(torch.hub.get_dir()) / 'checkpoints'})."
        ) from None
    return sd, ours / fname


def _factory(name: str, arch: str, default_tag: str):
    def factory(spec, ctx: ModelContext, *, weights_tag: str = default_tag) -> nn.Module:
        if spec is not None and spec.num_classes != 1000:
            raise UserError(f"{name} predicts 1,000 ImageNet classes; stream '{spec.name}' has {spec.num_classes}.")
        w = weights_enum(arch, weights_tag)
        net = tvm.get_model(arch, weights=None)
        sd, path = state_dict_for(w, ctx.weights_dir)
        net.load_state_dict(sd)
        t = w.transforms()
        return describe(Normalized(net, t.mean, t.std), weights=str(path), sha256=sha256_file(path), enum=str(w))

    factory.__doc__ = f"torchvision {arch} ({default_tag} weights by default), ImageNet, 1,000 classes."
    return factory


for _name, (_arch, _tag) in ARCHS.items():
    MODELS.register(_name)(_factory(_name, _arch, _tag))
