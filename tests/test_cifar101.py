"""CIFAR-10.1 (tta_bench/data/cifar101.py) on generated stand-ins of its .npy layout: the stream's images and labels,
the clean/source split from a clean CIFAR-10 test set, bad files, and the checked download (labels: SHA-256, data:
git blob id) from a local file:// mirror."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tta_bench.data import cifar101
from tta_bench.kernel import UserError
from tta_bench.streams import build_stream, stream_options


def write_cifar101(folder: Path, n: int = 40, version: str = "v6", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.int32)  # int32 as published
    np.save(folder / f"cifar10.1_{version}_data.npy", x)
    np.save(folder / f"cifar10.1_{version}_labels.npy", y)
    return x, y


def write_cifar10_test(data_dir: Path, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(7).integers(0, 256, (n, 3072), dtype=np.uint8)
    y = np.sort(np.arange(n) % 10)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": x, b"labels": y.tolist()}, f)
    return x, y


def build(data_dir: Path, **opts):
    return build_stream("cifar10.1", data_dir, 0, {**stream_options("cifar10.1"), **opts})


def clean_split_standin(tmp: Path) -> dict:
    """tests/test_clean_splits.py's stand-in: CIFAR-10.1 files and a clean CIFAR-10 test pickle in the data dir."""
    x, _ = write_cifar101(tmp / "CIFAR-10.1", n=30)
    write_cifar10_test(tmp, n=60)
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # the stream's (3,32,32) uint8 images, by pixels
    shown = [hashlib.sha1(a.contiguous().numpy().tobytes()).hexdigest() for a in images]
    return {"data_dir": tmp, "opts": {"clean_size": 20, "download": False}, "shown": shown}


def test_stream_images_labels_and_split(tmp_path):
    x, y = write_cifar101(tmp_path / "CIFAR-10.1")
    cx, cy = write_cifar10_test(tmp_path)
    spec = build(tmp_path, clean_size=20, download=False)
    assert spec.domain_names == ["cifar10.1-v6"] and spec.num_classes == 10 and spec.severities is None
    ds = spec.load("cifar10.1-v6", None, None)
    assert len(ds) == 40 and torch.equal(ds.x, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == y.tolist()
    img, label = ds[3]
    assert img.shape == (3, 32, 32) and img.max() <= 1.0 and label == 3
    assert len(spec.load("cifar10.1-v6", None, 7)) == 7
    # clean: the first 20 CIFAR-10 test images; source: the other 40 (no training pickles here)
    as_u8 = torch.from_numpy(cx.reshape(-1, 3, 32, 32))
    assert torch.equal(spec.clean.x, as_u8[:20]) and torch.equal(spec.source.x, as_u8[20:])
    assert spec.clean.y.tolist() == cy[:20].tolist()
    # the fingerprint follows the files: other data, another fingerprint
    write_cifar101(tmp_path / "CIFAR-10.1", seed=1)
    assert build(tmp_path, clean_size=20, download=False).data_fingerprint != spec.data_fingerprint


def test_no_clean_set_and_version_v4(tmp_path):
    write_cifar101(tmp_path / "other", n=21, version="v4")
    spec = build(tmp_path, root=str(tmp_path / "other"), version="v4", download=False)
    assert spec.domain_names == ["cifar10.1-v4"] and len(spec.load("cifar10.1-v4", None, None)) == 21
    assert spec.source is None and spec.clean is None


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda f: np.save(f / "cifar10.1_v6_data.npy", np.zeros((40, 3, 32, 32), np.uint8)), "NHWC"),
        (lambda f: np.save(f / "cifar10.1_v6_labels.npy", np.arange(40)), "outside 0..9"),
        (lambda f: np.save(f / "cifar10.1_v6_labels.npy", np.zeros(39, np.int32)), "integer labels"),
        (lambda f: (f / "cifar10.1_v6_labels.npy").unlink(), "not found"),
        (lambda f: (f / "cifar10.1_v6_data.npy").write_bytes(b"\x93NUMPY garbage"), "truncated"),
    ],
)
def test_bad_files(tmp_path, damage, words):
    write_cifar101(tmp_path / "CIFAR-10.1")
    damage(tmp_path / "CIFAR-10.1")
    with pytest.raises(UserError, match=words):
        build(tmp_path, download=False)


def test_bad_options(tmp_path):
    write_cifar101(tmp_path / "CIFAR-10.1")
    with pytest.raises(UserError, match="versions v6, v4"):
        build(tmp_path, version="v7", download=False)
    with pytest.raises(UserError, match="no clean CIFAR-10 test set"):
        build(tmp_path, clean_dir=str(tmp_path / "nowhere"), download=False)


def test_git_blob_id_matches_git(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    write_cifar101(tmp_path)
    f = tmp_path / "cifar10.1_v6_data.npy"
    want = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True, check=True).stdout.strip()
    assert cifar101.git_blob_sha1(f) == want


def test_checked_download(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    write_cifar101(mirror)
    labels_sha = hashlib.sha256((mirror / "cifar10.1_v6_labels.npy").read_bytes()).hexdigest()
    blob = cifar101.git_blob_sha1(mirror / "cifar10.1_v6_data.npy")
    monkeypatch.setattr(cifar101, "BASE_URL", mirror.as_uri() + "/")
    monkeypatch.setattr(cifar101, "CHECKS", {"v6": (labels_sha, blob)})
    spec = build(tmp_path / "data")
    assert (tmp_path / "data" / "CIFAR-10.1" / "cifar10.1_v6_data.npy").is_file()
    assert len(spec.load("cifar10.1-v6", None, None)) == 40
    # a data file that is not the repository's: refused and deleted (never read by the next run)
    monkeypatch.setattr(cifar101, "CHECKS", {"v6": (labels_sha, "0" * 40)})
    with pytest.raises(UserError, match="git blob id"):
        build(tmp_path / "data2")
    assert not (tmp_path / "data2" / "CIFAR-10.1" / "cifar10.1_v6_data.npy").exists()
    # a labels file that is not the repository's: the kernel's SHA-256 check names it
    monkeypatch.setattr(cifar101, "CHECKS", {"v6": ("f" * 64, blob)})
    with pytest.raises(UserError, match="Checksum mismatch"):
        build(tmp_path / "data3")
