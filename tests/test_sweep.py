"""Sweeps: grid expansion, skipping completed runs (folders named by config hash), local and Ray executors.

The local test reuses the session's real digits-c runs (test_leaderboard.shared_runs): it deletes some of
them, and the sweep must run exactly those again, into the same folders, with the same numbers.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_leaderboard import BATCH, LIMIT, METHODS, SEEDS, shared_runs

import tta_bench.runner
from tta_bench.cli import main
from tta_bench.sweep import _names

COMMON = ["--streams", "digits-c", "--limit", str(LIMIT), "--batch-size", str(BATCH), "--clean-eval", "end"]


def sweep(runs: Path, site: Path, methods: list[str], seeds: list[str], *extra: str) -> int:
    argv = ["sweep", "--methods", ",".join(methods), "--seeds", *seeds, *COMMON, "--out", str(runs)]
    return main([*argv, "--site", str(site), *extra])


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def by_key(runs: Path) -> dict[tuple[str, int], Path]:
    out = {}
    for done in runs.glob("*/done"):
        s = json.loads((done.parent / "summary.json").read_text())
        out[(s["method"], s["seed"])] = done.parent
    return out


def forbid_runs(monkeypatch) -> None:
    def no_run(*a, **k):
        raise AssertionError("a completed run was run again")

    monkeypatch.setattr(tta_bench.runner, "run", no_run)


def test_local_sweep_runs_exactly_the_missing_runs(tmp_path, tmp_path_factory, capsys, monkeypatch):
    src = shared_runs(tmp_path_factory)
    runs = tmp_path / "runs"
    shutil.copytree(src, runs)
    original = by_key(src)
    shutil.rmtree(runs / original[("tent", 0)].name)
    shutil.rmtree(runs / original[("tent", 1)].name)
    (runs / original[("norm", 1)].name / "done").unlink()  # interrupted: must be cleared and re-run
    assert sweep(runs, tmp_path / "site", list(METHODS), [str(s) for s in SEEDS]) == 0
    out = capsys.readouterr().out
    assert "6 run(s) in the grid, 3 already complete, 3 to run" in out
    assert out.count("% error (") == 3 and "FAILED" not in out
    now = by_key(runs)
    assert {k: p.name for k, p in now.items()} == {k: p.name for k, p in original.items()}  # same hashed folders
    for key in [("tent", 0), ("tent", 1), ("norm", 1)]:
        a = json.loads((now[key] / "summary.json").read_text())
        b = json.loads((original[key] / "summary.json").read_text())
        assert a["mean_error"] == pytest.approx(b["mean_error"], abs=1e-9)  # same config, same numbers
    table = pd.read_csv(tmp_path / "site" / "csv" / "runs.csv")
    assert len(table) == 6 and "6 completed run(s)" in out  # the leaderboard was regenerated

    before = snapshot(runs)
    forbid_runs(monkeypatch)
    assert sweep(runs, tmp_path / "site", list(METHODS), [str(s) for s in SEEDS]) == 0
    assert "6 already complete, 0 to run" in capsys.readouterr().out
    assert snapshot(runs) == before  # nothing touched


def test_the_whole_grid_is_checked_before_anything_runs(tmp_path, capsys):
    assert sweep(tmp_path / "runs", tmp_path / "site", ["source", "tnet"], ["0"]) == 2
    err = capsys.readouterr().err
    assert "tnet" in err and "tent" in err  # close-match hint
    assert not (tmp_path / "runs").exists()
    assert sweep(tmp_path / "runs", tmp_path / "site", ["source"], ["zero"]) == 2
    assert "--seeds takes integers" in capsys.readouterr().err


def test_ray_executor_without_ray_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert sweep(tmp_path / "runs", tmp_path / "site", ["source"], ["0"], "--executor", "ray") == 2
    err = capsys.readouterr().err
    assert 'pip install "tta_bench[distributed]"' in err
    assert not (tmp_path / "runs").exists()


def test_lists_accept_commas_and_spaces():
    assert _names(["source,norm", "tent", " eata , "]) == ["source", "norm", "tent", "eata"]


@pytest.mark.slow
def test_ray_sweep_then_rerun_does_nothing(tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray", reason='Ray not installed: pip install "tta_bench[distributed]"')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runs = tmp_path / "runs"
        assert sweep(runs, tmp_path / "site", ["source", "norm"], ["0", "1"], "--executor", "ray") == 0
        out = capsys.readouterr().out
        assert "4 to run" in out and out.count("% error (") == 4
        assert len(by_key(runs)) == 4 and len(pd.read_csv(tmp_path / "site" / "csv" / "runs.csv")) == 4
        before = snapshot(runs)
        forbid_runs(monkeypatch)
        assert sweep(runs, tmp_path / "site", ["source", "norm"], ["0", "1"], "--executor", "ray") == 0
        assert "4 already complete, 0 to run" in capsys.readouterr().out
        assert snapshot(runs) == before
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_process_pool_sweep(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert sweep(runs, tmp_path / "site", ["norm"], ["0", "1"], "--processes", "2") == 0
    assert "2 to run" in capsys.readouterr().out
    assert sorted(by_key(runs)) == [("norm", 0), ("norm", 1)]
