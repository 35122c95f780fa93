"""The page's overview matrices, short entry names, realistic-table warnings and titles in words, on run folders
synthesized in the run-folder schema (test_metrics_page.make_run): fast, no model runs."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from test_metrics_page import MED_DOMAINS, make_run, pneumonia_run

from tta_bench.leaderboard import names
from tta_bench.leaderboard.collect import collect
from tta_bench.leaderboard.overview import detail_tables, overview_tables
from tta_bench.leaderboard.site import build

DOMAINS = ["gaussian_noise", "fog", "contrast"]
PRESET = {"optimizer": "adam", "lr": 0.001}


def digits(root, method, seed, err, *, setting="continual", lr=None, adapted=None, speed_ratio=None, limit=8):
    """A digits-c run (2 batches per domain); `adapted`: batches adapted (default all); tent with its preset."""
    rows = [{"domain": d, "error": err + i, "n": 8, "ece": 2.0} for i, d in enumerate(DOMAINS)]
    opts, preset = {}, None
    if method == "tent":
        opts = {**PRESET, "steps": 1} | ({"lr": lr} if lr is not None else {})
        preset = {"requested": "auto", "stream_family": "cifar10-c", "family": "cifar10-c", "source": "a/b:c",
                  "options": dict(PRESET), "overridden": {"lr": lr} if lr is not None else {}}  # fmt: skip
    extra = {}
    if setting == "realistic":
        extra = {"speed_ratio": speed_ratio or 1.0, "speed_ratio_measured": speed_ratio is None}
    run = make_run(root, stream="digits-c", method=method, seed=seed, task="classification", model="small-cnn",
                   domains=DOMAINS, domain_rows=rows, extra=extra, fingerprint="digits-fp", setting=setting,
                   method_opts=opts, preset=preset, batches_per_domain=2, limit=limit,
                   stream_opts={"speed_ratio": speed_ratio} if setting == "realistic" else None)  # fmt: skip
    if adapted is not None:  # the realistic clock skipped some batches
        import json

        s = json.loads((run / "summary.json").read_text())
        s["batches_adapted"] = adapted
        (run / "summary.json").write_text(json.dumps(s))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("overview_runs")
    for seed in (0, 1):
        digits(root, "source", seed, 30.0 + seed)
        digits(root, "norm", seed, 12.0 + seed)
        digits(root, "tent", seed, 10.0 + seed)
        digits(root, "tent", seed, 14.0 + seed, lr=0.01)
    digits(root, "source", 0, 31.0, setting="realistic", speed_ratio=None)  # measured k, every batch adapted
    digits(root, "tent", 0, 11.0, setting="realistic", speed_ratio=None)
    for m in ("source", "norm", "tent"):
        pneumonia_run(root, m, 0)
    return root


def test_short_names_show_only_what_differs_from_the_preset(runs):
    col = collect(runs)
    short = names.short_names(col.runs, col.configs)
    by_entry = {(k[0].split("/")[1], k[2]): v for k, v in short.items() if k[0].startswith("digits-c")}
    assert sorted(v["short"] for (setting, _), v in by_entry.items() if setting == "continual") == [
        "norm", "source", "tent", "tent (lr=0.01)"]  # fmt: skip
    tent = next(v for (s, e), v in by_entry.items() if s == "continual" and v["short"] == "tent")
    assert tent["full"] == "tent: lr=0.001, optimizer=adam, steps=1 (preset cifar10-c)"
    other = next(v for v in by_entry.values() if v["short"] == "tent (lr=0.01)")
    assert other["full"].endswith("(preset cifar10-c; differs: lr=0.01)")
    assert any(e.startswith("tent[") for _, e in by_entry)  # the CSVs keep collect's unique entry labels


def test_overview_one_matrix_per_family_with_average_and_best(runs):
    col = collect(runs)
    tables = overview_tables(col)
    assert [t.family for t in tables] == ["Classification", "Imbalanced binary classification (medical)"]
    cls = tables[0]
    assert cls.header == ["method", "Digits-C · small CNN · continual", "Digits-C · small CNN · realistic", "average"]
    rows = {r[0].text: r[1:] for r in cls.rows}
    assert list(rows) == ["source", "norm", "tent", "tent (lr=0.01)"]  # baselines first, then best average first
    # digits error per run: mean over the 3 domains = err + 1; seeds 0 and 1 -> mean err + 1.5, std 0.71
    assert rows["tent"][0].text == "11.50 ± 0.71" and rows["tent"][0].best
    assert rows["tent"][1].text == "12.00" and rows["tent"][1].best  # one seed: no ± std
    assert rows["tent"][2].value == pytest.approx((11.5 + 12.0) / 2) and rows["tent"][2].best
    assert rows["norm"][1].text == "–" and rows["norm"][2].text == "–"  # not run realistic: no average
    assert math.isclose(rows["source"][2].value, (31.5 + 32.0) / 2)
    assert all(c.href == cls.links[0] for c in (r[1] for r in cls.rows))  # each number links to its detail table
    assert len(tables[1].header) == 2  # one benchmark: no average column
    assert [r[0].text for r in tables[1].rows] == ["source", "norm", "tent"]


def test_detail_tables_in_order_titled_in_words(runs):
    col = collect(runs)
    tables = detail_tables(col)
    assert [t.title for t in tables] == [
        "Digits-C · small CNN · continual · severity 5 · 8/domain",
        "Digits-C · small CNN · realistic · severity 5 · 8/domain",
        "PneumoniaMNIST-C · medical ResNet · continual · severity 5 · 8/domain",
    ]
    cont = tables[0]
    assert cont.header[:5] == ["#", "method", "model", "seeds", "error % ↓"]
    assert [r[1].text for r in cont.rows] == ["tent", "norm", "tent (lr=0.01)", "source"]
    assert "gamma" not in cont.caption and "setting: continual" in cont.caption and cont.key.startswith("digits-c/")


def test_realistic_table_warns_when_every_batch_was_adapted(runs, tmp_path):
    site = build(runs, tmp_path / "site")
    html = (site.out / "index.html").read_text()
    assert html.count("so this realistic table equals the continual setting") == 1
    real = next(t for t in detail_tables(collect(runs)) if "realistic" in t.title)
    k = real.header.index("k")
    assert [r[k].text for r in real.rows] == ["1.00 measured", "1.00 measured"]
    assert [r[real.header.index("batches adapted")].text for r in real.rows] == ["6 / 6 100 %"] * 2
    assert "k" not in detail_tables(collect(runs))[0].header  # continual: no k column


def test_realistic_table_with_skipped_batches_has_no_warning(tmp_path):
    digits(tmp_path, "source", 0, 30.0, setting="realistic", speed_ratio=2)
    digits(tmp_path, "tent", 0, 10.0, setting="realistic", speed_ratio=2, adapted=3)
    (real,) = detail_tables(collect(tmp_path))
    adapted = {r[1].text: r[real.header.index("batches adapted")].text for r in real.rows}
    assert adapted == {"tent": "3 / 6 50 %", "source": "6 / 6 100 %"}
    assert real.notes[0] == "Adapted on every batch (as in the continual setting): source."
    assert not any("equals the continual" in n for n in real.notes)


def test_one_entry_table_has_no_plots_but_a_line(tmp_path):
    rows = [{"domain": d, "error": 20.0, "n": 16, "balanced_error": 30.0, "auc": 70.0} for d in MED_DOMAINS]
    make_run(tmp_path / "runs", stream="pneumoniamnist-c", method="tent", seed=0, task="binary",
             model="medical-resnet", domains=MED_DOMAINS, domain_rows=rows,
             extra={"balanced_error": 30.0, "auc": 70.0})  # fmt: skip
    site = build(tmp_path / "runs", tmp_path / "site")
    html = (site.out / "index.html").read_text()
    assert not list((site.out / "plots").iterdir()) and "<img" not in html
    assert "One entry: nothing to compare, so no plots" in html


def test_auc_pooled_on_the_page_mean_over_domains_in_the_csv(runs, tmp_path):
    site = build(runs, tmp_path / "site")
    s = pd.read_csv(site.out / "csv" / "summary.csv")
    med = s[s["stream"] == "pneumoniamnist-c"].set_index("entry")
    # pneumonia_run: summary auc = AUC − 1 (pooled), per-domain AUC − 0, −1, −2 (mean AUC − 1 as well: same here)
    assert med.loc["norm", "auc_mean"] == 83.0 and med.loc["norm", "auc_domains_mean"] == pytest.approx(83.0)
    assert med.loc["tent", "balanced_error_domains_mean"] == pytest.approx(46.0)  # 45, 46, 47 per domain
    assert med.loc["tent", "balanced_error_mean"] == 46.0  # the pooled value the page shows
    html = (site.out / "index.html").read_text()
    assert html.count("pooled over all the stream") == 1


def test_applicable_stream_options():
    opts = {"gamma": 0.1, "window": 1000, "speed_ratio": 2, "domains": None}
    assert names.applicable_stream_opts("continual", opts) == {"window": 1000}
    assert names.applicable_stream_opts("non-iid", opts) == {"gamma": 0.1, "window": 1000}
    assert names.applicable_stream_opts("realistic", opts) == {"window": 1000, "speed_ratio": 2}
    markov = {"gamma": 0.1, "markov": "unitta", "class_stay": 0.9, "utility_tau": 2.0, "speed_ratio": 2}
    assert names.applicable_stream_opts("markov", markov) == {"markov": "unitta", "class_stay": 0.9}


def _batches(rounds: int, entries: list[str]) -> pd.DataFrame:
    rows = []
    for e_i, entry in enumerate(entries):
        b = 0
        for r in range(rounds):
            for d in DOMAINS:
                for _ in range(2):
                    rows.append({"run_id": f"r{e_i}", "model": "m", "entry": entry, "batch": b, "round": r,
                                 "segment": d, "n": 8, "error": 10.0 + e_i + b % 3})  # fmt: skip
                    b += 1
    return pd.DataFrame(rows)


def test_curve_labels_rounds_only_with_two_and_keeps_long_names_inside(monkeypatch, tmp_path):
    from tta_bench.leaderboard import plots

    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, stem: figs.append(fig) or stem)
    long = "eata (d_margin=0.4, fisher_alpha=1, lr=0.01, optimizer=adam, steps=3)"
    colors = {("m", "source"): "#123456", ("m", long): "#abcdef"}
    for rounds in (1, 2):
        plots.curves(_batches(rounds, ["source", long]), tmp_path / f"c{rounds}", colors=colors)
    texts = [[t.get_text() for t in f.findobj(plots.matplotlib.text.Text) if t.get_text().strip()] for f in figs]
    assert not any(t.strip().startswith("round") for t in texts[0])
    assert [t.strip() for t in texts[1] if t.strip().startswith("round")] == ["round 1", "round 2"]
    for f in figs:
        assert plots.clipped(f) == []
        legend = f.axes[0].get_legend()
        assert [plots.matplotlib.colors.to_hex(h.get_color()) for h in legend.legend_handles] == ["#123456", "#abcdef"]
        assert all(len(line) <= 28 for t in legend.get_texts() for line in t.get_text().split("\n"))  # wrapped
        assert f.axes[0].get_ylabel() == "error % per batch"
    assert plots.curves(_batches(1, ["source"]), tmp_path / "one") is None  # one entry: nothing to compare
