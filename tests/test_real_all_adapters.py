"""Real offline check (issue 5): ResNet-20 on CIFAR-10-C generated from `../shared/data/cifar10-test-jpeg`,
severity 5, continual, for the eleven classification adapters. Every adapter except `source` and `lame`
(output-only) must beat `source` on mean error. Slow: CoTTA runs 34 forwards per batch.

EcoTTA's warm-up and EATA's Fisher use the stream's source split: the held-out last 1,000 JPEG test
images, which the stream never shows (see tta_bench/data/cifar.py, `stream.holdout`).

    python -m pytest tests/test_real_all_adapters.py -m slow -s     # prints the per-domain table

Measured (1,000/domain, one thread, 26 min): mean error source 57.37, norm 39.13, tent 36.53, alpha_bn 45.99,
core 44.73, ecotta 39.22, eata 39.14, sar 38.89, cotta 32.46, rotta 51.63, lame 77.13 (ecotta re-measured
alone after its meta networks moved to normalised units; forgetting 5.4 pp, rotta 4.8, the others ≤ 1).
"""

from __future__ import annotations

import pandas as pd
import pytest

from tta_bench import RunConfig, run

pytestmark = [pytest.mark.real, pytest.mark.slow]

ADAPTERS = ("source", "norm", "tent", "alpha_bn", "core", "ecotta", "eata", "sar", "cotta", "rotta", "lame")
# Per domain. RoTTA updates once per 64 samples and moves its robust-BN statistics by α = 0.05 per update:
# at 200/domain (3 updates) they lag a domain behind (58.8 % vs source 56.7 %); at 1,000 it adapts (51.6 %).
LIMIT = 1000


@pytest.fixture(scope="module")
def table(shared_data, tmp_path_factory) -> pd.DataFrame:
    (weights,) = sorted((shared_data / "models" / "cifar10-resnet").glob("resnet20-*.th"))
    out, cols = tmp_path_factory.mktemp("runs"), {}
    for method in ADAPTERS:
        cfg = RunConfig(
            method=method,
            stream="cifar10-c",
            model="resnet20-cifar10",
            severity=5,
            limit=LIMIT,
            stream_opts={"clean_dir": str(shared_data / "cifar10-test-jpeg")},
            model_opts={"weights": str(weights)},
            clean_eval="end",
            out=str(out),
        )
        s = run(cfg, quiet=True).summary
        cols[method] = {**s["domain_errors"], "mean": s["mean_error"], "forgetting": s["forgetting"]}
    table = pd.DataFrame(cols)
    print(f"\nResNet-20, CIFAR-10-C (generated from the JPEG test set), severity 5, continual, {LIMIT}/domain")
    print(table.round(2).to_string())
    return table


@pytest.mark.parametrize("method", [m for m in ADAPTERS if m not in ("source", "lame")])
def test_adapter_beats_source(table, method):
    assert table.loc["mean", method] < table.loc["mean", "source"], table.loc["mean"].to_dict()
