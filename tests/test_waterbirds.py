"""`waterbirds`: the official metadata.csv layout read from a generated stand-in (no copy of the data here): splits,
group ids (bird x background), bad layouts as user errors, and a CLI run with worst-group accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tta_bench import rundir
from tta_bench.cli import main
from tta_bench.data.waterbirds import FOLDER, GROUP_NAMES
from tta_bench.kernel import UserError
from tta_bench.metrics import GROUP_INFO
from tta_bench.streams import build_stream, stream_options

# (split, y, place) -> images: train 95 %-ish aligned (landbirds on land, waterbirds on water), val/test balanced
COUNTS = {(0, 0, 0): 19, (0, 0, 1): 1, (0, 1, 1): 19, (0, 1, 0): 1}
COUNTS |= {(s, y, p): 4 for s in (1, 2) for y in (0, 1) for p in (0, 1)}


def write_waterbirds(root: Path, size: int = 12) -> Path:
    """A stand-in of the official folder: metadata.csv and one PNG per row; pixel values encode (y, place, k)."""
    folder = root / FOLDER
    rows = []
    for (split, y, place), n in COUNTS.items():
        sub = folder / f"{100 + y:03d}.{'Water' if y else 'Land'}_bird"
        sub.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            name = f"{sub.name}/s{split}_p{place}_{k}.png"
            img = np.full((size, size, 3), 60 if place == 0 else 180, np.uint8)  # background
            img[size // 3 : 2 * size // 3, size // 3 : 2 * size // 3] = 20 + 200 * y + k  # the bird
            Image.fromarray(img).save(folder / name)
            rows.append({"img_id": len(rows) + 1, "img_filename": name, "y": y, "split": split, "place": place,
                         "place_filename": "/x/y.jpg"})  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return folder


def _spec(folder: Path, **opts):
    return build_stream("waterbirds", None, 0, {**stream_options("waterbirds"), "root": str(folder), **opts})


def test_splits_and_group_ids_follow_the_metadata(tmp_path):
    folder = write_waterbirds(tmp_path)
    spec = _spec(folder, size=12)
    test = spec.load("test", None, None)
    assert (len(spec.source), len(spec.clean), len(test)) == (40, 16, 16)
    assert spec.info[GROUP_INFO] == GROUP_NAMES
    assert GROUP_NAMES == ["landbird/land", "waterbird/land", "landbird/water", "waterbird/water"]
    assert spec.info["group_counts"]["train"] == [19, 1, 1, 19] and spec.info["group_counts"]["test"] == [4] * 4
    for ds, split in ((test, 2), (spec.clean, 1)):
        for p, g in zip(ds.paths, ds.labels):
            y, place = int(p.parent.name.startswith("101")), int(p.name.split("_p")[1][0])
            assert p.name.startswith(f"s{split}_") and g == y + 2 * place
        assert (ds.targets == ds.labels % 2).all()
    assert set(spec.source.labels.tolist()) == {0, 1}  # class labels for training, not group ids
    assert all(p.name.startswith("s0_") for p in spec.source.paths)
    x, g = test[0]
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32
    place = g // 2
    assert float(x[0, 0, 0]) == pytest.approx((60 if place == 0 else 180) / 255)  # the background is the place
    assert len(spec.load("test", None, 5)) == 5
    again = _spec(folder, size=12)
    assert (again.data_fingerprint, again.source_fingerprint) == (spec.data_fingerprint, spec.source_fingerprint)
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(test.paths[0])
    assert _spec(folder, size=12).data_fingerprint != spec.data_fingerprint


def test_bad_layouts_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="metadata.csv"):
        _spec(tmp_path / "nowhere")
    folder = write_waterbirds(tmp_path)
    df = pd.read_csv(folder / "metadata.csv")
    df.drop(columns=["place"]).to_csv(folder / "metadata.csv", index=False)
    with pytest.raises(UserError, match="place"):
        _spec(folder)
    df.assign(split=df["split"].replace(2, 1)).to_csv(folder / "metadata.csv", index=False)
    with pytest.raises(UserError, match="no test rows"):
        _spec(folder)
    df.assign(y=df["y"] + 3).to_csv(folder / "metadata.csv", index=False)
    with pytest.raises(UserError, match="column y"):
        _spec(folder)


def test_cli_run_reports_group_accuracy(tmp_path, one_thread):
    folder = write_waterbirds(tmp_path)
    out = tmp_path / "runs"
    opts = [f"stream.root={folder}", "stream.size=12", "model.source_epochs=2"]
    args = ["run", "--method", "norm", "--stream", "waterbirds", "--batch-size", "8", "--out", str(out), "--quiet"]
    args += [a for o in opts for a in ("--set", o)]
    assert main(args) == 0
    (folder_run,) = [p for p in out.iterdir() if rundir.is_run_id(p.name)]
    s = json.loads((folder_run / "summary.json").read_text())
    assert s["stream"] == "waterbirds" and s["n_samples"] == 16
    assert 0 <= s["worst_group_acc"] <= s["avg_group_acc"] <= 100
    dom = pd.read_csv(folder_run / "domains.csv")
    per = dom[[f"group_acc_{n}" for n in GROUP_NAMES]].iloc[0]
    assert per.min() == pytest.approx(s["worst_group_acc"]) and per.mean() == pytest.approx(s["avg_group_acc"])
    # the groups are balanced (4 each): the average-group accuracy is the accuracy
    assert s["avg_group_acc"] == pytest.approx(100 - s["mean_error"])
