"""Open-world streams (tta_bench.outliers): outliers mixed into a stream at a stated ratio, reproducible by seed,
excluded from the error, and scored for outlier detection (AUROC, FPR@95) in summary.json, domains.csv and the page."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from tta_bench import outliers, rundir
from tta_bench import streams as st
from tta_bench.cli import main
from tta_bench.config import RunConfig
from tta_bench.identity import open_stream, resolve, run_id
from tta_bench.kernel import UserError
from tta_bench.metrics import ClassificationMeter, OpenWorldMeter, fpr_at_tpr, roc_auc


def _logits(pred: list[int], conf: list[float], c: int = 3) -> torch.Tensor:
    """Logits whose argmax is `pred` with max softmax exactly `conf` (others share the rest)."""
    p = torch.tensor([[(1 - q) / (c - 1)] * c for q in conf], dtype=torch.float64)
    p[torch.arange(len(pred)), torch.tensor(pred)] = torch.tensor(conf, dtype=torch.float64)
    return p.log()


def test_mixed_order_ratio_keeps_the_stream_order_and_is_seeded():
    inner = np.random.default_rng(3).permutation(400)
    m = outliers.outlier_count(400, 0.2)
    assert m == 100 and m / (400 + m) == pytest.approx(0.2)
    assert outliers.outlier_count(10, 0.5) == 10 and outliers.outlier_count(1000, 0.1) == 111
    assert outliers.outlier_count(3, 0.5) == 3 and outliers.outlier_count(1, 0.2) == 0
    a = outliers.mixed_order(inner, m, seed=7)
    assert sorted(a.tolist()) == list(range(500))  # every position once
    assert (a[a < 400] == inner).all()  # the in-distribution order is untouched
    assert (outliers.mixed_order(inner, m, 7) == a).all()
    b = outliers.mixed_order(inner, m, 8)
    assert not (b == a).all()
    # outliers spread over the stream (uniform slots), not appended at the end
    slots = np.flatnonzero(a >= 400)
    assert slots.min() < 100 and slots.max() > 400


def _open_world(seed: int, ratio: float = 0.2, source: str = "noise"):
    cfg = resolve(RunConfig(method="source", stream="digits-c", limit=50, seed=seed, out="/tmp/unused",
                            stream_opts={"outliers": source, "outlier_ratio": ratio}))  # fmt: skip
    spec = open_stream(cfg)
    spec = st.select_domains(spec, ["gaussian_noise", "fog"])
    segments = st.schedule(cfg.setting, spec, cfg.severity, cfg.rounds)
    datasets = outliers.mix(spec, segments, [st.segment_dataset(spec, s, cfg.limit) for s in segments], cfg)
    batches = [b for s, d in zip(segments, datasets) for b in st.batches(d, s, 16, cfg.seed, options=cfg.stream_opts)]
    return spec, batches


def test_stream_mixing_ratio_labels_images_and_reproducibility():
    spec, b0 = _open_world(0)
    y = torch.cat([b.y for b in b0])
    x = torch.cat([b.x for b in b0])
    assert outliers.outlier_count(50, 0.2) == 13  # 12.5 rounds half up
    assert len(y) == 2 * (50 + 13)
    n_out = int((y == outliers.OUTLIER_LABEL).sum())
    assert n_out == 2 * outliers.outlier_count(50, 0.2)
    assert spec.info["outliers"]["per_segment"] == {"0/gaussian_noise": n_out // 2, "0/fog": n_out // 2}
    assert x.shape[1:] == b0[0].x.shape[1:] and 0 <= float(x.min()) and float(x.max()) <= 1
    # STAMP's noise: clip(N(0.5, 1)) in uint8 steps: P(N(0.5, 1) outside [0, 1]) = 2 * 0.3085 = 61.7 % at 0 or 1
    noise = x[y == outliers.OUTLIER_LABEL]
    assert ((noise * 255).round() - noise * 255).abs().max() < 1e-4
    assert 0.55 < float(((noise == 0) | (noise == 1)).float().mean()) < 0.68
    # the in-distribution samples are those of the stream without outliers, in the same order
    cfg = resolve(RunConfig(method="source", stream="digits-c", limit=50, seed=0, out="/tmp/unused"))
    plain_spec = st.select_domains(open_stream(cfg), ["gaussian_noise", "fog"])
    segs = st.schedule(cfg.setting, plain_spec, cfg.severity, cfg.rounds)
    plain = [b for s in segs for b in st.batches(st.segment_dataset(plain_spec, s, 50), s, 16, 0)]
    assert torch.equal(torch.cat([b.y for b in plain]), y[y != outliers.OUTLIER_LABEL])
    assert torch.equal(torch.cat([b.x for b in plain]), x[y != outliers.OUTLIER_LABEL])
    # reproducible by seed, different for another seed
    _, again = _open_world(0)
    assert torch.equal(torch.cat([b.x for b in again]), x) and torch.equal(torch.cat([b.y for b in again]), y)
    _, other = _open_world(1)
    assert not torch.equal(torch.cat([b.y for b in other]) == -1, y == -1)


def test_another_stream_as_outliers_and_ratio_changes_the_count():
    _, b = _open_world(0, ratio=0.5, source="digits-c")
    y = torch.cat([q.y for q in b])
    assert int((y == -1).sum()) == 100 and len(y) == 200
    x = torch.cat([q.x for q in b])[y == -1]
    assert x.shape[1:] == b[0].x.shape[1:] and x.std() > 0.1  # real images, fitted to the stream's shape


def test_fit_shape_channels_and_size():
    g = torch.rand(2, 1, 8, 8)
    rgb = outliers.fit_shape(g, (3, 16, 16))
    assert rgb.shape == (2, 3, 16, 16) and torch.equal(rgb[:, 0], rgb[:, 2])
    assert outliers.fit_shape(torch.rand(2, 3, 32, 32), (1, 28, 28)).shape == (2, 1, 28, 28)
    with pytest.raises(UserError, match="channels"):
        outliers.fit_shape(torch.rand(2, 3, 8, 8), (4, 8, 8))


def test_outliers_count_neither_as_errors_nor_as_correct():
    # in-distribution: 4 samples, 1 wrong; outliers: 2 samples (one "wrong", one matching class 0 by accident)
    logits = _logits([0, 1, 2, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    y = torch.tensor([0, 1, 2, 1, -1, -1])
    dom = torch.zeros(6, dtype=torch.long)
    m = OpenWorldMeter(ClassificationMeter(1, "cpu"))
    m.update(logits, y, dom)
    plain = ClassificationMeter(1, "cpu")
    plain.update(logits[:4], y[:4], dom[:4])
    s, p = m.summary(), plain.summary()
    assert s["error"] == pytest.approx(25.0) and s["n"] == 4 and s["ece"] == pytest.approx(p["ece"])
    assert m.batch_errors() == pytest.approx([25.0]) and m.batch_count == [4]
    assert m.domain_results()[0]["n"] == 4 and m.domain_results()[0]["n_outliers"] == 2
    # a batch of outliers only: no error, weight 0
    m.update(logits[4:], y[4:], dom[4:])
    assert m.batch_errors()[1] == 0.0 and m.batch_count[1] == 0 and m.summary()["error"] == pytest.approx(25.0)


def test_auroc_and_fpr95_against_hand_computed_values():
    # default score 1 - max softmax: in-dist conf .9 .8 .7 .6 -> .1 .2 .3 .4 ; outliers .5 .4 (conf .5, .6)
    logits = _logits([0, 1, 2, 0, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.5, 0.6])
    y = torch.tensor([0, 1, 2, 1, -1, -1])
    m = OpenWorldMeter(ClassificationMeter(1, "cpu"))
    m.update(logits, y, torch.zeros(6, dtype=torch.long))
    # pairs (outlier, in-dist) with outlier scored higher: .5 beats all 4; .4 beats 3 and ties 1 (half): 7.5 / 8
    s = m.summary()
    assert s["ood_auroc"] == pytest.approx(100 * 7.5 / 8)
    # 95 % of 4 in-dist -> all 4 accepted: threshold .4; outliers at <= .4: one of two
    assert s["ood_fpr95"] == pytest.approx(50.0)
    # an adapter's own score is used instead
    m2 = OpenWorldMeter(ClassificationMeter(1, "cpu"))
    m2.update(logits, y, torch.zeros(6, dtype=torch.long), ood_score=torch.tensor([0.0, 0.1, 0.2, 0.9, 0.5, 1.0]))
    # outlier .5 beats {0, .1, .2} (3 of 4), outlier 1.0 beats all 4: 7 / 8
    assert m2.summary()["ood_auroc"] == pytest.approx(87.5)
    # fpr_at_tpr: 20 in-dist 0..19, threshold = 19th lowest (ceil(.95*20)=19) = 18; outliers 10, 18, 19, 30 -> 2/4
    sc = np.array([*range(20), 10, 18, 19, 30], dtype=float)
    flag = np.array([False] * 20 + [True] * 4)
    assert fpr_at_tpr(sc, flag) == pytest.approx(50.0)
    assert roc_auc(sc, flag.astype(int)) == pytest.approx(100 * (10.5 + 18.5 + 19.5 + 20) / 80)  # ties count half
    assert fpr_at_tpr(sc[:20], flag[:20]) is None


def test_options_checked_and_unset_options_stay_out_of_the_run_id():
    base = {"gamma": 0.1}
    assert st.check_domains({**base, "outliers": None, "outlier_ratio": None}) == base
    assert st.check_domains({**base, "outliers": "noise", "outlier_ratio": None})["outlier_ratio"] == 0.2
    with pytest.raises(UserError, match="stream.outliers is not"):
        st.check_domains({"outlier_ratio": 0.3})
    with pytest.raises(UserError, match=r"\(0, 1\)"):
        st.check_domains({"outliers": "noise", "outlier_ratio": 1.0})
    with pytest.raises(UserError, match="Did you mean: digits-c"):
        st.check_domains({"outliers": "digits-cc"})
    a = run_id(RunConfig(method="source", stream="digits-c", out="/tmp/unused"))
    b = run_id(RunConfig(method="source", stream="digits-c", out="/tmp/unused", stream_opts={"outliers": "noise"}))
    c = run_id(RunConfig(method="source", stream="digits-c", out="/tmp/unused",
                         stream_opts={"outliers": "noise", "outlier_ratio": 0.2}))  # fmt: skip
    assert a != b and b == c


def test_segmentation_streams_refuse_outliers():
    from types import SimpleNamespace

    with pytest.raises(UserError, match="classification streams only"):
        outliers.check_task(SimpleNamespace(task="segmentation", name="x"), {"outliers": "noise"})
    outliers.check_task(SimpleNamespace(task="segmentation", name="x"), {})


@pytest.mark.parametrize("method", ["source", "tent", "stamp"])
def test_cli_run_records_in_distribution_error_and_auroc(tmp_path, one_thread, method):
    out = tmp_path / "runs"
    args = ["run", "--method", method, "--stream", "digits-c", "--limit", "64", "--batch-size", "32",
            "--domains", "gaussian_noise,fog", "--clean-eval", "off", "--set", "stream.outliers=noise",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    (folder,) = [p for p in out.iterdir() if (p / "summary.json").exists()]
    s = json.loads((folder / "summary.json").read_text())
    assert s["n_samples"] == 128 and 0 <= s["ood_auroc"] <= 100 and 0 <= s["ood_fpr95"] <= 100
    dom = pd.read_csv(folder / "domains.csv")
    assert dom["n"].tolist() == [64, 64] and dom["n_outliers"].tolist() == [16, 16]
    assert s["mean_error"] == pytest.approx(dom["error"].mean())
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["config"]["stream_opts"]["outliers"] == "noise" and cfg["stream_info"]["outliers"]["ratio"] == 0.2


@pytest.mark.slow  # about a minute: two runs and the site
def test_rows_in_the_metrics_table_and_on_the_page(tmp_path, one_thread):
    rows = {m.key: m for m in rundir.METRICS}
    assert rows["ood_auroc"].higher_is_better and not rows["ood_fpr95"].higher_is_better
    from tta_bench.leaderboard.site import build
    from tta_bench.runner import run

    out = tmp_path / "runs"
    for m in ("source", "norm"):
        opts = {"domains": "fog", "outliers": "uniform", "outlier_ratio": 0.25}
        cfg = RunConfig(method=m, stream="digits-c", limit=48, batch_size=32, clean_eval="off", stream_opts=opts)
        run(replace(cfg, out=str(out)), quiet=True)
    build(out, tmp_path / "site")
    runs = pd.read_csv(tmp_path / "site" / "csv" / "runs.csv")
    assert runs["ood_auroc"].between(0, 100).all()
    html = (tmp_path / "site" / "index.html").read_text()
    assert rows["ood_auroc"].title in html and rows["ood_fpr95"].title in html
