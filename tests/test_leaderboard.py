"""Leaderboard on real run folders: digits-c (32 samples per domain, batch 32), source/norm/tent × 2 seeds.

The runs are made once per test session (`shared_runs`, also used by test_browser.py) and read back by
the leaderboard; the expected numbers are recomputed here by hand from each run's summary.json/domains.csv.
"""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tta_bench.cli import main
from tta_bench.leaderboard.collect import collect, entry_labels
from tta_bench.leaderboard.site import build
from tta_bench.leaderboard.stats import mean_std_ci, paired_test

METHODS = ("source", "norm", "tent")
SEEDS = (0, 1)
LIMIT, BATCH = 32, 32
_SHARED: dict[str, Path] = {}


def shared_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 real completed runs + 2 incomplete folders (one without `done`, one empty); made once per session."""
    if "runs" not in _SHARED:
        from tta_bench.config import RunConfig
        from tta_bench.runner import run

        root = tmp_path_factory.mktemp("lb_runs")
        for method in METHODS:
            for seed in SEEDS:
                cfg = RunConfig(
                    method=method, stream="digits-c", seed=seed, limit=LIMIT, batch_size=BATCH, clean_eval="end",
                    out=str(root),
                )  # fmt: skip
                run(cfg, quiet=True)
        first = sorted(p for p in root.iterdir() if p.is_dir())[0]
        shutil.copytree(first, root / "0000interrupted0")
        (root / "0000interrupted0" / "done").unlink()  # looks like a run, but was never finished
        (root / "0000empty0000000").mkdir()  # the runner creates the folder before any file
        _SHARED["runs"] = root
    return _SHARED["runs"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return shared_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def site(runs, tmp_path_factory):
    return build(runs, tmp_path_factory.mktemp("lb_site"))


def summaries(runs: Path) -> list[dict]:
    """summary.json of every completed run, with its run id (the folder name)."""
    return [
        json.loads((p.parent / "summary.json").read_text()) | {"run_id": p.parent.name} for p in runs.glob("*/done")
    ]


def test_runs_csv_has_one_row_per_completed_run_with_its_numbers(site, runs):
    df = pd.read_csv(site.out / "csv" / "runs.csv")
    assert len(df) == len(METHODS) * len(SEEDS)
    assert not df.duplicated(["stream", "setting", "model", "method", "seed"]).any()
    assert set(df["method"]) == set(METHODS) and set(df["seed"]) == set(SEEDS)
    for s in summaries(runs):
        row = df[df["run_id"] == s["run_id"]].iloc[0]
        assert (row["method"], row["seed"], row["model"]) == (s["method"], s["seed"], "small-cnn")
        for k in ("mean_error", "ece", "forgetting", "clean_error_before", "adapt_mb", "images_per_s"):
            assert row[k] == pytest.approx(s[k]), k
        assert math.isnan(row["peak_device_mb"])  # CPU: no device peak
        assert len(s["domain_errors"]) == 15
        for d, e in s["domain_errors"].items():
            assert row[f"err:{d}"] == pytest.approx(e)
    assert (df["adapt_mb"] > 0).all()
    tent, norm = df[df["method"] == "tent"], df[df["method"] == "norm"]
    assert tent["adapt_mb"].min() > norm["adapt_mb"].max()  # tent keeps activations for backward


def test_summary_mean_std_ci_over_seeds_by_hand(site, runs):
    df = pd.read_csv(site.out / "csv" / "summary.csv")
    assert len(df) == len(METHODS) and df["n_seeds"].tolist() == [2, 2, 2]
    assert df["mean_error_mean"].is_monotonic_increasing  # ranked by mean error
    by_method: dict[str, list[dict]] = {}
    for s in summaries(runs):
        by_method.setdefault(s["method"], []).append(s)
    for method, ss in by_method.items():
        row = df[df["entry"] == method].iloc[0]
        a, b = (s["mean_error"] for s in ss)
        mean, std = (a + b) / 2, abs(a - b) / math.sqrt(2)  # sample std (ddof=1) of two values
        assert row["mean_error_mean"] == pytest.approx(mean)
        assert row["mean_error_std"] == pytest.approx(std)
        half = 12.706204736 * std / math.sqrt(2)  # t_{0.975, df=1}
        assert row["mean_error_ci_low"] == pytest.approx(mean - half, abs=1e-6)
        assert row["mean_error_ci_high"] == pytest.approx(mean + half, abs=1e-6)
        f = [s["forgetting"] for s in ss]
        assert row["forgetting_mean"] == pytest.approx(np.mean(f))
        assert row["adapt_mb_mean"] == pytest.approx(np.mean([s["adapt_mb"] for s in ss]))
        d0 = "gaussian_noise"
        assert row[f"err:{d0}"] == pytest.approx(np.mean([s["domain_errors"][d0] for s in ss]))


def test_paired_tests_against_source_and_norm(site, runs):
    df = pd.read_csv(site.out / "csv" / "summary.csv").set_index("entry")
    dom = pd.read_csv(site.out / "csv" / "domains.csv")
    assert len(dom) == 6 * 15
    piv = dom.pivot_table(index=["seed", "domain"], columns="method", values="error")
    # by hand: mean over (seed, domain) pairs of norm − source
    assert df.loc["norm", "delta_vs_source"] == pytest.approx((piv["norm"] - piv["source"]).mean())
    assert df.loc["tent", "delta_vs_norm"] == pytest.approx((piv["tent"] - piv["norm"]).mean())
    assert df.loc["norm", "n_pairs_vs_source"] == 30
    # severity-5 corruptions: test-batch statistics beat the source model clearly, on every seed
    assert df.loc["norm", "delta_vs_source"] < -10 and df.loc["norm", "p_vs_source"] < 0.001
    assert bool(df.loc["norm", "sig_vs_source"]) and bool(df.loc["tent", "sig_vs_source"])
    assert math.isnan(df.loc["source", "delta_vs_source"]) and not df.loc["source", "sig_vs_source"]
    assert math.isnan(df.loc["norm", "p_vs_norm"])


def test_incomplete_runs_are_ignored_and_counted(runs, tmp_path, capsys):
    col = collect(runs)
    assert len(col.runs) == 6
    assert sorted(p.name for p in col.incomplete) == ["0000empty0000000", "0000interrupted0"]
    assert main(["leaderboard", "--runs", str(runs), "--out", str(tmp_path / "site")]) == 0
    out = capsys.readouterr().out
    assert "6 completed run(s) in 1 table(s)" in out and "ignored 2 incomplete run folder(s)" in out
    assert "2 incomplete run folders ignored" in (tmp_path / "site" / "index.html").read_text()


def test_plots_are_written_and_decode(site):
    pngs = sorted(site.out.glob("plots/*.png"))
    svgs = sorted(site.out.glob("plots/*.svg"))
    kinds = {p.stem.rsplit("-", 1)[1] for p in pngs}
    # forgetting bars only where entries forgot differently (all 0.00 pp compares nothing; tent's depends on the CPU)
    differ = site.summary["forgetting_mean"].nunique() > 1
    expected = {"curve", "heatmap", "memory"} | ({"forgetting"} if differ else set())
    assert kinds == expected and len(svgs) == len(pngs) == len(expected)
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            w, h = im.size
            assert w > 200 and h > 150
            assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 8  # not a blank canvas
    for p in svgs:
        root = ET.parse(p).getroot()
        assert root.tag.endswith("svg") and len(list(root.iter())) > 50
    html = (site.out / "index.html").read_text()
    for p in pngs:
        assert f'src="plots/{p.name}"' in html


def test_page_links_configs_and_shows_protocol(site, runs):
    html = (site.out / "index.html").read_text()
    assert html.count("<tr>") == 2 * (1 + len(METHODS))  # overview matrix and detail table: header + a row per method
    for folder in (p.parent for p in runs.glob("*/done")):
        copy = site.out / "configs" / f"{folder.name}.json"
        assert f'href="configs/{folder.name}.json"' in html
        assert copy.read_text() == (folder / "config.json").read_text()
    assert "<dt>batch size</dt><dd>32</dd>" in html
    assert "<dt>samples per domain</dt><dd>32</dd>" in html
    assert "<dt>setting</dt><dd>continual</dd>" in html
    assert "gaussian_noise@5 → shot_noise@5" in html and "torch 2." in html


def test_rebuild_is_deterministic(site, runs, tmp_path):
    again = build(runs, tmp_path / "again")
    for rel in ("csv/summary.csv", "csv/runs.csv", "index.html"):
        assert (again.out / rel).read_text() == (site.out / rel).read_text()
    for p in site.out.glob("plots/*.svg"):
        assert (again.out / "plots" / p.name).read_bytes() == p.read_bytes()


def test_empty_and_missing_runs_folder(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert main(["leaderboard", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "s")]) == 0
    assert "No completed runs found" in (tmp_path / "s" / "index.html").read_text()
    assert main(["leaderboard", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_mean_std_ci_and_paired_test_units():
    mean, std, lo, hi = mean_std_ci([10.0, 12.0, 14.0])
    assert (mean, std) == (12.0, 2.0)
    half = 4.302652729911275 * 2.0 / math.sqrt(3)  # t_{0.975, df=2}
    assert (lo, hi) == pytest.approx((12 - half, 12 + half))
    assert math.isnan(mean_std_ci([5.0])[1]) and mean_std_ci([3.0, 3.0])[2:] == (3.0, 3.0)
    assert paired_test(np.ones(5), np.ones(5)) == (0.0, 1.0, 5)
    d, p, n = paired_test(np.arange(20.0), np.arange(20.0) + 3 + 0.1 * np.sin(np.arange(20)))
    assert d == pytest.approx(-3 - 0.1 * np.sin(np.arange(20)).mean()) and p < 1e-4 and n == 20


def test_hyperparameter_variants_get_their_own_entry():
    runs = pd.DataFrame(
        {"run_id": list("abcd"), "table": "t", "model": "m", "method": ["tent", "tent", "tent", "norm"]}
    )
    opts = {"a": {"lr": 1e-3, "steps": 1}, "b": {"lr": 1e-4, "steps": 1}, "c": {"lr": 1e-3, "steps": 1}, "d": {}}
    assert entry_labels(runs, opts).tolist() == ["tent[lr=0.001]", "tent[lr=0.0001]", "tent[lr=0.001]", "norm"]


def test_run_folders_found_recursively_and_site_excluded(tmp_path):
    from tta_bench.leaderboard.collect import find_run_folders

    for rel in ("a/1111", "a/2222", "b/c/3333", "site/configs"):
        (tmp_path / rel).mkdir(parents=True)
    for rel in ("a/1111", "b/c/3333"):
        (tmp_path / rel / "done").write_text("x")
    (tmp_path / "a/2222/config.json").write_text("{}")  # started, never finished
    complete, incomplete = find_run_folders(tmp_path, exclude=tmp_path / "site")
    assert [p.relative_to(tmp_path).as_posix() for p in complete] == ["a/1111", "b/c/3333"]
    assert [p.relative_to(tmp_path).as_posix() for p in incomplete] == ["a/2222"]


def test_tables_split_by_protocol_and_titles_disambiguated():
    from tta_bench.leaderboard.collect import table_key
    from tta_bench.leaderboard.site import disambiguate

    base = {"stream": "digits-c", "setting": "continual", "severity": 5, "batch_size": 64, "limit": None,
            "rounds": 1, "precision": "fp32", "clean_eval": "domain", "stream_opts": {"gamma": 0.1}}  # fmt: skip
    keys = [table_key({"config": base | d}) for d in ({}, {"batch_size": 32}, {"setting": "mixed"})]
    assert len(set(keys)) == 3 and keys[0] == "digits-c/continual/sev5/bs64/nall/r1/fp32/data-?/gamma=0.1"
    tables = [{"key": k, "title": " · ".join(k.split("/")[:2])} for k in keys]
    disambiguate(tables)
    assert [t["title"] for t in tables] == [
        "digits-c · continual · bs64",
        "digits-c · continual · bs32",
        "digits-c · mixed",
    ]


# --- long-horizon metrics on the page and in the curves -------------------------------------------------------------
COLLAPSE_FROM = 3 * 64  # images: the collapsing run predicts one class from its 4th window of 64 images on


def collapsing(adapt):
    """`adapt` that returns one constant prediction (class 8) once the adapter has seen `COLLAPSE_FROM` images.

    A collapse by construction: a Tent run at a large lr collapses or not depending on the CPU's float path (AVX2
    vs AVX-512, thread count), so a test fixture must not hope for one. Those windows' errors depend on the stream's
    labels only: class 8 is absent from the first 32 images of every digits-c domain, so they are 100 %.
    """

    import torch

    def wrapped(self, x: torch.Tensor) -> torch.Tensor:
        seen, self._seen = getattr(self, "_seen", 0), getattr(self, "_seen", 0) + len(x)
        outputs = adapt(self, x)
        if seen < COLLAPSE_FROM:
            return outputs
        constant = torch.zeros_like(outputs)
        constant[:, 8] = 1.0
        return constant

    return wrapped


@pytest.fixture(scope="module")
def window_runs(tmp_path_factory) -> tuple[Path, dict[float, dict]]:
    """Tent on digits-c with windows of 64 images (7 full + a tail): at lr 1e-3 (its default) it stays far below
    the collapse threshold; the lr 2e-3 run is forced into one constant prediction from its 4th window on
    (`collapsing`), so it reaches the threshold on every CPU (windowed error 100 %)."""
    from tta_bench.config import RunConfig
    from tta_bench.methods.tent import Tent
    from tta_bench.runner import run

    root = tmp_path_factory.mktemp("lb_windows")
    out = {}
    for lr in (1e-3, 2e-3):
        cfg = RunConfig(method="tent", stream="digits-c", limit=LIMIT, batch_size=BATCH, clean_eval="off",
                        stream_opts={"window": 64}, method_opts={"lr": lr}, out=str(root))  # fmt: skip
        with pytest.MonkeyPatch.context() as mp:
            if lr == 2e-3:
                mp.setattr(Tent, "adapt", collapsing(Tent.adapt))
            res = run(cfg, quiet=True)
        out[lr] = res.summary | {"folder": res.folder}
    healthy, collapsed = out[1e-3], out[2e-3]
    assert not healthy["collapsed"] and healthy["worst_window_error"] < healthy["collapse_threshold"] - 20
    assert collapsed["collapsed"] and collapsed["window_errors"][COLLAPSE_FROM // 64 :] == [100.0] * 5  # as built
    assert max(collapsed["window_errors"][: COLLAPSE_FROM // 64]) < collapsed["collapse_threshold"] - 20
    return root, out


def test_curve_window_steps_equal_the_runners_window_errors(window_runs):
    from tta_bench.leaderboard.plots import window_steps

    _, out = window_runs
    for s in out.values():
        steps = window_steps(pd.read_csv(Path(s["folder"]) / "batches.csv"), s["window"])
        assert [r["window"] for r in steps] == list(range(len(s["window_errors"])))
        np.testing.assert_allclose([r["error"] for r in steps], s["window_errors"], rtol=0, atol=1e-9)


def test_curves_draw_windows_worst_window_threshold_and_collapse(window_runs, monkeypatch, tmp_path):
    from tta_bench.leaderboard import plots

    root, out = window_runs
    col = collect(root)
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, stem: figs.append(fig) or stem)
    plots.curves(col.batches, tmp_path / "c", runs=col.runs)
    (ax,) = figs[0].axes
    labels = ax.get_legend_handles_labels()[1]
    assert sorted(labels) == ["tent[lr=0.001]", "tent[lr=0.002] (collapsed)"]
    steps = sorted(float(seg[0][1]) for c in ax.collections for seg in c.get_segments())
    expected = sorted(e for s in out.values() for e in s["window_errors"])
    np.testing.assert_allclose(steps, expected, atol=1e-9)
    threshold = out[2e-3]["collapse_threshold"]
    assert any(list(line.get_ydata()) == [threshold, threshold] for line in ax.lines)  # the dotted threshold
    worst = sorted(float(line.get_ydata()[0]) for line in ax.lines if line.get_marker() == "v")
    assert worst == sorted(s["worst_window_error"] for s in out.values())
    figs.clear()
    plots.curves(col.batches, tmp_path / "plain")  # without runs: the curves alone
    assert not figs[0].axes[0].collections and "(collapsed)" not in " ".join(
        figs[0].axes[0].get_legend_handles_labels()[1]
    )


def test_page_shows_worst_window_and_collapsed_only_where_they_apply(window_runs, site, tmp_path):
    root, out = window_runs
    html = (build(root, tmp_path / "site").out / "index.html").read_text()
    assert "worst window % ↓" in html
    for s in out.values():
        assert f">{s['worst_window_error']:.2f}<" in html
    board = html.split('class="board"')[1]  # the detail table (the overview matrix comes first)
    rows = [r for r in board.split("<tr>") if 'class="entry"' in r]
    flagged = [r for r in rows if 'class="collapsed"' in r]
    # short names: tent's cifar10-c preset (digits-c's family) uses lr 0.001, so only the other run names its lr
    assert len(rows) == 2 and len(flagged) == 1 and ">tent (lr=0.002) <span" in flagged[0]
    assert [r.split('title="')[1].split('">')[1].split("<")[0].strip() for r in rows if ">tent<" in r] == ["tent"]
    plain = (site.out / "index.html").read_text()  # digits-c, 480 images, windows of 1,000: one window
    tables = plain.split('class="board"')[1]
    assert "worst window" not in tables and 'class="collapsed"' not in tables
