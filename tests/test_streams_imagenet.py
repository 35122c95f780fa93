"""imagenet-c (published folders / generated from a wnid ImageFolder) and the natural-shift streams, on
small files written in the published layouts; wrong-layout and missing-data errors."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tta_bench.data import imagenet
from tta_bench.data.folders import imagenet_wnids
from tta_bench.data.imagenet import imagenet_c
from tta_bench.data.natural import IMAGENET_A, IMAGENET_R, imagenet_a, imagenet_r, imagenet_sketch, imagenet_v2
from tta_bench.kernel import UserError

WNIDS = ("n01443537", "n01484850", "n12267677")  # in ImageNet-R's 200 (and ImageNet's 1,000)


def jpeg(path: Path, value: int, size=(224, 224)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path, quality=95)


def write_imagenet_c(root: Path, domains=("fog", "snow"), severity: int = 5, per_class: int = 2) -> list[str]:
    """`<root>/<corruption>/<severity>/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG`; returns the relative ids."""
    ids = [f"{w}/ILSVRC2012_val_{100 * k + i:08d}.JPEG" for k, w in enumerate(WNIDS) for i in range(per_class)]
    for d in domains:
        for j, r in enumerate(ids):
            jpeg(root / d / str(severity) / r, 10 * j)
    return ids


def test_robustbench_subset_ids_ship_in_the_wheel():
    ids = imagenet.subset_ids()
    assert len(ids) == 5000 and len(set(ids)) == 5000
    assert all(re.fullmatch(r"n\d{8}/ILSVRC2012_val_\d{8}\.JPEG", i) for i in ids)
    classes = {i.split("/")[0] for i in ids}  # a random sample: 997 of the 1,000 classes occur
    assert classes <= set(imagenet_wnids()) and len(classes) > 990
    assert imagenet_wnids()[0] == "n01440764" and len(imagenet_wnids()) == 1000


def test_files_all_samples(tmp_path):
    write_imagenet_c(tmp_path / "ImageNet-C")
    spec = imagenet_c(data_dir=tmp_path, seed=0, samples="all")
    assert spec.info["source"] == "files" and spec.info["samples"] == 6 and spec.num_classes == 1000
    ds = spec.load("fog", 5, None)
    assert len(ds) == 6 and len(spec.load("fog", 5, 4)) == 4
    x, y = ds[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    idx = {w: imagenet_wnids().index(w) for w in WNIDS}
    assert sorted(ds.targets.tolist()) == sorted([idx[w] for w in WNIDS] * 2)
    with pytest.raises(UserError, match="incomplete"):
        spec.load("fog", 3, None)  # severity 3 was not written


def test_files_fingerprint_changes_when_images_are_replaced(tmp_path):
    ids = write_imagenet_c(tmp_path / "ImageNet-C")
    fp = imagenet_c(data_dir=tmp_path, seed=0, samples="all").data_fingerprint
    assert imagenet_c(data_dir=tmp_path, seed=0, samples="all").data_fingerprint == fp
    time.sleep(0.05)  # past the file system's timestamp granularity
    target = tmp_path / "ImageNet-C" / "snow" / "5" / ids[0]
    jpeg(target.with_name("new.JPEG"), 200)
    os.replace(target.with_name("new.JPEG"), target)  # as a re-extracted or regenerated image lands
    assert imagenet_c(data_dir=tmp_path, seed=0, samples="all").data_fingerprint != fp


def test_files_default_subset_in_id_list_order(tmp_path, monkeypatch):
    ids = write_imagenet_c(tmp_path / "ImageNet-C")
    chosen = [ids[3], ids[0], ids[5]]
    monkeypatch.setattr(imagenet, "subset_ids", lambda: chosen)
    spec = imagenet_c(data_dir=tmp_path, seed=0)
    ds = spec.load("snow", 5, None)
    assert [f"{p.parent.name}/{p.name}" for p in ds.files] == chosen
    assert round(float(ds[0][0].mean()) * 255) == pytest.approx(30, abs=2)  # ids[3] was written with value 30
    monkeypatch.setattr(imagenet, "subset_ids", lambda: chosen + [f"{WNIDS[0]}/ILSVRC2012_val_00099999.JPEG"])
    with pytest.raises(UserError, match="1 of 4 images missing"):
        imagenet_c(data_dir=tmp_path, seed=0).load("snow", 5, None)


def test_generated_from_val_folder_seeded_per_image(tmp_path):
    for k, w in enumerate(WNIDS):
        for i in range(2):
            jpeg(tmp_path / "val" / w / f"{w}_{i}.JPEG", 60 + 40 * k, size=(300, 260))
    spec = imagenet_c(data_dir=tmp_path / "none", seed=0, clean_dir=str(tmp_path / "val"))
    assert spec.info["source"] == "generated" and spec.info["samples"] == "all-6" and spec.clean is None
    ds = spec.load("gaussian_noise", 5, None)
    x0 = ds[0][0]
    assert x0.shape == (3, 224, 224)  # resized 256 / centre-cropped 224
    assert x0.std() > 0.05  # a uniform image got noise
    later = [ds[i][0] for i in (3, 2, 1, 0)][-1]
    assert torch.equal(x0, later)  # per-image seeds: the visiting order does not change the pixels
    other = imagenet_c(data_dir=tmp_path, seed=1, clean_dir=str(tmp_path / "val")).load("gaussian_noise", 5, None)
    assert not torch.equal(x0, other[0][0])


def test_generated_uses_the_subset_when_present_and_holds_out_the_rest(tmp_path, monkeypatch):
    ids = [f"{w}/ILSVRC2012_val_{i:08d}.JPEG" for i, w in enumerate(WNIDS * 2)]
    for i, r in enumerate(ids):
        jpeg(tmp_path / "val" / r, 5 * i)
    monkeypatch.setattr(imagenet, "subset_ids", lambda: ids[:4])
    spec = imagenet_c(data_dir=tmp_path, seed=0, clean_dir=str(tmp_path / "val"))
    assert spec.info["samples"] == "robustbench-5000" and len(spec.load("fog", 1, None)) == 4
    assert len(spec.clean) == 2 and {f.name for f in spec.clean.files} == {Path(r).name for r in ids[4:]}


def test_imagenet_c_missing_and_wrong_layout(tmp_path):
    with pytest.raises(UserError, match=r"zenodo\.org/records/2235448.*clean_dir"):
        imagenet_c(data_dir=tmp_path, seed=0)
    with pytest.raises(UserError, match="not found"):
        imagenet_c(data_dir=tmp_path, seed=0, mode="files")
    jpeg(tmp_path / "val" / "cats" / "a.JPEG", 1)
    with pytest.raises(UserError, match="not an ImageNet wnid"):
        imagenet_c(data_dir=tmp_path, seed=0, clean_dir=str(tmp_path / "val"))
    with pytest.raises(UserError, match="samples"):
        imagenet_c(data_dir=tmp_path, seed=0, samples="most")


def test_imagenet_r_and_a_class_subsets(tmp_path):
    assert len(IMAGENET_R) == len(IMAGENET_A) == 200 and set(IMAGENET_R) != set(IMAGENET_A)
    for k, w in enumerate(WNIDS):
        jpeg(tmp_path / "imagenet-r" / w / f"art_{k}.jpg", 30 * k, size=(256, 300))
    spec = imagenet_r(data_dir=tmp_path, seed=0)
    assert spec.severities is None and spec.domain_names == ["imagenet-r"]
    subset = spec.class_subsets["imagenet-r"]
    assert len(subset) == 200 and all(imagenet_wnids()[i] in IMAGENET_R for i in subset)
    ds = spec.load("imagenet-r", None, None)
    assert len(ds) == 3 and ds[0][0].shape == (3, 224, 224)
    assert set(ds.targets.tolist()) == {imagenet_wnids().index(w) for w in WNIDS}
    jpeg(tmp_path / "imagenet-r" / "n01440764" / "x.jpg", 1)  # tench: one of ImageNet's, not ImageNet-R's
    with pytest.raises(UserError, match="not one of its 200 classes"):
        imagenet_r(data_dir=tmp_path, seed=0)
    with pytest.raises(UserError, match=r"imagenet-a not found.*imagenet-a\.tar"):
        imagenet_a(data_dir=tmp_path, seed=0)


def test_imagenet_v2_and_sketch_layouts(tmp_path):
    v2 = tmp_path / "imagenetv2-matched-frequency-format-val"
    for c in (0, 7, 999):
        jpeg(v2 / str(c) / "abc.jpeg", c % 255)
    spec = imagenet_v2(data_dir=tmp_path, seed=0)
    assert sorted(spec.load("imagenet-v2", None, None).targets.tolist()) == [0, 7, 999] and not spec.class_subsets
    jpeg(v2 / "1000" / "x.jpeg", 1)
    with pytest.raises(UserError, match="class index 0..999"):
        imagenet_v2(data_dir=tmp_path, seed=0)
    jpeg(tmp_path / "sk" / "n01440764" / "sketch_1.JPEG", 9)
    spec = imagenet_sketch(data_dir=tmp_path, seed=0, root=str(tmp_path / "sk"))
    assert spec.load("imagenet-sketch", None, None).targets.tolist() == [0]
    with pytest.raises(UserError, match="no class sub-folders"):
        imagenet_sketch(data_dir=tmp_path, seed=0, root=str(tmp_path / "sk" / "n01440764"))


def test_imagenet_r_runner_mask_covers_the_200_classes(tmp_path):
    from tta_bench import streams as st
    from tta_bench.runner import class_mask

    jpeg(tmp_path / "imagenet-a" / IMAGENET_A[0] / "a.jpg", 10)
    spec = imagenet_a(data_dir=tmp_path, seed=0)
    (seg,) = st.schedule("continual", spec, 5)
    mask = class_mask(spec, seg, torch.device("cpu"))
    assert mask.shape == (1000,) and int(mask.sum()) == 200
    assert {imagenet_wnids()[i] for i in mask.nonzero().flatten().tolist()} == set(IMAGENET_A)
    assert seg.severity is None  # natural shifts have no severity levels
