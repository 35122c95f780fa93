"""Aggregate runs over seeds: mean ± std, 95 % confidence intervals, paired tests against baselines.

- mean and sample standard deviation (ddof=1) over seeds, and `n_seeds`;
- 95 % confidence interval of the mean over seeds: Student t, `scipy.stats.t.interval(0.95, n-1, mean, std/sqrt(n))`
  (NaN with one seed);
- paired test against the table's `source` and `norm` rows (same model): the per-domain errors paired by
  (seed, round, domain), Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, two-sided). `delta_vs_<b>` is
  the mean paired difference (entry − baseline, percentage points; negative = fewer errors), `p_vs_<b>` its
  p-value, `sig_vs_<b>` is True when p < ALPHA. Non-parametric because per-domain errors are far from normal.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype

from leaderboard.collect import FIXED, IDENTITY, METRICS

BASELINES = ("source", "norm")
ALPHA = 0.05
AGGREGATED = ("mean_error", "ece", "forgetting", "clean_error_after", "adapt_mb", "peak_device_mb", "images_per_s")


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


def versus(domains: pd.DataFrame, model: str, entry: str, baseline: str) -> tuple[float, float, int]:
    """Paired comparison of `entry` with `baseline` (an entry name) for one table's per-domain errors."""
    sub = domains[domains["model"] == model]
    a = sub[sub["entry"] == entry][PAIR_KEYS + ["error"]]
    b = sub[sub["entry"] == baseline][PAIR_KEYS + ["error"]]
    if a.empty or b.empty:
        return math.nan, math.nan, 0
    m = a.merge(b, on=PAIR_KEYS, suffixes=("", "_base"))
    return paired_test(m["error"].to_numpy(), m["error_base"].to_numpy())


def summarize(runs: pd.DataFrame, domains: pd.DataFrame) -> pd.DataFrame:
    """One row per (table, model, entry): seeds aggregated as described in the module docstring.

    Columns: table, stream, setting, model, method, entry, n_seeds, seeds, `<metric>_mean` / `_std` for
    AGGREGATED metrics and any extra scalar summary keys, mean_error_ci_low / _ci_high, `err:<domain>`
    (mean over seeds), and per baseline delta_vs_<b>, p_vs_<b>, n_pairs_vs_<b>, sig_vs_<b>.
    """
    rows = []
    dom_cols = [c for c in runs.columns if c.startswith("err:")]
    known = set(IDENTITY) | set(FIXED) | set(METRICS)
    extras = [c for c in runs.columns if c not in known and not c.startswith("err:") and is_numeric_dtype(runs[c])]
    for (table, model, entry), g in runs.groupby(["table", "model", "entry"], sort=False):
        row = {
            "table": table,
            "stream": g["stream"].iat[0],
            "setting": g["setting"].iat[0],
            "model": model,
            "method": g["method"].iat[0],
            "entry": entry,
            "n_seeds": int(g["seed"].nunique()),
            "seeds": " ".join(str(s) for s in sorted(g["seed"].unique())),
        }
        for k in (*AGGREGATED, *extras):
            mean, std, lo, hi = mean_std_ci(g[k])
            row[f"{k}_mean"], row[f"{k}_std"] = mean, std
            if k == "mean_error":
                row["mean_error_ci_low"], row["mean_error_ci_high"] = lo, hi
        for c in dom_cols:
            row[c] = float(g[c].mean()) if g[c].notna().any() else math.nan
        tdom = domains[domains["table"] == table]
        for b in BASELINES:
            delta, p, n = versus(tdom, model, entry, b) if entry != b else (math.nan, math.nan, 0)
            row[f"delta_vs_{b}"], row[f"p_vs_{b}"], row[f"n_pairs_vs_{b}"] = delta, p, n
            row[f"sig_vs_{b}"] = bool(p < ALPHA) if not math.isnan(p) else False
        rows.append(row)
    out = pd.DataFrame(rows)
    if not out.empty:
        out = out.sort_values(["table", "mean_error_mean"], kind="stable").reset_index(drop=True)
    return out
