"""Aggregate runs over seeds: mean ± std, 95 % confidence intervals, paired tests against baselines.

- mean and sample standard deviation (ddof=1) over seeds, and `n_seeds`;
- 95 % confidence interval of the mean over seeds: Student t, `scipy.stats.t.interval(0.95, n-1, mean, std/sqrt(n))`
  (NaN with one seed);
- paired test against the table's `source` and `norm` rows (same model): the per-domain errors (or the table's
  headline metric where domains.csv holds it per domain: mIoU, balanced error) paired by
  (seed, round, domain), Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, two-sided). `delta_vs_<b>` is
  the mean paired difference (entry − baseline, percentage points; for an error negative is better, for mIoU
  positive), `p_vs_<b>` its
  p-value, `sig_vs_<b>` is True when p < ALPHA. Non-parametric because per-domain errors are far from normal.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype

from tta_bench import rundir
from tta_bench.leaderboard.collect import FIXED, IDENTITY

BASELINES = ("source", "norm")
# Metrics a run reports pooled over the whole stream (summary.json) and per domain (domains.csv): the page shows the
# pooled one; summary.csv also keeps `<key>_domains_mean` / `_domains_std`, the mean over domains (over seeds).
DOMAIN_MEANS = ("auc", "balanced_error")
ALPHA = 0.05


def mean_std_ci(values: np.ndarray | pd.Series, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, CI low, CI high) of the non-NaN `values`; std and CI are NaN for fewer than 2."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return (math.nan,) * 4
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(v.std(ddof=1))
    if std == 0.0:
        return mean, 0.0, mean, mean
    from scipy import stats  # lazy: scipy.stats probes sys.modules['torch'] on import

    lo, hi = stats.t.interval(confidence, len(v) - 1, loc=mean, scale=std / math.sqrt(len(v)))
    return mean, std, float(lo), float(hi)


def paired_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """(mean of a − b, two-sided Wilcoxon signed-rank p-value, number of pairs); p = 1 when a == b."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) == 0:
        return math.nan, math.nan, 0
    if np.allclose(d, 0.0):
        return 0.0, 1.0, len(d)
    if len(d) < 2:
        return float(d.mean()), math.nan, len(d)
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample / ties notes
        p = stats.wilcoxon(d, zero_method="zsplit", alternative="two-sided").pvalue
    return float(d.mean()), float(p), len(d)


PAIR_KEYS = ["seed", "round", "segment", "domain"]


def versus(
    domains: pd.DataFrame, model: str, entry: str, baseline: str, metric: str = "error"
) -> tuple[float, float, int]:
    """Paired comparison of `entry` with `baseline` (an entry name) on one table's per-domain `metric`."""
    sub = domains[domains["model"] == model]
    a = sub[sub["entry"] == entry][PAIR_KEYS + [metric]]
    b = sub[sub["entry"] == baseline][PAIR_KEYS + [metric]]
    if a.empty or b.empty:
        return math.nan, math.nan, 0
    m = a.merge(b, on=PAIR_KEYS, suffixes=("", "_base"))
    return paired_test(m[metric].to_numpy(), m[f"{metric}_base"].to_numpy())


def table_headline(runs: pd.DataFrame) -> tuple[rundir.Metric, ...]:
    """The headline metrics of one table's runs (`tta_bench.rundir.headline` of their task and summary keys)."""
    tasks = runs["task"].dropna() if "task" in runs else pd.Series(dtype=object)
    keys = [c for c in runs.columns if is_numeric_dtype(runs[c]) and runs[c].notna().any()]
    return rundir.headline(tasks.iat[0] if len(tasks) else None, keys)


def paired_metric(domains: pd.DataFrame, metric: rundir.Metric) -> str:
    """The domains.csv column the paired tests use: the table's headline metric where it is recorded per domain
    (mIoU, balanced error), else the per-domain error."""
    col = "error" if metric.key == "mean_error" else metric.key
    return col if col in domains and domains[col].notna().any() else "error"


