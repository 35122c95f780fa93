"""Adding a metric is its computation plus one row of the METRICS table (`tta_bench.rundir.METRICS`): the runner
writes what the meter computes into summary.json, and the leaderboard's CSVs, statistics and page pick the row up.
Here a new metric (the mean top-1 confidence) is computed by the classification meter and declared by one row."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tta_bench import rundir
from tta_bench.config import RunConfig
from tta_bench.leaderboard.site import build
from tta_bench.metrics import ClassificationMeter
from tta_bench.rundir import metrics as metrics_table
from tta_bench.runner import run

ROW = rundir.Metric("confidence", "confidence", True, meaning="mean top-1 softmax probability (%)", digits=1,
                    aggregated=True, column=True)  # fmt: skip


def test_a_new_metric_is_its_computation_plus_one_row(tmp_path, monkeypatch, one_thread):
    # the computation: the meter keeps the sum of top-1 probabilities ...
    update, summary = ClassificationMeter.update, ClassificationMeter.summary

    def counting_update(self, logits, y, *args, **kwargs):
        p = torch.softmax(logits.detach().float(), 1).max(1).values
        self.conf_total = getattr(self, "conf_total", 0.0) + float(p.sum())
        self.conf_n = getattr(self, "conf_n", 0) + len(p)
        return update(self, logits, y, *args, **kwargs)

    def with_confidence(self):
        n = getattr(self, "conf_n", 0)
        return {**summary(self), "confidence": 100.0 * self.conf_total / n if n else None}

    monkeypatch.setattr(ClassificationMeter, "update", counting_update)
    monkeypatch.setattr(ClassificationMeter, "summary", with_confidence)
    # ... and the one row
    table = (*metrics_table.METRICS, ROW)
    monkeypatch.setattr(metrics_table, "METRICS", table)
    monkeypatch.setattr(rundir, "METRICS", table)

    out = tmp_path / "runs"
    results = [
        run(
            RunConfig(method=m, stream="digits-c", limit=16, batch_size=16, seed=s, clean_eval="off", out=str(out)),
            quiet=True,
        )  # fmt: skip
        for m in ("source", "norm")
        for s in (0, 1)
    ]
    values = [r.summary["confidence"] for r in results]
    assert all(0 < v <= 100 for v in values)
    site = build(out, tmp_path / "site")

    runs = pd.read_csv(tmp_path / "site" / "csv" / "runs.csv")
    assert sorted(runs["confidence"]) == [pytest.approx(v, abs=1e-6) for v in sorted(values)]
    summ = pd.read_csv(tmp_path / "site" / "csv" / "summary.csv").set_index("entry")
    src = [r.summary["confidence"] for r in results if r.summary["method"] == "source"]
    assert abs(summ.loc["source", "confidence_mean"] - sum(src) / 2) < 1e-6
    assert "confidence_std" in summ.columns
    html = (tmp_path / "site" / "index.html").read_text()
    assert ROW.title in html and "mean top-1 softmax probability" in html
    assert f"{summ.loc['norm', 'confidence_mean']:.1f}" in html  # the row's format (1 decimal)
    assert len(site.summary) == 2
