"""Base-to-new and domain-shift streams (tta_bench/data/b2n.py): split bookkeeping, real on-disk layouts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tta_bench import streams as st
from tta_bench.data.b2n import b2n_summary, base_new, cifar100_b2n, digits_b2n, few_shot, folder_b2n, imagenet_ds
from tta_bench.kernel import UserError


def test_split_and_shots():
    assert base_new(10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert base_new(5) == ([0, 1, 2], [3, 4])  # ceil(C/2) base classes, as CoOp's subsample_classes
    labels = np.repeat(np.arange(4), 20)
    idx = few_shot(labels, [0, 2], 16, seed=0)
    assert np.bincount(labels[idx], minlength=4).tolist() == [16, 0, 16, 0]
    assert np.array_equal(idx, few_shot(labels, [0, 2], 16, seed=0))
    assert not np.array_equal(idx, few_shot(labels, [0, 2], 16, seed=1))
    assert few_shot(np.array([0, 0, 1]), [0, 1], 16, 0).tolist() == [0, 1, 2]  # fewer than shots: all
    s = b2n_summary({"base": 20.0, "new": 40.0})
    assert s["base_acc"] == 80.0 and s["new_acc"] == 60.0 and s["harmonic_mean"] == pytest.approx(2 * 80 * 60 / 140)


def test_digits_b2n_bookkeeping():
    spec = digits_b2n(seed=0)
    assert spec.class_names == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert spec.domain_names == ["base", "new"] and st.default_model("digits-b2n") == "clip-tiny"
    assert spec.class_subsets == {"base": [0, 1, 2, 3, 4], "new": [5, 6, 7, 8, 9]}
    assert np.bincount(spec.source.targets, minlength=10).tolist() == [16] * 5 + [0] * 5
    base, new = spec.load("base", None, None), spec.load("new", None, None)
    assert set(base.targets.tolist()) == {0, 1, 2, 3, 4} and set(new.targets.tolist()) == {5, 6, 7, 8, 9}
    assert len(base) + len(new) == 600  # the digits target split
    assert len(spec.load("new", None, 50)) == 50
    x, y = base[0]
    assert x.shape == (3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert not np.array_equal(digits_b2n(seed=1).source.items, spec.source.items)  # shots follow the seed


def test_cifar100_b2n_reads_the_python_pickles(tmp_path: Path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(0)
    for part, per in (("train", 3), ("test", 2)):
        labels = np.repeat(np.arange(100), per).tolist()
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(d / part, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * len(labels)}, f)
        if part == "test":
            test_data, test_labels = data, labels
    names = [f"name_{i}".encode() for i in range(100)]
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": []}, f)
    spec = cifar100_b2n(data_dir=tmp_path, seed=0, shots=2)
    assert spec.class_names[7] == "name 7" and spec.num_classes == 100
    assert np.bincount(spec.source.targets, minlength=100).tolist() == [2] * 50 + [0] * 50
    new = spec.load("new", None, None)
    assert len(new) == 100 and set(new.targets.tolist()) == set(range(50, 100))
    x, y = new[0]
    row = (x * 255).round().byte().reshape(-1).numpy()  # CHW, row-major: the pickle's 3072 layout
    i = int(np.flatnonzero((test_data == row).all(1))[0])
    assert test_labels[i] == y  # pixels and label come from the same pickle row (CHW row-major layout)
    with pytest.raises(UserError, match="cifar-100-python"):
        cifar100_b2n(data_dir=tmp_path / "missing", seed=0)


def _png(path: Path, value: int, size=(20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_folder_b2n(tmp_path: Path):
    for split, n in (("train", 3), ("val", 2)):
        for c, cls in enumerate(["apple_pie", "bee", "cat", "dog", "eel"]):
            for j in range(n):
                _png(tmp_path / split / cls / f"{j}.png", 10 * c)
    spec = folder_b2n(seed=0, shots=2, root=str(tmp_path), image_size=16)
    assert spec.class_names == ["apple pie", "bee", "cat", "dog", "eel"]
    assert spec.class_subsets == {"base": [0, 1, 2], "new": [3, 4]}
    assert np.bincount(spec.source.targets, minlength=5).tolist() == [2, 2, 2, 0, 0]
    x, y = spec.load("new", None, None)[0]
    assert x.shape == (3, 16, 16) and torch.allclose(x, torch.full_like(x, 10 * y / 255), atol=1e-6)
    with pytest.raises(UserError, match="stream.root"):
        folder_b2n(seed=0)


def test_imagenet_ds_layouts(tmp_path: Path):
    from tta_bench.data.folders import wnid_index

    wnids = ["n01443537", "n01498041", "n01531178", "n01534433"]  # in ImageNet-R's 200; the last three in -A's
    idx = [wnid_index()[w] for w in wnids]
    for i, w in enumerate(wnids):
        for j in range(3):
            _png(tmp_path / "imagenet" / "train" / w / f"{w}_{j}.JPEG", i)
        _png(tmp_path / "imagenet" / "val" / w / "v.png", i)
        _png(tmp_path / "imagenetv2-matched-frequency-format-val" / str(idx[i]) / "a.jpeg", i)
        _png(tmp_path / "sketch" / w / "s.jpg", i)
    for w in wnids[1:3]:
        _png(tmp_path / "imagenet-r" / w / "r.jpg", 0)
        _png(tmp_path / "imagenet-a" / w / "a.jpg", 0)
    spec = imagenet_ds(data_dir=tmp_path, seed=0, shots=2, image_size=8)
    assert spec.domain_names == ["imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"]
    assert spec.num_classes == 1000 and spec.class_names[idx[0]] == "goldfish"  # CLIP names in wnid order
    assert len(spec.class_subsets["imagenet-r"]) == 200 and len(spec.class_subsets["imagenet-a"]) == 200
    assert set(idx[1:]) <= set(spec.class_subsets["imagenet-a"])
    assert sorted(set(spec.source.targets.tolist())) == idx and len(spec.source) == 8  # 2 shots x 4 classes
    assert sorted(spec.load("imagenet-v2", None, None).targets.tolist()) == idx
    assert sorted(spec.load("imagenet", None, None).targets.tolist()) == idx
    assert len(spec.load("imagenet-r", None, 1)) == 1
    errors = {"imagenet": 30.0, "imagenet-v2": 40, "imagenet-sketch": 50, "imagenet-a": 60, "imagenet-r": 70}
    assert spec.summarize(errors) == {"source_acc": 70.0, "target_acc": 45.0}
    with pytest.raises(UserError, match="unknown domain"):
        imagenet_ds(data_dir=tmp_path, seed=0, domains="imagenet,imagenet-x")


def test_imagenet_b2n_layout_and_missing_data(tmp_path: Path):
    from tta_bench.data.b2n import imagenet_b2n

    with pytest.raises(UserError, match=r"train/<class>"):
        imagenet_b2n(data_dir=tmp_path, seed=0)
    for split in ("train", "val"):
        for i, w in enumerate(["n01440764", "n01443537"]):
            _png(tmp_path / "imagenet" / split / w / f"{w}_0.JPEG", i)
    spec = imagenet_b2n(data_dir=tmp_path, seed=0, image_size=8)
    assert spec.class_names == ["n01440764", "n01443537"]  # CLIP's names only for the full 1,000 classes
    assert spec.class_subsets == {"base": [0], "new": [1]} and spec.source.targets.tolist() == [0]
