"""cifar10-c / cifar100-c on small files written in the exact published layouts (CIFAR-C .npy, torchvision
pickles, ImageFolder), plus wrong-layout / missing-file errors and the checksummed download."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tta_bench import corruptions
from tta_bench.data import cifar
from tta_bench.data.cifar import cifar10_c, cifar100_c
from tta_bench.kernel import UserError

REPO = Path(__file__).resolve().parent.parent
BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
N = 8  # test images per severity in the small files (the published files have 10,000)


def write_cifar_c(root: Path, n: int = N, domains=corruptions.BENCHMARK, classes: int = 10) -> np.ndarray:
    """`<root>/<corruption>.npy` uint8 (5n,32,32,3) + `labels.npy` (5n,); pixel [0,0,0] = 10·severity + index."""
    root.mkdir(parents=True, exist_ok=True)
    labels = np.tile(np.arange(n) % classes, 5).astype(np.uint8)  # the published labels are uint8, repeated 5×
    np.save(root / "labels.npy", labels)
    for d in domains:
        a = np.random.default_rng(0).integers(0, 255, (5 * n, 32, 32, 3), dtype=np.uint8)
        for s in range(1, 6):
            a[(s - 1) * n : s * n, 0, 0, 0] = 10 * s + np.arange(n)
        np.save(root / f"{d}.npy", a)
    return labels


def write_pickles(folder: Path, n: int, train: bool = False, hundred: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's `cifar-10-batches-py` (or `cifar-100-python`) layout with `n` test images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
    y = (np.arange(n) * 7) % (100 if hundred else 10)
    key = b"fine_labels" if hundred else b"labels"
    test_name, train_names = (
        ("test", ["train"]) if hundred else ("test_batch", [f"data_batch_{i}" for i in range(1, 6)])
    )
    with open(folder / test_name, "wb") as f:
        pickle.dump({b"data": x, key: y.tolist(), b"batch_label": b"testing batch 1 of 1"}, f)
    if train:
        for i, t in enumerate(train_names):
            with open(folder / t, "wb") as f:
                pickle.dump({b"data": np.full((4, 3072), i, np.uint8), key: [i] * 4}, f)
    return x.reshape(n, 3, 32, 32), y


def write_folder(root: Path, per_class: int = 3) -> None:
    """An ImageFolder of 32×32 PNG test images: `<root>/test/<class>/NNNN.png` (class = brightness 20·c)."""
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for c, name in enumerate(names):
        d = root / "test" / name
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((32, 32, 3), 20 * c + i, np.uint8)).save(d / f"{i:04d}.png")


def test_files_layout_severity_blocks_first_n_and_holdout(tmp_path):
    labels = write_cifar_c(tmp_path / "CIFAR-10-C")
    spec = cifar10_c(data_dir=tmp_path, seed=0, holdout=2)
    assert spec.info["source"] == "files" and spec.domain_names == list(corruptions.BENCHMARK)
    assert spec.num_classes == 10 and spec.severities == (1, 2, 3, 4, 5)
    ds = spec.load("fog", 3, 4)
    assert len(ds) == 4
    x, y = ds[2]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert round(float(x[0, 0, 0]) * 255) == 32  # severity 3 block, third image (channel 0 = R of HWC)
    assert y == int(labels[2 * N + 2])
    assert len(spec.load("fog", 5, None)) == N - 2  # the last `holdout` images are never streamed
    assert spec.source is None and spec.clean is None  # no clean test set to hold out


def test_files_plus_torchvision_pickles_hold_out_clean_and_train_source(tmp_path):
    write_cifar_c(tmp_path / "CIFAR-10-C")
    x, y = write_pickles(tmp_path / "cifar-10-batches-py", N)
    spec = cifar10_c(data_dir=tmp_path, seed=0, holdout=4, clean_size=3)
    # Held-out images split in two disjoint halves: clean (forgetting) first, then source (warm-up, Fisher).
    assert len(spec.source) == 2 and len(spec.clean) == 2 and spec.info["source_split"] == "test-holdout"
    xs, ys = spec.source[0]
    assert torch.equal((xs * 255).round().to(torch.uint8), torch.from_numpy(x[N - 2])) and ys == y[N - 2]
    xc, yc = spec.clean[0]
    assert torch.equal((xc * 255).round().to(torch.uint8), torch.from_numpy(x[N - 4])) and yc == y[N - 4]
    write_pickles(tmp_path / "cifar-10-batches-py", N, train=True)
    spec = cifar10_c(data_dir=tmp_path, seed=0, holdout=3)
    assert len(spec.source) == 20 and spec.info["source_split"] == "train"  # 5 training batches of 4
    assert len(spec.clean) == 3  # with a training set as source, every held-out image may measure forgetting
    assert sorted(set(spec.source.targets.tolist())) == [0, 1, 2, 3, 4]


def test_generated_from_pickles_is_seeded_and_corrupted(tmp_path):
    x, y = write_pickles(tmp_path / "cifar-10-batches-py", 20)
    spec = cifar10_c(data_dir=tmp_path, seed=0, holdout=5)
    assert spec.info["source"] == "generated" and spec.info["clean_set"]["layout"] == "pickles"
    ds = spec.load("gaussian_noise", 5, None)
    assert len(ds) == 15 and np.array_equal(ds.targets, y[:15])
    a = torch.stack([ds[i][0] for i in range(3)])
    clean = torch.from_numpy(x[:3]).float() / 255
    assert (a - clean).abs().mean() > 0.05  # severity-5 noise moved the pixels
    again = torch.stack([spec.load("gaussian_noise", 5, None)[i][0] for i in range(3)])
    assert torch.equal(a, again)  # seeded: same run seed -> same pixels
    other = cifar10_c(data_dir=tmp_path, seed=1, holdout=5).load("gaussian_noise", 5, None)
    assert not torch.equal(a, torch.stack([other[i][0] for i in range(3)]))
    assert len(spec.source) == 3 and np.array_equal(spec.source.targets, y[17:])  # never streamed
    assert len(spec.clean) == 2 and np.array_equal(spec.clean.targets, y[15:17])  # disjoint from the source


def test_generated_from_image_folder_via_clean_dir(tmp_path):
    write_folder(tmp_path / "jpeg")
    spec = cifar10_c(data_dir=tmp_path / "nothing", seed=0, clean_dir=str(tmp_path / "jpeg"), holdout=10)
    assert spec.info["source"] == "generated" and spec.info["clean_set"]["layout"] == "folder"
    ds = spec.load("brightness", 1, None)
    assert len(ds) == 20
    # Labels follow the sorted class folders; the fixed shuffle mixes the classes in the first N.
    assert len(set(ds.targets[:8].tolist())) > 3
    src = torch.stack([spec.source[i][0] for i in range(len(spec.source))])
    for i in range(len(spec.source)):  # held-out clean images keep their pixels and class
        value = round(float(src[i, 0, 0, 0]) * 255)
        assert value // 20 == spec.source.targets[i]


def test_cifar100_pickles(tmp_path):
    x, y = write_pickles(tmp_path / "cifar-100-python", 12, hundred=True)
    spec = cifar100_c(data_dir=tmp_path, seed=0, holdout=2, mode="generated")
    assert spec.num_classes == 100 and np.array_equal(spec.load("fog", 2, None).targets, y[:10])


def test_missing_data_is_a_user_error_naming_the_layout(tmp_path):
    with pytest.raises(UserError, match=r"CIFAR-10-C.*<corruption>\.npy \+ labels\.npy"):
        cifar10_c(data_dir=tmp_path, seed=0, download=False)
    with pytest.raises(UserError, match="no clean CIFAR test set"):
        cifar10_c(data_dir=tmp_path, seed=0, clean_dir=str(tmp_path))
    with pytest.raises(UserError, match="mode=generated needs a clean"):
        cifar10_c(data_dir=tmp_path, seed=0, mode="generated")


def test_wrong_layout_errors(tmp_path):
    root = tmp_path / "CIFAR-10-C"
    write_cifar_c(root, domains=corruptions.BENCHMARK[:-1])
    with pytest.raises(UserError, match=r"jpeg_compression\.npy is missing"):
        cifar10_c(data_dir=tmp_path, seed=0, holdout=1)
    np.save(root / "jpeg_compression.npy", np.zeros((5 * N, 3, 32, 32), np.uint8))  # NCHW: wrong
    with pytest.raises(UserError, match=r"uint8 \(50000, 32, 32, 3\)"):
        cifar10_c(data_dir=tmp_path, seed=0, holdout=1)
    np.save(root / "labels.npy", np.zeros((7, 2)))
    with pytest.raises(UserError, match="labels.npy"):
        cifar10_c(data_dir=tmp_path, seed=0)
    with pytest.raises(UserError, match="holdout"):
        write_cifar_c(root)
        cifar10_c(data_dir=tmp_path, seed=0, holdout=N)
    bad = tmp_path / "bad" / "cifar-10-batches-py"
    bad.mkdir(parents=True)
    (bad / "test_batch").write_bytes(pickle.dumps({b"nope": 1}))
    with pytest.raises(UserError, match="not a torchvision CIFAR pickle"):
        cifar10_c(data_dir=tmp_path / "bad", seed=0)


def _fake_release(tmp_path: Path, monkeypatch, corrupt_md5: bool = False) -> None:
    src = tmp_path / "release"
    write_cifar_c(src / "CIFAR-10-C")
    tar = tmp_path / "CIFAR-10-C.tar"
    with tarfile.open(tar, "w") as t:
        t.add(src / "CIFAR-10-C", arcname="CIFAR-10-C")
    md5 = hashlib.md5(tar.read_bytes()).hexdigest()
    v = dataclasses.replace(cifar.VARIANTS["cifar10-c"], url=tar.as_uri(), md5="0" * 32 if corrupt_md5 else md5)
    monkeypatch.setitem(cifar.VARIANTS, "cifar10-c", v)


def test_download_checks_md5_and_extracts(tmp_path, monkeypatch):
    _fake_release(tmp_path, monkeypatch)
    spec = cifar10_c(data_dir=tmp_path / "data", seed=0, holdout=1)
    assert spec.info["source"] == "files" and (tmp_path / "data" / "CIFAR-10-C" / "labels.npy").is_file()
    assert len(spec.load("snow", 1, None)) == N - 1


def test_download_checksum_mismatch_and_offline(tmp_path, monkeypatch):
    _fake_release(tmp_path, monkeypatch, corrupt_md5=True)
    with pytest.raises(UserError, match="Checksum mismatch"):
        cifar10_c(data_dir=tmp_path / "data", seed=0)
    v = dataclasses.replace(cifar.VARIANTS["cifar10-c"], url=(tmp_path / "absent.tar").as_uri())
    monkeypatch.setitem(cifar.VARIANTS, "cifar10-c", v)
    with pytest.raises(UserError, match=r"Could not download.*offline.*clean_dir"):
        cifar10_c(data_dir=tmp_path / "data2", seed=0)


def test_cli_missing_data_exits_2_without_traceback(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "tta_bench",
        "run",
        "--method",
        "source",
        "--stream",
        "cifar10-c",
        "--model",
        "resnet20-cifar10",
        "--data-dir",
        str(tmp_path),
        "--set",
        "stream.download=false",
        "--out",
        str(tmp_path),
    ]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "CIFAR-10-C not found" in r.stderr + r.stdout and "Traceback" not in r.stderr
