"""The baselines end to end on the embedded `digits-c` stream through the runner (slow: ~40 s each on CPU).

Figures at --limit 64, batch 64, seed 0 (CPU, OMP_NUM_THREADS=1): mean error % source 45.6, norm 8.1,
eta / eata / sar 8.1 (official ImageNet defaults: d_margin 0.05 and lr 0.00025 leave them at BN-adapt),
cotta 20.0, rotta 41.2, lame 54.3.
"""

from __future__ import annotations

import json

import pytest

from tta_bench.config import RunConfig
from tta_bench.runner import run

BASELINES = ["eata", "eta", "sar", "cotta", "rotta", "lame"]
FAST = {"cotta": {"n_aug": 4}}


@pytest.fixture(scope="module")
def source_error(tmp_path_factory) -> float:
    cfg = RunConfig(method="source", stream="digits-c", limit=64, out=str(tmp_path_factory.mktemp("runs")))
    return run(cfg, quiet=True).summary["mean_error"]


@pytest.mark.slow
@pytest.mark.parametrize("method", BASELINES)
def test_baseline_runs_on_digits_c(method: str, runs_dir, source_error: float) -> None:
    cfg = RunConfig(method=method, stream="digits-c", limit=64, out=str(runs_dir), method_opts=FAST.get(method, {}))
    res = run(cfg, quiet=True)
    s = json.loads((res.folder / "summary.json").read_text())
    assert s["method"] == method and s["n_samples"] == 15 * 64 and len(s["domain_errors"]) == 15
    assert 0 <= s["mean_error"] <= 100 and s["adapt_mb"] > 0
    if method != "lame":  # BN-based adaptation beats the unadapted source model on corrupted digits
        assert s["mean_error"] < source_error
    if method == "eata":
        assert json.loads((res.folder / "config.json").read_text())["prepare"]["cached"] is False
