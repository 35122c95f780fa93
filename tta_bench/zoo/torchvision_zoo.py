"""torchvision ImageNet classifiers (`resnet18`, `resnet50`, ...) with their published weight enums.

Weights are looked up, in order, in `<weights dir>/torchvision/<file>` and torch hub's cache
(`$TORCH_HOME/hub/checkpoints/<file>`), else downloaded into the weights dir (the file name carries the
start of its SHA-256, which torch hub checks). Offline with neither: a UserError naming the file.
The enum's own eval transform (resize 256, crop 224) is the streams' job; its mean/std belong to the
model (`Normalized`, read from the enum's transforms: exactly what the checkpoint was trained with; ImageNet
statistics for every registered model, ViT-B/16's V1 and SWAG weights included), so the model takes inputs in
[0, 1]. `vit-b-16` with `--set model.weights_tag=IMAGENET1K_SWAG_E2E_V1` is built at the weights' 384 px and
resizes the stream's 224 px crop to 384 (bicubic) — the published eval resizes the image to 384 and crops 384,
so that variant's field of view differs slightly from its evaluation protocol (recorded in model_info.input).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchvision.models as tvm

from tta_bench.kernel import UserError
from tta_bench.models import MODELS, ModelContext, Normalized, describe, load_into, load_state_file, sha256_file

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
            return load_state_file(p), p
    try:
        sd = torch.hub.load_state_dict_from_url(w.url, model_dir=str(ours), map_location="cpu", check_hash=True)
    except Exception as e:  # noqa: BLE001 - URLError, HTTPError, hash mismatch: all say "place the file by hand"
        raise UserError(
            f"Could not download {w.url} ({e}). If this machine is offline, download {fname} elsewhere and place "
            f"it at {ours / fname} (or in torch hub's cache {Path(torch.hub.get_dir()) / 'checkpoints'})."
        ) from None
    return sd, ours / fname


class ResizedInput(nn.Module):
    """`model(resize(x, size))` (bicubic, antialiased): feeds a fixed-size ViT from the streams' 224 px crops."""

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True)
        return self.model(x.clamp(0, 1))


def _factory(name: str, arch: str, default_tag: str):
    def factory(spec, ctx: ModelContext, *, weights_tag: str = default_tag) -> nn.Module:
        if spec is not None and spec.num_classes != 1000:
            raise UserError(f"{name} predicts 1,000 ImageNet classes; stream '{spec.name}' has {spec.num_classes}.")
        w = weights_enum(arch, weights_tag)
        size = w.meta.get("min_size", (224, 224))[0] if arch.startswith("vit") else 224  # ViTs: fixed input size
        net = tvm.get_model(arch, weights=None, **({"image_size": size} if size != 224 else {}))
        sd, path = state_dict_for(w, ctx.weights_dir)
        load_into(net, sd, path)
        t = w.transforms()
        model = Normalized(net, t.mean, t.std)
        model = ResizedInput(model, size) if size != 224 else model
        info = {
            "mean": list(t.mean),
            "std": list(t.std),
            "size": size,
            "eval_resize": list(t.resize_size),
            "eval_crop": list(t.crop_size),
            "interpolation": str(t.interpolation.value),
        }
        return describe(model, weights=str(path), sha256=sha256_file(path), enum=str(w), input=info)

    factory.__doc__ = f"torchvision {arch} ({default_tag} weights by default), ImageNet, 1,000 classes."
    return factory


for _name, (_arch, _tag) in ARCHS.items():
    MODELS.register(_name)(_factory(_name, _arch, _tag))
