"""confounded stream: a path,label,group CSV, train pairs one group per class, test reverses them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tta_bench.kernel import UserError
from tta_bench.streams import build_stream, stream_options


def write_split(tmp_path, n=5, labels=("normal", "pneumonia"), groups=("hospA", "hospB")):
    rows = []
    (tmp_path / "img").mkdir()
    for li, lab in enumerate(labels):
        for g in groups:
            for k in range(n):
                name = f"img/{lab}_{g}_{k}.png"
                value = 40 * li + 100 * groups.index(g) + k  # pixel value encodes (label, group, k)
                Image.fromarray(np.full((20, 24), value, np.uint8)).save(tmp_path / name)
                rows.append({"path": name, "label": lab, "group": g})
    csv = tmp_path / "split.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def stream(root, **opts):
    return build_stream("confounded", None, 0, {**stream_options("confounded"), "root": str(root), **opts})


def test_default_assignment_reverses_the_association(tmp_path):
    csv = write_split(tmp_path)
    spec = stream(csv, size=16)
    assert spec.class_names == ["normal", "pneumonia"] and spec.task == "binary"
    assert spec.info["train_groups"] == {"normal": "hospA", "pneumonia": "hospB"}
    test = spec.load("reversed", None, None)
    assert len(test) == 10 and len(spec.source) + len(spec.clean) == 10 and len(spec.clean) == 1
    for p, y in zip(test.paths, test.labels):
        assert ("normal_hospB" in str(p) and y == 0) or ("pneumonia_hospA" in str(p) and y == 1)
    for p in spec.source.paths + spec.clean.paths:
        assert "normal_hospA" in str(p) or "pneumonia_hospB" in str(p)
    x, y = test[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    value = 40 * y + 100 * (1 - y) + int(str(test.paths[0])[-5])  # reversed: label y comes from group 1 - y
    assert torch.allclose(x, torch.full_like(x, value / 255))
    assert len(spec.load("reversed", None, 3)) == 3


def test_explicit_assignment_and_integer_labels(tmp_path):
    csv = write_split(tmp_path, labels=("0", "1"))
    df = pd.read_csv(csv)
    df["label"] = df["label"].astype(int)
    df.to_csv(csv, index=False)
    spec = stream(csv, train_groups="0:hospB,1:hospA", clean_fraction=0.0)
    assert spec.clean is None and len(spec.source) == 10
    assert all(("0_hospB" in str(p)) or ("1_hospA" in str(p)) for p in spec.source.paths)


def test_bad_inputs(tmp_path):
    csv = write_split(tmp_path)
    with pytest.raises(UserError, match="label:group"):
        stream(csv, train_groups="normal:hospC,pneumonia:hospA")
    with pytest.raises(UserError, match="every label"):
        stream(csv, train_groups="normal:hospA")
    with pytest.raises(UserError, match="stream.root"):
        build_stream("confounded", None, 0, stream_options("confounded"))
    pd.read_csv(csv).drop(columns=["group"]).to_csv(csv, index=False)
    with pytest.raises(UserError, match="lacks columns \\['group'\\]"):
        stream(csv)
    with pytest.raises(UserError, match="not found"):
        stream(tmp_path / "missing.csv")
