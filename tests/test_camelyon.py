"""camelyon17 stream on a tiny dataset written in the exact Camelyon17-WILDS layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tta_bench.kernel import UserError
from tta_bench.streams import build_stream, default_model, stream_options


def write_wilds(root, per_center=4, seed=0):
    """camelyon17_v1.0/metadata.csv + patches/patient_PPP_node_N/patch_patient_PPP_node_N_x_X_y_Y.png."""
    rng = np.random.default_rng(seed)
    base = root / "camelyon17_v1.0"
    rows = []
    for center in range(5):
        patient, node = 10 * center + 4, center % 5  # e.g. patient "004": exercises the zero padding
        for k in range(per_center):
            x, y = 3328 + 96 * k, 21792
            folder = base / "patches" / f"patient_{patient:03d}_node_{node}"
            folder.mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / f"patch_patient_{patient:03d}_node_{node}_x_{x}_y_{y}.png")
            rows.append(
                {"patient": f"{patient:03d}", "node": node, "x_coord": x, "y_coord": y, "tumor": k % 2,
                 "slide": center * 10 + node, "center": center, "split": int(k == per_center - 1)}
            )  # fmt: skip
    pd.DataFrame(rows).to_csv(base / "metadata.csv")  # WILDS writes the unnamed index column first
    return base, pd.DataFrame(rows)


def stream(tmp_path, **opts):
    return build_stream("camelyon17", tmp_path, 0, {**stream_options("camelyon17"), **opts})


def test_hospital_split_and_pixels(tmp_path):
    base, meta = write_wilds(tmp_path)
    assert (base / "metadata.csv").read_text().startswith(",patient,node,x_coord,y_coord,tumor,slide,center,split")
    spec = stream(tmp_path)
    assert spec.domain_names == ["hospital1", "hospital2"] and spec.severities is None
    assert spec.num_classes == 2 and default_model("camelyon17") == "medical-resnet"
    assert len(spec.source) == 9 and len(spec.clean) == 3  # 3 hospitals x (3 train + 1 id-val)
    assert all("patient_004_" in p or "patient_034_" in p or "patient_044_" in p for p in spec.source.paths)
    h2 = spec.load("hospital2", None, None)
    assert len(h2) == 4 and all("patient_024_node_2" in p for p in h2.paths)
    x, y = h2[0]
    png = np.array(Image.open(base / h2.paths[0]))
    assert x.shape == (3, 96, 96) and torch.equal(x, torch.from_numpy(png).permute(2, 0, 1).float() / 255)
    row = meta[(meta["center"] == 2) & (meta["x_coord"] == int(h2.paths[0].split("_x_")[1].split("_")[0]))]
    assert y == int(row["tumor"].iloc[0])
    assert len(spec.load("hospital1", None, 2)) == 2
    # root may name the camelyon17_v1.0 folder itself; source_limit subsamples the source split
    assert len(stream(tmp_path, root=str(base), source_limit=5).source) == 5


def test_wrong_layout_errors(tmp_path):
    with pytest.raises(UserError, match="metadata.csv"):
        stream(tmp_path)
    base, meta = write_wilds(tmp_path)
    meta.drop(columns=["center"]).to_csv(base / "metadata.csv")
    with pytest.raises(UserError, match="lacks columns \\['center'\\]"):
        stream(tmp_path)
    meta.assign(patient=meta["patient"].str.replace("004", "005")).to_csv(base / "metadata.csv")
    with pytest.raises(UserError, match="does not exist"):
        stream(tmp_path)
