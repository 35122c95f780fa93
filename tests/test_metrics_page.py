"""Each task's headline metric on the leaderboard, and table identity by protocol.

Run folders are synthesized in the exact run-folder schema (`tta_bench.rundir`: config.json, summary.json checked
by `rundir.check_summary`, domains.csv, batches.csv, done), so a segmentation (camvid-c), a binary medical
(pneumoniamnist-c) and a base-to-new CLIP (digits-b2n) track build in a second without their models. The numbers
are chosen so that each headline metric ranks the entries differently from plain error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tta_bench import rundir
from tta_bench.kernel import hash_json
from tta_bench.leaderboard.collect import collect
from tta_bench.leaderboard.site import build
from tta_bench.leaderboard.stats import summarize

CAMVID_DOMAINS = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "fog", "brightness"]
MED_DOMAINS = ["pixelate", "gaussian_noise", "contrast"]  # stream order, not alphabetical
FP = {"camvid-c": "camvid-fp-1", "pneumoniamnist-c": "pneumonia-fp-1", "digits-b2n": "digits-b2n-fp-1"}

# per method: (per-domain error, per-domain headline values); chosen so the headline ranks differently from error
CAMVID = {"source": (30.0, 40.0), "norm": (20.0, 45.0), "tent": (22.0, 52.0)}  # error, mIoU: tent best on mIoU
PNEUMONIA = {  # error, balanced error, AUC: tent has the lowest error but near-chance balanced error
    "source": (30.0, 31.0, 80.0),
    "norm": (34.0, 28.0, 84.0),
    "tent": (25.0, 45.0, 60.0),
}
B2N = {"source": (30.0, 40.0), "coop": (10.0, 45.0), "ogen": (12.0, 35.0)}  # error on base, new: HM ranks ogen


def make_run(
    root: Path,
    *,
    stream: str,
    method: str,
    seed: int,
    task: str,
    model: str,
    domains: list[str],
    domain_rows: list[dict[str, Any]],
    extra: dict[str, Any],
    severity: int | None = 5,
    limit: int | None = 8,
    stream_opts: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    clean: tuple[float, float] | None = None,
    clean_eval: str = "domain",
    setting: str = "continual",
    method_opts: dict[str, Any] | None = None,
    preset: dict[str, Any] | None = None,
    batches_per_domain: int = 1,
) -> Path:
    """Write one complete run folder (schema of tta_bench.rundir) and return it. `preset`: config.json's preset
    record (tta_bench.presets.record); `batches_per_domain`: batches.csv rows per domain (its error each)."""
    config = {
        "method": method, "stream": stream, "model": model, "setting": setting, "severity": 5, "batch_size": 4,
        "seed": seed, "limit": limit, "rounds": 1, "precision": "fp32", "clean_eval": clean_eval,
        "method_opts": method_opts or {}, "stream_opts": {"gamma": 0.1, "window": 1000, "speed_ratio": None,
                                                          "domains": None, **(stream_opts or {})},
    }  # fmt: skip
    fp = fingerprint if fingerprint is not None else FP[stream]
    rid = hash_json({"config": config, "data": fp}, rundir.RUN_ID_LENGTH)
    n = sum(r["n"] for r in domain_rows)
    per_domain = {r["domain"]: r["n"] for r in domain_rows}
    cfg = {
        "run_id": rid,
        "config": config,
        "preset": preset or {"requested": "auto", "stream_family": None, "family": None},
        "execution": {"device": "cpu", "data_dir": "/data", "out": str(root), "workers": 0, "threads": 1},
        "versions": {"python": "3.11", "tta_bench": "0.1.0", "torch": "2"},
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "data_fingerprint": fp,
        "task": task,
        "domain_order": [
            {
                "round": 0,
                "domain": d,
                "severity": severity,
                "reset": False,
                "order": "sequential",
                "parts": [[d, severity]],
            }
            for d in domains
        ],
        "samples_per_domain": {f"0/{d}": per_domain[d] for d in domains},
        "prepare": {},
    }
    errors = {r["domain"]: r["error"] for r in domain_rows}
    mean_error = sum(errors.values()) / len(errors)
    before, after = clean if clean is not None else (None, None)
    summary = {
        "method": method, "stream": stream, "model": model, "setting": setting, "seed": seed, "severity": 5,
        "rounds": 1, "batch_size": 4, "task": task, "mean_error": mean_error, "domain_errors": errors,
        "round_errors": [mean_error], "ece": 5.0 + seed, "n_samples": n, "clean_error_before": before,
        "clean_error_after": after, "forgetting": None if clean is None else after - before,
        "adapt_mb": {"source": 0.0, "norm": 0.1}.get(method, 3.0), "memory": {"adapt_mb": 1.0},
        "peak_device_mb": None, "images_per_s": 100.0, "stream_seconds": 1.0, "prepare_s": None,
        "prepare_adapt_mb": None, "diverged": False, "first_diverged_batch": None, "window": 1000,
        "window_errors": [mean_error], "worst_window": 0, "worst_window_error": mean_error,
        "collapse_threshold": 85.0, "collapsed": False, "speed_ratio": None, "speed_ratio_measured": None,
        "batches_adapted": len(domain_rows) * batches_per_domain, **extra,
    }  # fmt: skip
    rundir.check_summary(summary)
    folder = root / rid
    folder.mkdir(parents=True)
    (folder / rundir.CONFIG).write_text(json.dumps(cfg))
    (folder / rundir.SUMMARY).write_text(json.dumps(summary))
    dom = pd.DataFrame(
        [
            {
                "round": 0,
                "segment": r["domain"],
                "severity": severity,
                "clean_error": after,
                "seconds": 0.1,
                "images_per_s": 100.0,
                **r,
            }
            for r in domain_rows
        ]  # fmt: skip
    )
    dom.to_csv(folder / rundir.DOMAINS, index=False)
    bat = pd.DataFrame(
        [
            {
                "batch": i,
                "round": 0,
                "segment": r["domain"],
                "index": k,
                "severity": severity,
                "n": r["n"] // batches_per_domain,
                "error": r["error"],
                "nonfinite": 0,
                "seconds": 0.1,
                "adapt_mb": 1.0,
                "peak_device_mb": None,
            }
            for i, (r, k) in enumerate((r, k) for r in domain_rows for k in range(batches_per_domain))
        ]  # fmt: skip
    )
    bat.to_csv(folder / rundir.BATCHES, index=False)
    (folder / rundir.DONE).write_text("2026-01-01T00:00:00\n")
    return folder


def camvid_run(root: Path, method: str, seed: int) -> Path:
    err, miou = CAMVID[method]
    rows = [
        {"domain": d, "error": err + i + seed, "n": 4, "miou": miou - i + seed, "pixel_acc": 100 - err, "ece": 3.0}
        for i, d in enumerate(CAMVID_DOMAINS)
    ]
    mean_miou = sum(r["miou"] for r in rows) / len(rows)
    extra = {"miou": mean_miou, "pixel_acc": 100 - err}
    return make_run(root, stream="camvid-c", method=method, seed=seed, task="segmentation", model="espnet-camvid",
                    domains=CAMVID_DOMAINS, domain_rows=rows, extra=extra)  # fmt: skip


def pneumonia_run(root: Path, method: str, seed: int, **kw: Any) -> Path:
    err, bal, auc = PNEUMONIA[method]
    rows = [
        {"domain": d, "error": err + i, "n": 8, "ece": 4.0, "balanced_error": bal + i + seed, "auc": auc - i}
        for i, d in enumerate(MED_DOMAINS)
    ]
    extra = {"balanced_error": bal + 1 + seed, "auc": auc - 1}
    return make_run(root, stream="pneumoniamnist-c", method=method, seed=seed, task="binary", model="medical-resnet",
                    domains=MED_DOMAINS, domain_rows=rows, extra=extra, clean=(10.0, 10.0 + err / 5), **kw)  # fmt: skip


def b2n_run(root: Path, method: str, seed: int) -> Path:
    base_err, new_err = B2N[method]
    rows = [{"domain": "base", "error": base_err, "n": 8, "ece": 2.0}, {"domain": "new", "error": new_err, "n": 8}]
    b, n = 100 - base_err, 100 - new_err
    extra = {"base_acc": b, "new_acc": n, "harmonic_mean": 2 * b * n / (b + n)}
    return make_run(root, stream="digits-b2n", method=method, seed=seed, task="classification", model="clip-tiny",
                    domains=["base", "new"], domain_rows=rows, extra=extra, severity=None)  # fmt: skip


def three_tasks(root: Path) -> Path:
    """camvid-c, pneumoniamnist-c and digits-b2n runs (3 methods × 2 seeds each) under `root`."""
    for seed in (0, 1):
        for m in CAMVID:
            camvid_run(root, m, seed)
        for m in PNEUMONIA:
            pneumonia_run(root, m, seed)
        for m in B2N:
            b2n_run(root, m, seed)
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    runs = three_tasks(tmp_path_factory.mktemp("three_tasks"))
    return build(runs, tmp_path_factory.mktemp("three_site"))


def test_each_task_declares_its_headline_metrics():
    assert [m.key for m in rundir.headline("classification", ["mean_error"])] == ["mean_error"]
    assert [m.key for m in rundir.headline("segmentation", ["miou"])] == ["miou"]
    binary = rundir.headline("binary", ["balanced_error", "auc"])
    assert [(m.key, m.higher_is_better) for m in binary] == [("balanced_error", False), ("auc", True)]
    b2n = rundir.headline("classification", ["mean_error", "base_acc", "new_acc", "harmonic_mean"])
    assert [m.key for m in b2n] == ["harmonic_mean", "base_acc", "new_acc"] and all(m.higher_is_better for m in b2n)


def test_summary_ranks_each_table_by_its_headline(site):
    s = pd.read_csv(site.out / "csv" / "summary.csv")
    by = {stream: g.reset_index(drop=True) for stream, g in s.groupby("stream", sort=False)}
    cam, med, b2n = by["camvid-c"], by["pneumoniamnist-c"], by["digits-b2n"]
    assert cam["entry"].tolist() == ["tent", "norm", "source"] and cam["headline"].iat[0] == "miou"
    assert cam["miou_mean"].is_monotonic_decreasing and "miou_ci_low" in cam
    assert cam["paired_metric"].iat[0] == "miou"  # paired tests on per-domain mIoU
    assert med["entry"].tolist() == ["norm", "source", "tent"]  # by balanced error, not by error (tent's is lowest)
    assert med["headline"].iat[0] == "balanced_error,auc" and med["auc_mean"].notna().all()
    assert (
        b2n["entry"].tolist() == ["ogen", "coop", "source"]
        and b2n["headline"].iat[0] == "harmonic_mean,base_acc,new_acc"
    )
    for col in ("mean_error_mean", "ece_mean"):  # error stays available everywhere
        assert s[col].notna().all()
    runs = pd.read_csv(site.out / "csv" / "runs.csv")
    assert {"miou", "balanced_error", "auc", "base_acc", "new_acc", "harmonic_mean", "mean_error", "task"} <= set(runs)


def test_heatmap_domains_follow_the_stream_order(site):
    from tta_bench.leaderboard.site import domain_grid, domain_order

    col = collect(site.out.parent / "three_tasks0")
    table = col.runs.loc[col.runs["stream"] == "pneumoniamnist-c", "table"].iat[0]
    assert domain_order(table, col) == MED_DOMAINS  # config.json domain_order, not alphabetical
    s = summarize(col.runs, col.domains)
    grid = domain_grid(s[s["table"] == table], col.domains[col.domains["table"] == table], "balanced_error",
                       MED_DOMAINS)  # fmt: skip
    assert list(grid.columns) == MED_DOMAINS and list(grid.index) == ["norm", "source", "tent"]
    assert (site.out / "plots").glob("*heatmap.png")


def test_same_data_through_different_paths_is_one_table(tmp_path):
    """Same data fingerprint, the file reached through two paths: one table (the seeds pooled, a duplicate
    (method, seed) counted once); a different --limit: another table of the same stream, and the page says why."""
    runs = tmp_path / "runs"
    pneumonia_run(runs, "tent", 0, stream_opts={"root": "/data/medmnist/pneumoniamnist.npz"})
    pneumonia_run(runs, "tent", 1, stream_opts={"root": "/mnt/other/link-to-pneumoniamnist.npz"})
    pneumonia_run(runs, "tent", 0, stream_opts={"root": "/mnt/other/link-to-pneumoniamnist.npz"})  # same run again
    pneumonia_run(runs, "source", 0, stream_opts={"root": "/data/medmnist/pneumoniamnist.npz"})
    col = collect(runs)
    assert len(col.runs) == 4 and col.runs["table"].nunique() == 1
    s = summarize(col.runs, col.domains)
    assert s.set_index("entry").loc["tent", "n_seeds"] == 2 and len(s) == 2
    assert "/data/" not in col.runs["table"].iat[0]  # no path in a table's identity

    pneumonia_run(runs, "tent", 0, fingerprint="pneumonia-fp-2")  # the file changed: other data, other table
    assert collect(runs).runs["table"].nunique() == 2


def test_other_sample_counts_are_another_table_grouped_under_the_stream(tmp_path):
    runs = tmp_path / "runs"
    pneumonia_run(runs, "tent", 0)
    rows = [{"domain": d, "error": 20.0, "n": 16, "balanced_error": 30.0, "auc": 70.0} for d in MED_DOMAINS]
    make_run(runs, stream="pneumoniamnist-c", method="tent", seed=0, task="binary", model="medical-resnet",
             domains=MED_DOMAINS, domain_rows=rows, extra={"balanced_error": 30.0, "auc": 70.0}, limit=16)  # fmt: skip
    site = build(runs, tmp_path / "site")
    assert len(site.tables) == 2
    html = (site.out / "index.html").read_text()
    assert html.count('class="stream-group"') == 1  # both tables under one stream heading
    assert "2 tables: runs are ranked together only under one protocol" in html
    assert "differ in samples per domain (16 / 8)." in html


@pytest.mark.real
@pytest.mark.parametrize("stream,sub", [("camvid-c", "camvid"), ("pneumoniamnist-c", "medmnist/pneumoniamnist.npz")])
def test_real_data_reached_through_a_symlink_has_the_same_fingerprint(shared_data, tmp_path, stream, sub):
    """The stream's data fingerprint (what names the data in a table's identity) does not depend on the path."""
    from tta_bench import streams as st
    from tta_bench.kernel import check_options

    link = tmp_path / "elsewhere" / Path(sub).name
    link.parent.mkdir()
    link.symlink_to(shared_data / sub)
    prints = []
    for root in (shared_data / sub, link):
        opts = check_options("stream", stream, {"root": str(root)}, st.stream_options(stream))
        prints.append(st.build_stream(stream, tmp_path, 0, opts).data_fingerprint)
    assert prints[0] and prints[0] == prints[1]
