"""Held-out clean splits (issue #24, part 1), one test per registered stream on small generated stand-ins.

For every stream: its declaration (`streams.CleanSplit`, shown by `list streams -v`) agrees with the spec it builds;
where the declaration says "disjoint", no clean image is among the images the stream shows (files by path, tensors
by their pixels); and the runner's clean batches (`runner.clean_loader`) mix the classes of a class-sorted layout.
Also: `--clean-eval end` leaves the per-domain clean error empty, and config.json records the clean split.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_camelyon import write_wilds
from test_cifar101 import clean_split_standin as _cifar101
from test_confounded import write_split
from test_domainnet126 import clean_split_standin as _domainnet126
from test_segmentation_data import make_acdc, make_camvid, make_cityscapes
from test_waterbirds import write_waterbirds
from test_yearbook import clean_split_standin as _yearbook
from torch.utils.data import Dataset

from tta_bench import RunConfig, run
from tta_bench.data import ccc as ccc_data
from tta_bench.data import digits, imagenet, medmnist
from tta_bench.rundir import load_config
from tta_bench.runner import clean_loader
from tta_bench.streams import STREAMS, build_stream, clean_split, stream_options

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCH = 8


# --- stand-ins: class-sorted where the layout allows it --------------------------------------------------------------
def _img(path: Path, value, size=(32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)  # distinct pixels per file
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _cifar_pickles(folder: Path, n: int = 100, hundred: bool = False) -> None:
    """A test pickle whose labels are sorted (class-sorted layout), distinct random images."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = 100 if hundred else 10
    x = np.random.default_rng(1).integers(0, 256, (n, 3072), dtype=np.uint8)
    y = np.sort(np.arange(n) % classes)
    name, key = ("test", b"fine_labels") if hundred else ("test_batch", b"labels")
    with open(folder / name, "wb") as f:
        pickle.dump({b"data": x, key: y.tolist()}, f)


def _cifar(name: str):
    def build(tmp: Path):
        folder = tmp / ("cifar-100-python" if name == "cifar100-c" else "cifar-10-batches-py")
        _cifar_pickles(folder, n=200 if name == "cifar100-c" else 100, hundred=name == "cifar100-c")
        return {"data_dir": tmp, "opts": {"mode": "generated", "holdout": 40, "clean_size": 20}}

    return build


def _ccc_cifar(tmp: Path):
    for c, cls in enumerate(CIFAR10):  # an ImageFolder: class-sorted file order
        for i in range(20):
            _img(tmp / "pool" / cls / f"{i:04d}.png", c)
    return {"opts": {"clean_dir": str(tmp / "pool"), "clean_size": 20}}


def _ccc_imagenet(tmp: Path):
    for w in imagenet.imagenet_wnids():  # one tiny image per class (paths only: nothing is read here)
        _img(tmp / "val" / w / f"{w}_0.JPEG", 0, size=(8, 8))
    return {"opts": {"clean_dir": str(tmp / "val"), "clean_size": 50}}


def _imagenet_c(tmp: Path, monkeypatch):
    wnids = list(imagenet.imagenet_wnids())[:4]
    ids = [f"{w}/ILSVRC2012_val_{10 * k + i:08d}.JPEG" for k, w in enumerate(wnids) for i in range(6)]
    for r in ids:
        _img(tmp / "val" / r, 0, size=(8, 8))
    monkeypatch.setattr(imagenet, "subset_ids", lambda: ids[::2])  # the stream shows half; the rest is held out
    return {"opts": {"clean_dir": str(tmp / "val"), "clean_size": 12}}


