"""MedMNIST streams on small files written in the exact MedMNIST `.npz` layout; the binary meter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tta_bench import RunConfig, run
from tta_bench.corruptions.medical import MEDMNIST_C
from tta_bench.kernel import UserError
from tta_bench.metrics import METERS
from tta_bench.streams import STREAMS, build_stream, stream_options


def write_npz(path, n=(40, 10, 12), size=28, rgb=False, classes=2, seed=0, drop=None):
    """A MedMNIST-layout file: {train,val,test}_{images,labels}, uint8 images, (N,1) labels."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        shape = (k, size, size, 3) if rgb else (k, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % classes).astype(np.uint8)[:, None]
    if drop:
        arrays.pop(drop)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def stream(name, tmp_path, **opts):
    return build_stream(name, tmp_path, 0, {**stream_options(name), **opts})


def test_every_2d_classification_flag_has_a_c_stream_and_site_stream():
    names = set(STREAMS)
    for flag in MEDMNIST_C:
        assert (f"{flag}-c" in names) == (flag != "chestmnist")  # chestmnist is multi-label
    assert "pathmnist-site" in names


def test_gray_binary_stream_from_data_dir(tmp_path):
    arrays = write_npz(tmp_path / "medmnist" / "pneumoniamnist.npz")
    spec = stream("pneumoniamnist-c", tmp_path)
    assert spec.domain_names == list(MEDMNIST_C["pneumoniamnist"]) and "gamma_corr_up" in spec.domain_names
    assert spec.task == "binary" and spec.num_classes == 2 and spec.class_names == ["normal", "pneumonia"]
    assert len(spec.source) == 40 and len(spec.clean) == 10 and spec.info["gray"]
    x, y = spec.source[3]
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32 and y == 1
    assert torch.equal(x[0], torch.from_numpy(arrays["train_images"][3]).float() / 255)
    assert torch.equal(x[0], x[2])  # gray replicated to 3 channels
    ds = spec.load("gamma_corr_up", 5, 7)
    assert len(ds) == 7 and list(ds.targets) == list(arrays["test_labels"][:7, 0])
    xc, _ = ds[0]
    clean = torch.from_numpy(arrays["test_images"][0]).float() / 255
    assert torch.allclose(xc[0], torch.round(clean**1.6 * 255) / 255, atol=1e-6)  # gamma 1.6 at severity 5
    again = stream("pneumoniamnist-c", tmp_path).load("gaussian_noise", 3, None)
    assert torch.equal(again[5][0], stream("pneumoniamnist-c", tmp_path).load("gaussian_noise", 3, None)[5][0])


def test_rgb_stream_root_file_folder_and_sizes(tmp_path):
    write_npz(tmp_path / "files" / "bloodmnist_64.npz", size=64, rgb=True, classes=8)
    spec = stream("bloodmnist-c", tmp_path, root=str(tmp_path / "files"), size=64)
    assert spec.task == "classification" and spec.num_classes == 8 and not spec.info["gray"]
    x, _ = spec.load("stain_deposit", 2, 3)[1]
    assert x.shape == (3, 64, 64) and 0 <= x.min() and x.max() <= 1
    spec2 = stream("bloodmnist-c", tmp_path, root=str(tmp_path / "files" / "bloodmnist_64.npz"), size=64)
    assert spec2.info["fingerprint"] == spec.info["fingerprint"]
    with pytest.raises(UserError, match="bloodmnist.npz"):
        stream("bloodmnist-c", tmp_path, root=str(tmp_path / "files"))  # 28 px file is not there
    with pytest.raises(UserError, match="size must be one of"):
        stream("bloodmnist-c", tmp_path, size=32)


def test_pathmnist_site_is_the_test_split(tmp_path):
    arrays = write_npz(tmp_path / "medmnist" / "pathmnist.npz", rgb=True, classes=9)
    spec = stream("pathmnist-site", tmp_path)
    assert spec.domain_names == ["test-centre"] and spec.severities is None
    ds = spec.load("test-centre", None, None)
    assert len(ds) == 12
    assert torch.equal(ds[4][0], torch.from_numpy(arrays["test_images"][4]).permute(2, 0, 1).float() / 255)


