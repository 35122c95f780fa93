"""Segmentation models: torchvision DeepLabV3 (ResNet-50/101), DeepLabV2-ResNet101 (the usual GTA5 -> Cityscapes
source model), SegFormer (optional `segmentation` extra), and the dense-inference wrapper they share.

Every model takes (N,3,H,W) RGB in [0,1] and returns dense logits (N,C,H,W) at the input resolution.
`model.inference`: "whole" (the input as it is), "resize" (the input resized to `model.size` — an int short
side or [H, W] — and the logits upsampled back) or "slide" (windows of `model.crop` [h, w] every
`model.stride` [h, w], logits averaged where windows overlap; mmsegmentation's slide inference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from tta_bench.kernel import UserError
from tta_bench.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODELS,
    ModelContext,
    Normalized,
    describe,
    load_into,
    load_state_file,
    sha256_file,
)

INFERENCE_MODES = ("whole", "resize", "slide")
# DeepLab v2 (Caffe) input: BGR, 0..255, mean subtracted, no scaling (AdaptSegNet's IMG_MEAN).
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


class DenseInference(nn.Module):
    """Run `net` (any-resolution logits) so that the output is (N,C,H,W) at the input's H, W."""

    def __init__(self, net: nn.Module, mode: str = "whole", size: Any = None, crop: Any = None, stride: Any = None):
        super().__init__()
        if mode not in INFERENCE_MODES:
            raise UserError(f"model option inference must be one of {INFERENCE_MODES}, got {mode!r}.")
        if mode == "resize" and size is None:
            raise UserError(
                "inference=resize needs a size: --set model.size=512 (short side) or model.size=[512,1024]."
            )
        if mode == "slide" and crop is None:
            raise UserError(
                "inference=slide needs a window: --set model.crop=[512,1024] (and optionally model.stride)."
            )
        self.net, self.mode, self.size = net, mode, size
        self.crop = tuple(crop) if crop is not None else None
        self.stride = tuple(stride) if stride is not None else (tuple(c * 2 // 3 for c in crop) if crop else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = tuple(x.shape[-2:])
        if self.mode == "slide":
            return self._slide(x)
        if self.mode == "resize":
            x = F.interpolate(x, size=target_size(hw, self.size), mode="bilinear", align_corners=False)
        return _upsample(self.net(x), hw)

    def _slide(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (ch, cw), (sh, sw) = x.shape[-2:], self.crop, self.stride
        ch, cw = min(ch, h), min(cw, w)
        ys = list(range(0, max(h - ch, 0) + 1, sh))
        xs = list(range(0, max(w - cw, 0) + 1, sw))
        ys += [h - ch] if ys[-1] != h - ch else []
        xs += [w - cw] if xs[-1] != w - cw else []
        out, count = None, x.new_zeros(1, 1, h, w)
        for y0 in ys:
            for x0 in xs:
                logits = _upsample(self.net(x[..., y0 : y0 + ch, x0 : x0 + cw]), (ch, cw))
                if out is None:
                    out = x.new_zeros(x.shape[0], logits.shape[1], h, w, dtype=logits.dtype)
                out = out + F.pad(logits, (x0, w - x0 - cw, y0, h - y0 - ch))  # out of place: keeps autograd simple
                count[..., y0 : y0 + ch, x0 : x0 + cw] += 1
        return out / count


def target_size(hw: tuple[int, int], size: Any) -> tuple[int, int]:
    """An int resizes the short side of `hw` to it; [H, W] is taken as is."""
    if isinstance(size, int):
        s = size / min(hw)
        return round(hw[0] * s), round(hw[1] * s)
    return int(size[0]), int(size[1])


def _upsample(logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(hw):
        return logits
    return F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)


class OutOnly(nn.Module):
    """torchvision segmentation models return {"out": ..., "aux": ...}; keep the (N,C,H,W) "out" tensor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


class CaffeInput(nn.Module):
    """RGB in [0,1] -> BGR 0..255 minus the Caffe ImageNet mean (DeepLab v2 / AdaptSegNet preprocessing)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flip(1) * 255 - self.mean)


def _load_file(net: nn.Module, path: str, fix=lambda sd: sd) -> str:
    """Load a state_dict file (strict) into `net`; returns its sha256. `module.` prefixes are dropped."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"Model weights file not found: {p} (--set model.weights=PATH to a state_dict).")
    load_into(net, fix(load_state_file(p)), p)
    return sha256_file(p)


# --- DeepLabV3 (torchvision) ---------------------------------------------------------------------------------
class SourceStatsBN(nn.Module):
    """BatchNorm that always normalises with its running (source) statistics; same state_dict keys as BN.

    Used for the BN after DeepLabV3's image-pooling branch: its input is (N,256,1,1), whose batch statistics
    are undefined for N = 1 (PyTorch raises) and degenerate for small N, so test-batch-statistics adapters
    (norm, tent, ...) must leave it alone. Not a `nn.BatchNorm2d`, so they do.
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.eps = bn.eps
        self.weight, self.bias = bn.weight, bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _fix_image_pooling(net: nn.Module) -> None:
    from torchvision.models.segmentation.deeplabv3 import ASPPPooling

    for m in net.modules():
        if isinstance(m, ASPPPooling):
            m[2] = SourceStatsBN(m[2])


def deeplabv3(backbone: str = "resnet50", num_classes: int = 19, pretrained: str = "none") -> nn.Module:
    """torchvision DeepLabV3 taking RGB in [0,1] (ImageNet normalisation inside), returning (N,C,H,W) logits.

    `pretrained`: "none"; "imagenet" (ImageNet backbone, new head); "coco" (torchvision's COCO-with-VOC-labels
    model, its last classifier conv replaced for `num_classes`). Downloads go to torch's hub cache; offline, a
    UserError says which file to place there. A plain function so that benchmarks can build it directly.
    The image-pooling branch's BN keeps its source statistics (`SourceStatsBN`): batch-1 adaptation works.
    """
    if backbone not in ("resnet50", "resnet101"):
        raise UserError(f"DeepLabV3 backbone must be resnet50 or resnet101, got {backbone!r}.")
    seg = torchvision.models.segmentation
    build = getattr(seg, f"deeplabv3_{backbone}")
    wenum = getattr(seg, f"DeepLabV3_{backbone.capitalize().replace('net', 'Net')}_Weights")
    benum = getattr(torchvision.models, f"{backbone.capitalize().replace('net', 'Net')}_Weights")
    try:
        if pretrained == "coco":
            net = build(weights=wenum.DEFAULT, aux_loss=True)
            net.aux_classifier = None
            net.classifier[4] = nn.Conv2d(256, num_classes, 1)
        elif pretrained in ("imagenet", "none"):
            bw = benum.IMAGENET1K_V1 if pretrained == "imagenet" else None
            net = build(weights=None, weights_backbone=bw, num_classes=num_classes, aux_loss=False)
        else:
            raise UserError(f"DeepLabV3 option pretrained must be none, imagenet or coco, got {pretrained!r}.")
    except (OSError, RuntimeError) as e:  # URLError is an OSError: offline
        raise UserError(
            f"Could not get torchvision's {pretrained} weights for deeplabv3_{backbone} ({e}). Offline, download "
            f"them elsewhere into {torch.hub.get_dir()}/checkpoints, or use --set model.pretrained=none with "
            f"--set model.weights=PATH."
        ) from None
    _fix_image_pooling(net)
    return Normalized(OutOnly(net), IMAGENET_MEAN, IMAGENET_STD)


def _deeplabv3_factory(backbone: str):
    def factory(
        spec,
        ctx: ModelContext,
        *,
        weights: str | None = None,
        pretrained: str = "none",
        inference: str = "whole",
        size: Any = None,
        crop: Any = None,
        stride: Any = None,
    ) -> nn.Module:
        model = deeplabv3(backbone, spec.num_classes, pretrained)
        info: dict[str, Any] = {"pretrained": pretrained}
        if weights:
            info.update(weights=weights, sha256=_load_file(model.model.net, weights))
        return describe(DenseInference(model, inference, size, crop, stride), inference=inference, **info)

    return factory


# --- DeepLabV2-ResNet101 --------------------------------------------------------------------------------------
class ASPPSum(nn.Module):
    """DeepLab v2 ASPP classifier: parallel 3×3 convs (with bias) at dilations 6/12/18/24, outputs summed."""

    def __init__(self, cin: int, num_classes: int, dilations=(6, 12, 18, 24)) -> None:
        super().__init__()
        self.conv2d_list = nn.ModuleList(nn.Conv2d(cin, num_classes, 3, padding=d, dilation=d) for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(conv(x) for conv in self.conv2d_list)


class DeepLabV2(nn.Module):
    """DeepLab v2 (Chen et al., TPAMI 2018) on ResNet-101, output stride 8, as used by AdaptSegNet and most
    GTA5 -> Cityscapes work: Caffe-style bottlenecks (stride in the first 1×1 conv), layer3/layer4 dilated by
    2/4 in every block, ceil-mode max pooling, ASPP-sum head `layer5`. Input: Caffe-normalised BGR."""

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__()
        r = torchvision.models.resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        self.conv1, self.bn1, self.relu = r.conv1, r.bn1, r.relu
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        b = self.layer2[0]
        b.conv1.stride, b.conv2.stride = (2, 2), (1, 1)
        for layer, d in ((self.layer3, 2), (self.layer4, 4)):
            for blk in layer:
                blk.conv2.dilation, blk.conv2.padding = (d, d), (d, d)
        self.layer5 = ASPPSum(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.layer5(x)


def _multi_level(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AdaptSegNet's multi-level checkpoints: `layer6` is the head on layer4 (kept), `layer5` on layer3 (dropped)."""
    if not any(k.startswith("layer6.") for k in sd):
        return sd
    out = {k: v for k, v in sd.items() if not k.startswith("layer5.")}
    return {("layer5." + k[7:] if k.startswith("layer6.") else k): v for k, v in out.items()}


@MODELS.register(
    "deeplabv2-resnet101", "DeepLabV2-ResNet101 (ASPP 6/12/18/24 summed), weights from --set model.weights"
)
def deeplabv2_resnet101(
    spec,
    ctx: ModelContext,
    *,
    weights: str | None = None,
    inference: str = "whole",
    size: Any = None,
    crop: Any = None,
    stride: Any = None,
) -> nn.Module:
    net = DeepLabV2(spec.num_classes)
    path = weights or str(Path(ctx.weights_dir) / "deeplabv2" / "deeplabv2_resnet101_gta5.pth")
    if not Path(path).expanduser().is_file():
        raise UserError(
            f"DeepLabV2-ResNet101 needs source weights (e.g. a GTA5-trained model as in AdaptSegNet, "
            f"github.com/wasidennis/AdaptSegNet): none at {path}. Pass --set model.weights=PATH to a state_dict "
            f"with ResNet-101 keys (conv1, layer1..4) and the ASPP head layer5.conv2d_list.0..3."
        )
    sha = _load_file(net, path, _multi_level)
    model = DenseInference(CaffeInput(net), inference, size, crop, stride)
    return describe(model, weights=path, sha256=sha, inference=inference)


# --- SegFormer (transformers, optional) -----------------------------------------------------------------------
class HFLogits(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=x).logits  # (N,C,H/4,W/4); DenseInference upsamples


@MODELS.register("segformer", "SegFormer via transformers (pip install 'tta-bench[segmentation]')")
def segformer(
    spec,
    ctx: ModelContext,
    *,
    weights: str = "nvidia/segformer-b5-finetuned-cityscapes-1024-1024",
    inference: str = "whole",
    size: Any = None,
    crop: Any = None,
    stride: Any = None,
) -> nn.Module:
    try:
        from transformers import SegformerForSemanticSegmentation
    except ImportError:
        raise UserError(
            "The segformer model needs the optional 'segmentation' extra: pip install 'tta-bench[segmentation]' "
            "(installs transformers)."
        ) from None
    try:
        net = SegformerForSemanticSegmentation.from_pretrained(weights, local_files_only=Path(weights).exists())
    except (OSError, ValueError) as e:
        raise UserError(
            f"Could not load SegFormer weights {weights!r} ({str(e)[:200]}). Offline, download the model folder "
            f"elsewhere and pass --set model.weights=PATH_TO_FOLDER."
        ) from None
    if net.config.num_labels != spec.num_classes:
        raise UserError(f"SegFormer {weights} predicts {net.config.num_labels} classes, the stream {spec.num_classes}.")
    model = DenseInference(Normalized(HFLogits(net), IMAGENET_MEAN, IMAGENET_STD), inference, size, crop, stride)
    return describe(model, weights=weights, inference=inference)


MODELS.add("deeplabv3-resnet50", _deeplabv3_factory("resnet50"), "torchvision DeepLabV3-ResNet50 (dense logits)")
MODELS.add("deeplabv3-resnet101", _deeplabv3_factory("resnet101"), "torchvision DeepLabV3-ResNet101 (dense logits)")