def _medmnist(flag: str):
    def build(tmp: Path):
        meta = medmnist.info(flag) or {"n_channels": 1}
        rgb = meta["n_channels"] == 3
        rng = np.random.default_rng(0)
        arrays = {}
        for split, k in (("train", 40), ("val", 24), ("test", 16)):
            arrays[f"{split}_images"] = rng.integers(0, 256, (k, 28, 28, 3) if rgb else (k, 28, 28), dtype=np.uint8)
            arrays[f"{split}_labels"] = np.sort(np.arange(k) % 2).astype(np.uint8)[:, None]  # class-sorted
        path = tmp / "medmnist" / f"{flag}.npz"
        path.parent.mkdir(parents=True)
        np.savez_compressed(path, **arrays)
        shown = [_key(a) for a in medmnist.read_npz(path)["test_images"]]  # the stream corrupts the test split
        return {"data_dir": tmp, "opts": {"download": False}, "shown": shown}

    return build


def _camelyon(tmp: Path):
    base, meta = write_wilds(tmp, per_center=8)
    meta["split"] = (meta.index % 8 >= 4).astype(int)  # half of each hospital's patches: in-distribution val
    meta.to_csv(base / "metadata.csv")
    return {"opts": {"root": str(tmp), "clean_size": 12}}


def _confounded(tmp: Path):
    return {"opts": {"root": str(write_split(tmp, n=8)), "clean_fraction": 0.5}}


def _cityscapes_acdc(tmp: Path):
    make_acdc(tmp / "acdc")
    make_cityscapes(tmp / "cityscapes", "train", 2)
    make_cityscapes(tmp / "cityscapes", "val", 6)
    return {"opts": {"root": str(tmp / "acdc"), "source_root": str(tmp / "cityscapes"), "clean_n": 4}}


def _camvid(tmp: Path):
    make_camvid(tmp / "camvid", 6)
    make_camvid(tmp / "camvid", 6, split="val")
    return {"opts": {"root": str(tmp / "camvid"), "clean_n": 4}}


def _digits(tmp: Path):
    x, _ = digits.digits_32()
    return {"shown": [_key(x[i]) for i in digits.split()["target"]]}  # the stream corrupts the target split


STANDINS = {
    "digits-c": _digits,
    "coloredmnist": _digits,  # the same fixed split, coloured (its datasets' `x` are the grey digits)
    "digits-ls": _digits,
    "waterbirds": lambda tmp: {"opts": {"root": str(write_waterbirds(tmp))}},
    "yearbook": _yearbook,
    "cifar10-c": _cifar("cifar10-c"),
    "cifar10.1": _cifar101,
    "domainnet126": _domainnet126,
    "cifar100-c": _cifar("cifar100-c"),
    "ccc-cifar": _ccc_cifar,
    "ccc": _ccc_imagenet,
    "imagenet-c": _imagenet_c,
    "camelyon17": _camelyon,
    "confounded": _confounded,
    "cityscapes-acdc": _cityscapes_acdc,
    "camvid-c": _camvid,
    "pathmnist-site": _medmnist("pathmnist"),
    **{name: _medmnist(name[:-2]) for name in STREAMS.names() if name.endswith("mnist-c")},
}
# Streams that declare no clean split: nothing to hold out (checked by their declaration; digits-b2n is built).
NO_CLEAN = {
    "imagenet-r", "imagenet-a", "imagenet-sketch", "imagenet-v2", "gta5-cityscapes",
    "digits-b2n", "cifar100-b2n", "folder-b2n", "imagenet-b2n", "imagenet-ds",
}  # fmt: skip


# --- identities of images: paths for files, pixels for tensors -------------------------------------------------------
def _key(t: torch.Tensor) -> str:
    return hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()


def identities(ds) -> set[str] | None:
    """What names each image of `ds` (before any corruption), or None when `ds` only holds corrupted pixels."""
    if isinstance(ds, ccc_data.CCCImages):  # draws from its pool
        pool = ds.ccc.pool
        return {str(p) for p in pool.files} if pool.files is not None else {_key(a) for a in pool.x}
    if hasattr(ds, "base"):  # a corrupting wrapper (segmentation)
        return identities(ds.base)
    if hasattr(ds, "pairs"):
        return {str(img) for img, _ in ds.pairs}
    if hasattr(ds, "files"):
        return {str(p) for p in ds.files}
    if hasattr(ds, "paths"):
        return {str(Path(getattr(ds, "root", "")) / p) for p in ds.paths}
    if type(ds).__name__ == "LazyCorrupted":  # holds the clean images, corrupts on access
        return {_key(a) for a in ds.x}
    return None


