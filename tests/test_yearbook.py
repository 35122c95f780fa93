"""`yearbook`: the Wild-Time yearbook.pkl layout read from a generated stand-in: source/clean/stream years, domains
in time order, pixels and labels as stored, bad files as user errors, and a CLI run with group accuracy."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tta_bench import rundir
from tta_bench.cli import main
from tta_bench.kernel import UserError
from tta_bench.streams import build_stream, stream_options

YEARS = [1950, 1955, 1965, 1972, 1979, 1985, 2001]


def write_yearbook(root: Path, n: int = 6, n_test: int = 2) -> Path:
    """A stand-in of Wild-Time's pickle: per year modes 0 (train), 1 (test), 2 (both); pixels (0,0), (0,1), (0,2)
    hold year - 1900, mode and k, and the label is k % 2."""
    data = {}
    for year in YEARS:
        modes = {}
        for mode in (0, 1):
            k = np.arange(n if mode == 0 else n_test)
            img = np.zeros((len(k), 32, 32, 3), np.uint8)
            img[:, 0, 0], img[:, 0, 1], img[:, 0, 2] = year - 1900, mode, k[:, None]
            modes[mode] = {"images": img, "labels": k % 2}
        modes[2] = {"images": np.concatenate([modes[0]["images"], modes[1]["images"]]),
                    "labels": np.concatenate([modes[0]["labels"], modes[1]["labels"]])}  # fmt: skip
        data[year] = modes
    path = root / "yearbook.pkl"
    root.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data))
    return path


def _spec(path: Path, **opts):
    return build_stream("yearbook", None, 0, {**stream_options("yearbook"), "root": str(path), **opts})


def _years(ds) -> list[int]:
    v = (ds.tensors[0][:, 0, 0, 0] * 255).round().long()
    return sorted({1900 + int(a) for a in v})


def _modes(ds) -> set[int]:
    return {int(a) for a in (ds.tensors[0][:, 0, 0, 1] * 255).round().long()}


def test_years_split_into_source_clean_and_decades(tmp_path):
    spec = _spec(write_yearbook(tmp_path))
    assert spec.domain_names == ["1970-1979", "1980-1989", "2000-2009"]  # time order, empty decades skipped
    assert spec.info["source_years"] == [1950, 1965] and spec.info["groups"] == ["0", "1"]
    assert len(spec.source) == 3 * 6 and len(spec.clean) == 3 * 2
    assert _modes(spec.source) == {0} and _modes(spec.clean) == {1}  # train mode / test mode of the source years
    assert _years(spec.source) == _years(spec.clean) == [1950, 1955, 1965]
    x = spec.source.tensors[0]
    assert torch.equal(x[:, 0], x[:, 2])  # grey as 3 equal channels
    seventies = spec.load("1970-1979", None, None)
    assert len(seventies) == 2 * 8 and _years(seventies) == [1972, 1979] and _modes(seventies) == {0, 1}
    assert _years(spec.load("2000-2009", None, None)) == [2001] and len(spec.load("1980-1989", None, 3)) == 3
    x, y = seventies[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= float(x.max()) <= 1
    assert spec.source.tensors[1].tolist() == [k % 2 for _ in range(3) for k in range(6)]
    later = _spec(tmp_path / "yearbook.pkl", split_year=1980, bin_years=5)
    assert later.domain_names == ["1985-1989", "2000-2004"] and later.info["source_years"] == [1950, 1979]
    assert later.source_fingerprint != spec.source_fingerprint and later.data_fingerprint == spec.data_fingerprint


def test_bad_files_and_options_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        _spec(tmp_path / "missing.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="Refusing to load .*junk.pkl"):
        _spec(tmp_path / "junk.pkl")
    path = write_yearbook(tmp_path)
    with pytest.raises(UserError, match="no source years"):
        _spec(path, split_year=1900)
    with pytest.raises(UserError, match="stream.bin_years"):
        _spec(path, bin_years=0)
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(UserError, match="dict of years"):
        _spec(tmp_path / "list.pkl")
    bad = {1950: {0: {"images": np.zeros((2, 32, 32)), "labels": np.zeros(2)}}, 1990: {2: {"labels": [0]}}}
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(bad))
    with pytest.raises(UserError, match="year 1950 mode 0"):
        _spec(tmp_path / "bad.pkl")


def test_cli_run_on_the_stand_in(tmp_path, one_thread):
    path = write_yearbook(tmp_path / "data")
    out = tmp_path / "runs"
    args = ["run", "--method", "tent", "--stream", "yearbook", "--batch-size", "8", "--out", str(out), "--quiet"]
    args += ["--set", f"stream.root={path}", "--set", "model.source_epochs=1"]
    assert main(args) == 0
    (folder,) = [p for p in out.iterdir() if rundir.is_run_id(p.name)]
    s = json.loads((folder / "summary.json").read_text())
    assert s["stream"] == "yearbook" and s["n_samples"] == 16 + 8 + 8
    assert set(s["domain_errors"]) == {"1970-1979", "1980-1989", "2000-2009"}
    assert 0 <= s["worst_group_acc"] <= s["avg_group_acc"] <= 100


def clean_split_standin(tmp: Path) -> dict:
    """tests/test_clean_splits.py's stand-in: the pickle and the identities (pixel hashes) of every streamed image."""
    import hashlib

    path = write_yearbook(tmp, n_test=6)  # 18 clean images: two full clean batches of 8
    data = pickle.loads(path.read_bytes())
    shown = [
        hashlib.sha1(
            torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1).contiguous().numpy().tobytes()
        ).hexdigest()
        for year in data
        if year >= 1970
        for mode in (0, 1)
        for a in data[year][mode]["images"]
    ]
    return {"opts": {"root": str(path)}, "shown": shown}
