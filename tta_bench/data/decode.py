"""Image files decoded in batches on the run device: ImageNet-C files, natural-shift ImageNet sets.

`EncodedFiles` is an `ImageFiles` (same files, labels, resize/crop) whose batches the harness may finish on the
run device (`tta_bench.streams.batches(defer=True)`, used on CUDA runs):

- `raw(idx)`: the files' bytes (1-D uint8 tensors, read in the loader's workers, pinned by the loader);
- `finish(data, idx, device)`: `torchvision.io.decode_jpeg` on the whole batch (`device='cuda'`: nvjpeg), then
  per image the standard eval transform (shorter side -> `resize`, bilinear with antialiasing, centre `crop`),
  skipped for images already `crop`×`crop` (published ImageNet-C); other files are decoded on the CPU by Pillow
  with `folders.rgb_image`'s mode conversion (16-bit, palette, transparency: the same pixels as on CPU runs).

On CPU runs the loader decodes with Pillow as before (`ImageFiles`); `load_batch(idx)` is that path for a batch.
Measured on the 1,000 JPEGs of ../shared/data/imagenet-sample: torchvision's CPU decode equals Pillow's exactly,
and the resize+crop here equals `folders.resize_crop` exactly on CPU (tests/test_decode.py allows 1 grey level).
On CUDA, nvjpeg's IDCT and chroma upsampling differ from libjpeg-turbo's by a grey level or two on some pixels:
decoded images are not bit-identical between CPU and CUDA runs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from tta_bench.data.folders import ImageFiles, image_errors, rgb_image

JPEG_MAGIC = b"\xff\xd8"


def read_bytes(path: Path) -> torch.Tensor:
    """A file's bytes as a 1-D uint8 tensor."""
    return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)


def eval_size(h: int, w: int, resize: int, crop: int) -> tuple[int, int]:
    """(new h, new w) of `folders.resize_crop`: shorter side -> `resize`, never below `crop`."""
    s = resize / min(w, h)
    return max(crop, round(h * s)), max(crop, round(w * s))


def resize_crop_tensor(img: torch.Tensor, resize: int | None, crop: int | None) -> torch.Tensor:
    """(3,H,W) uint8 -> the eval transform of `folders.read_u8` (unchanged when already crop×crop or no crop)."""
    if crop is None or tuple(img.shape[-2:]) == (crop, crop):
        return img
    h, w = img.shape[-2:]
    nh, nw = eval_size(h, w, resize or crop, crop)
    if img.device.type == "cpu":  # torchvision's uint8 kernel: Pillow's antialiased bilinear
        import torchvision.transforms.v2.functional as TF

        r = TF.resize(img, [nh, nw], antialias=True)
    else:
        r = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        r = r[0].round_().clamp_(0, 255).to(torch.uint8)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return r[:, top : top + crop, left : left + crop]


def decode_batch(
    data: Sequence[torch.Tensor], device: torch.device | str = "cpu", resize: int | None = 256,
    crop: int | None = 224, names: Sequence[Path] | None = None,
) -> list[torch.Tensor]:  # fmt: skip
    """Encoded images -> (3,H,W) uint8 RGB on `device`, eval-transformed; JPEGs decoded together (nvjpeg on CUDA)."""
    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(data)
    jpeg = [i for i, d in enumerate(data) if bytes(d[:2].tolist()) == JPEG_MAGIC]
    if jpeg:
        try:
            imgs = decode_jpeg([data[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        except (RuntimeError, ValueError):  # a damaged file (or a mode nvjpeg lacks): one at a time, on the CPU
            imgs = [_decode_one(data[i], names[i] if names else None).to(device) for i in jpeg]
        for i, im in zip(jpeg, imgs):
            out[i] = im
    for i in range(len(data)):
        if out[i] is None:
            out[i] = _decode_one(data[i], names[i] if names else None).to(device)
    return [resize_crop_tensor(im, resize, crop) for im in out]


def _decode_one(data: torch.Tensor, name: Path | None) -> torch.Tensor:
    """A file that is not a JPEG (or one torchvision refused) decoded by Pillow with `folders.rgb_image`'s conversion,
    so every pixel mode gives the pixels a CPU run gets (torchvision's RGB decode would hand back 16-bit samples or
    drop transparency). A damaged file is a UserError naming it."""
    raw = data.numpy().tobytes()
    where = name if name is not None else "(an image in memory)"
    with image_errors(where), Image.open(io.BytesIO(raw)) as im:
        return torch.from_numpy(np.array(rgb_image(im, where, data=raw), dtype=np.uint8)).permute(2, 0, 1)


class EncodedFiles(ImageFiles):
    """`ImageFiles` whose batches can be decoded and transformed on the run device (see the module docstring)."""

    def raw(self, idx) -> list[torch.Tensor]:
        out = []
        for i in np.asarray(idx, dtype=np.int64).tolist():
            with image_errors(self.files[i]):
                out.append(read_bytes(self.files[i]))
        return out

    def load_batch(self, idx) -> torch.Tensor:
        """The loader-side path (CPU runs): Pillow decode + eval transform, float [0,1]."""
        return self.uint8(idx).float().div_(255.0)

    def finish(self, data, idx, device: torch.device | str | None = None) -> torch.Tensor:
        """Encoded files `data` (positions `idx`) -> (N,3,crop,crop) float [0,1] on `device`."""
        names = [self.files[int(i)] for i in np.asarray(idx, dtype=np.int64).tolist()]
        imgs = decode_batch(data, device or "cpu", self.resize, self.crop, names)
        return torch.stack(imgs).float().div_(255.0)