def clean_identities(ds) -> set[str]:
    found = identities(ds)
    if found is not None:
        return found
    raw = getattr(ds, "images", None) if hasattr(ds, "images") else getattr(ds, "x", None)
    raw = raw if raw is not None else ds.tensors[0]
    return {_key(a) for a in raw}


def labels_of(ds) -> np.ndarray | None:
    for attr in ("targets", "labels", "y"):
        v = getattr(ds, attr, None)
        if v is not None and not callable(v):
            return np.asarray(v).reshape(-1)
    return None


class Positions(Dataset):
    """Item i is i: the order `clean_loader` draws depends only on the length and the seed."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _build(name: str, tmp_path: Path, monkeypatch) -> tuple:
    maker = STANDINS[name]
    stand = maker(tmp_path, monkeypatch) if name == "imagenet-c" else maker(tmp_path)
    opts = {**stream_options(name), **stand.get("opts", {})}
    return build_stream(name, stand.get("data_dir", tmp_path), 0, opts), stand


@pytest.mark.parametrize("name", STREAMS.names())
def test_clean_split_is_held_out_and_shuffled(name, tmp_path, monkeypatch):
    declared = clean_split(name)
    assert declared.source is not None or declared.reason, f"{name}: declare its clean split (streams.CleanSplit)"
    if name in NO_CLEAN:
        assert declared.source is None, f"{name} declares a clean split: give it a stand-in in STANDINS"
        if name == "digits-b2n":
            assert build_stream(name, tmp_path, 0, stream_options(name)).clean is None
        return
    assert name in STANDINS, f"{name}: add a small stand-in to STANDINS"
    spec, stand = _build(name, tmp_path, monkeypatch)
    assert declared.source is not None and spec.clean is not None and len(spec.clean) > 0, name
    clean = clean_identities(spec.clean)
    assert len(clean) == len(spec.clean), "stand-in images must be distinct"
    if declared.disjoint:
        shown = set(stand.get("shown", []))
        if spec.calibrate is not None:  # CCC: the stream draws from its pool (known before calibration)
            shown |= identities(ccc_data.CCCImages(spec.calibrate.__self__, 1))
        else:
            sev = spec.severities[-1] if spec.severities else None
            for d in spec.domain_names:
                shown |= identities(spec.load(d, sev, None)) or set()
        assert shown, f"{name}: no identities for the stream's images"
        assert not clean & shown, f"{name}: {len(clean & shown)} clean images are also streamed"
    if spec.source is not None:  # forgetting is never measured on images a prepare stage trained on
        assert not clean & clean_identities(spec.source), name
    # the runner's clean batches: a seeded shuffle (not the file order), the same at every evaluation
    order = [b.tolist() for b in clean_loader(Positions(len(spec.clean)), BATCH, seed=0)]
    again = [b.tolist() for b in clean_loader(Positions(len(spec.clean)), BATCH, seed=0)]
    flat = [i for b in order for i in b]
    assert order == again and sorted(flat) == list(range(len(spec.clean))) and flat != sorted(flat)
    labels = labels_of(spec.clean)
    if spec.task != "segmentation" and labels is not None and len(np.unique(labels)) > 1:
        full = [b for b in order if len(b) == BATCH]
        one_class = [b for b in full if len(np.unique(labels[b])) == 1]
        assert full and not one_class, (name, [labels[b].tolist() for b in one_class])


def test_ccc_clean_size_zero_streams_the_whole_pool(tmp_path):
    _ccc_cifar(tmp_path)
    opts = {**stream_options("ccc-cifar"), "clean_dir": str(tmp_path / "pool")}
    held = build_stream("ccc-cifar", tmp_path, 0, opts)
    whole = build_stream("ccc-cifar", tmp_path, 0, {**opts, "clean_size": 0})
    assert whole.clean is None and len(whole.source) == 200 and whole.info["clean_held_out"] == 0
    assert len(held.clean) == 20 and len(held.source) == 180  # at most a tenth of the pool
    assert held.data_fingerprint == whole.data_fingerprint  # every image it may read
    other_seed = build_stream("ccc-cifar", tmp_path, 1, opts)
    assert clean_identities(other_seed.clean) == clean_identities(held.clean)  # the same held-out images


def test_clean_eval_end_leaves_per_domain_clean_error_empty(runs_dir, capsys):
    cfg = RunConfig(method="norm", stream="digits-c", limit=32, batch_size=16, stream_opts={"domains": "fog,contrast"},
                    clean_eval="end", out=str(runs_dir), device="cpu")  # fmt: skip
    out = run(cfg)
    err = capsys.readouterr().err
    domain_lines = [ln for ln in err.splitlines() if ln.startswith("r0 ")]
    assert len(domain_lines) == 2 and not any("clean error" in ln for ln in domain_lines), domain_lines
    df = pd.read_csv(out.folder / "domains.csv")
    assert df["clean_error"].isna().all()
    s = out.summary
    assert s["clean_error_before"] is not None and s["clean_error_after"] is not None
    rec = load_config(out.folder)["clean_split"]
    assert rec["n"] == 200 and rec["disjoint"] is True and rec["measured"] and rec["when"] == "end"
    assert "shuffled" in rec["order"]
    per_domain = run(RunConfig(**{**cfg.__dict__, "clean_eval": "domain"}), quiet=True)
    assert pd.read_csv(per_domain.folder / "domains.csv")["clean_error"].notna().all()
    assert per_domain.summary["clean_error_before"] == s["clean_error_before"]  # the same clean batches


def _tiny_net(spec, ctx) -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, spec.num_classes))  # fmt: skip


def test_no_clean_split_is_recorded_with_its_reason(tmp_path, runs_dir):
    from tta_bench.models import MODELS
    from tta_bench.report import forgetting_text

    _cifar_pickles(tmp_path / "cifar-10-batches-py")
    if "clean-split-tiny-net" not in MODELS.names():
        MODELS.add("clean-split-tiny-net", _tiny_net)
    cfg = RunConfig(method="norm", stream="cifar10-c", model="clean-split-tiny-net", batch_size=16, limit=16,
                    stream_opts={"mode": "generated", "holdout": 0, "domains": "fog"}, data_dir=str(tmp_path),
                    out=str(runs_dir), device="cpu")  # fmt: skip
    out = run(cfg, quiet=True)
    rec = load_config(out.folder)["clean_split"]
    assert rec["n"] == 0 and not rec["measured"] and "holdout=0" in rec["not_measured_because"]
    assert out.summary["forgetting"] is None and "holdout=0" in forgetting_text(out.summary, out.folder)


@pytest.mark.real
@pytest.mark.slow
def test_ccc_cifar_resnet20_clean_error_is_the_models_clean_error(shared_data, runs_dir, one_thread):
    """ccc-cifar's clean error under a batch-statistics method is ResNet-20's own clean error (about 19 % on
    cifar10-test-jpeg, ../shared/data/README.md), not the 82.7 % of one-class batches read in file order."""
    (w,) = sorted((shared_data / "models" / "cifar10-resnet").glob("resnet20-*.th"))
    opts = {"clean_dir": str(shared_data / "cifar10-test-jpeg"), "length": 128, "speed": 64, "calib_size": 20}
    cfg = RunConfig(method="norm", stream="ccc-cifar", model="resnet20-cifar10", model_opts={"weights": str(w)},
                    stream_opts=opts, clean_eval="end", out=str(runs_dir), device="cpu")  # fmt: skip
    s = run(cfg, quiet=True).summary
    print(f"\nccc-cifar ResNet-20 norm: clean error {s['clean_error_before']:.2f} % -> {s['clean_error_after']:.2f} %")
    assert 10.0 <= s["clean_error_before"] <= 26.0 and abs(s["clean_error_after"] - s["clean_error_before"]) <= 5.0