def test_wrong_layout_and_missing_file_errors(tmp_path):
    write_npz(tmp_path / "medmnist" / "breastmnist.npz", drop="val_labels")
    with pytest.raises(UserError, match="missing keys \\['val_labels'\\]"):
        stream("breastmnist-c", tmp_path)
    np.savez(tmp_path / "medmnist" / "octmnist.npz", **{k: np.zeros((2, 28, 28), np.float32) for k in
             ("train_images", "val_images", "test_images")}, **{f"{s}_labels": np.zeros((2, 1)) for s in
             ("train", "val", "test")})  # fmt: skip
    with pytest.raises(UserError, match="must be uint8"):
        stream("octmnist-c", tmp_path)
    write_npz(tmp_path / "medmnist" / "retinamnist.npz", rgb=False, classes=5)  # retinamnist is RGB
    with pytest.raises(UserError, match="does not look like retinamnist"):
        stream("retinamnist-c", tmp_path)
    with pytest.raises(UserError, match="dermamnist.npz not found") as e:
        stream("dermamnist-c", tmp_path, download=False)
    assert str(tmp_path / "medmnist") in str(e.value)
    with pytest.raises(UserError, match="neither"):
        stream("dermamnist-c", tmp_path, root=str(tmp_path / "nowhere"))


def test_binary_meter_matches_sklearn():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(300, 2, generator=g), (torch.rand(300, generator=g) < 0.2).long()
    logits[:, 1] += y * 1.0
    dom = torch.arange(300) % 2
    m = METERS["binary"](2, "cpu")
    for a in range(0, 300, 64):
        m.update(logits[a : a + 64], y[a : a + 64], dom[a : a + 64])
    s = m.summary()
    p1, pred = logits.softmax(1)[:, 1].numpy(), logits.argmax(1).numpy()
    assert s["auc"] == pytest.approx(100 * roc_auc_score(y, p1))
    assert s["balanced_error"] == pytest.approx(100 * (1 - balanced_accuracy_score(y, pred)))
    assert s["error"] == pytest.approx(100 * (pred != y.numpy()).mean())
    d1 = m.domain_results()[1]
    k = dom.numpy() == 1
    assert d1["auc"] == pytest.approx(100 * roc_auc_score(y[k], p1[k]))
    assert d1["balanced_error"] == pytest.approx(100 * (1 - balanced_accuracy_score(y[k], pred[k])))


def test_run_reports_balanced_error_and_auc(tmp_path, runs_dir):
    write_npz(tmp_path / "medmnist" / "pneumoniamnist.npz", n=(64, 16, 20))
    cfg = RunConfig(
        method="norm", stream="pneumoniamnist-c", data_dir=str(tmp_path), out=str(runs_dir), batch_size=10,
        limit=10, clean_eval="end", model_opts={"source_epochs": 1, "width": 4}, device="cpu",
    )  # fmt: skip
    res = run(cfg, quiet=True)
    assert {"balanced_error", "auc"} <= set(res.domains.columns) and len(res.domains) == 13
    assert res.summary["task"] == "binary" and res.summary["balanced_error"] is not None
    cfg_json = json.loads((res.folder / "config.json").read_text())
    assert cfg_json["model_info"]["recipe"]["arch"] == "medical-resnet"
    assert cfg_json["stream_info"]["split"] == {"train": 64, "val": 16, "test": 20, "clean": 16}


def test_download_is_md5_checked_and_offline_message(tmp_path, monkeypatch):
    import tta_bench.data.medmnist as med

    good = tmp_path / "src" / "pneumoniamnist.npz"
    write_npz(good)
    meta = {**med.info("pneumoniamnist"), "url": "https://example.invalid/p.npz", "MD5": med.md5_file(good)}
    monkeypatch.setattr(med, "info", lambda flag: meta)
    fetched = []

    def fake_fetch(url, dest, what="file"):  # what tta_bench.kernel.download does, minus the network
        fetched.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(good.read_bytes())
        return dest

    monkeypatch.setattr(med, "fetch", fake_fetch)
    spec = stream("pneumoniamnist-c", tmp_path / "data")
    assert fetched == [meta["url"]] and len(spec.source) == 40
    assert (tmp_path / "data" / "medmnist" / "pneumoniamnist.npz").is_file()
    meta["MD5"] = "0" * 32  # a corrupt download is deleted and reported
    with pytest.raises(UserError, match="MD5 mismatch"):
        stream("pneumoniamnist-c", tmp_path / "other")
    assert not (tmp_path / "other" / "medmnist" / "pneumoniamnist.npz").exists()

    def offline(url, dest, sha256=None, what="file"):
        raise UserError("no network")

    monkeypatch.setattr(med, "fetch", offline)
    with pytest.raises(UserError, match="could not be downloaded") as e:
        stream("pneumoniamnist-c", tmp_path / "third")
    assert str(tmp_path / "third" / "medmnist" / "pneumoniamnist.npz") in str(e.value)