def summarize(runs: pd.DataFrame, domains: pd.DataFrame) -> pd.DataFrame:
    """One row per (table, model, entry): seeds aggregated as described in the module docstring.

    Columns: table, stream, setting, model, method, entry, n_seeds, seeds, `headline` (the table's headline metric
    keys, comma-separated; the first ranks the table), `<metric>_mean` / `_std` for the aggregated metrics of
    rundir.METRICS and any other scalar summary keys, `<headline>_ci_low` / `_ci_high` (and mean_error's),
    `err:<domain>` (mean over seeds), `<key>_domains_mean` / `_domains_std` for DOMAIN_MEANS, and per baseline
    delta_vs_<b>, p_vs_<b>, n_pairs_vs_<b>, sig_vs_<b> on the
    per-domain `paired_metric` column.
    Rows are ranked within each table by its first headline metric in its direction (best first). Runs that repeat
    a (table, model, entry, seed), e.g. the same data reached through another path, count once (the last read).
    """
    runs = runs.drop_duplicates(["table", "model", "entry", "seed"], keep="last")
    frames = []
    dom_cols = [c for c in runs.columns if c.startswith("err:")]
    known = set(IDENTITY) | set(FIXED) | set(rundir.core_keys())
    extras = [c for c in runs.columns if c not in known and not c.startswith("err:") and is_numeric_dtype(runs[c])]
    for table, t_runs in runs.groupby("table", sort=False):
        head = table_headline(t_runs)
        tdom = domains[domains["table"] == table]
        tdom = tdom[tdom["run_id"].isin(t_runs["run_id"])] if "run_id" in tdom else tdom
        pcol = paired_metric(tdom, head[0])
        rows = []
        for (model, entry), g in t_runs.groupby(["model", "entry"], sort=False):
            row = {
                "table": table,
                "stream": g["stream"].iat[0],
                "setting": g["setting"].iat[0],
                "model": model,
                "method": g["method"].iat[0],
                "entry": entry,
                "n_seeds": int(g["seed"].nunique()),
                "seeds": " ".join(str(s) for s in sorted(g["seed"].unique())),
                "headline": ",".join(m.key for m in head),
                "paired_metric": pcol,
            }
            for k in dict.fromkeys((*(k for k in rundir.aggregated_keys() if k in g), *extras)):
                mean, std, lo, hi = mean_std_ci(g[k])
                row[f"{k}_mean"], row[f"{k}_std"] = mean, std
                if k == "mean_error" or any(m.key == k for m in head):
                    row[f"{k}_ci_low"], row[f"{k}_ci_high"] = lo, hi
            for k in DOMAIN_MEANS:  # the page shows the pooled value; the mean over domains is kept here
                if k in tdom and tdom[k].notna().any() and "run_id" in tdom:
                    per_run = tdom.groupby("run_id")[k].mean()
                    mean, std, _, _ = mean_std_ci([per_run.get(r, math.nan) for r in g["run_id"]])
                    row[f"{k}_domains_mean"], row[f"{k}_domains_std"] = mean, std
            for c in dom_cols:
                row[c] = float(g[c].mean()) if g[c].notna().any() else math.nan
            for b in BASELINES:
                delta, p, n = versus(tdom, model, entry, b, pcol) if entry != b else (math.nan, math.nan, 0)
                row[f"delta_vs_{b}"], row[f"p_vs_{b}"], row[f"n_pairs_vs_{b}"] = delta, p, n
                row[f"sig_vs_{b}"] = bool(p < ALPHA) if not math.isnan(p) else False
            rows.append(row)
        frame = pd.DataFrame(rows)
        rank = f"{head[0].key}_mean"
        if rank in frame:
            frame = frame.sort_values(rank, ascending=not head[0].higher_is_better, kind="stable", na_position="last")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
