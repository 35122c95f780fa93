"""Run folders for a page like a researcher's: digits-c (real runs, test_leaderboard.shared_runs), cifar10-c
(synthesized in the run-folder schema, ResNet-20, with two EATA entries: its preset and an lr override),
pneumoniamnist-c (synthesized, test_metrics_page) plus a one-entry table of it, a realistic digits-c table (real
runs, fixed k = 2, so the method skips batches) and a CCC table (real runs on a tiny pool, as test_ccc).
Used by tests/test_browser.py; made once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from test_leaderboard import shared_runs
from test_metrics_page import MED_DOMAINS, make_run, pneumonia_run

CIFAR_DOMAINS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "snow",
    "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
# mean error per method entry: (method, lr override or None) -> error; EATA's preset (lr 0.001) is best
CIFAR = {("source", None): 43.5, ("norm", None): 20.4, ("tent", None): 18.6, ("eata", None): 17.9,
         ("eata", 0.01): 19.4}  # fmt: skip
EATA_PRESET = {"optimizer": "adam", "lr": 0.001, "d_margin": 0.4, "fisher_alpha": 1.0}
N_PER_DOMAIN = 8
_MADE: dict[str, Path] = {}


def cifar_run(root: Path, method: str, seed: int, lr: float | None = None) -> Path:
    err = CIFAR[(method, lr)]
    rows = [
        {"domain": d, "error": err + (i % 5) - 2 + 0.5 * seed, "n": N_PER_DOMAIN, "ece": 3.0}
        for i, d in enumerate(CIFAR_DOMAINS)
    ]
    opts, preset = {}, None
    if method == "eata":
        opts = {**EATA_PRESET, "momentum": 0.9, "steps": 1} | ({"lr": lr} if lr is not None else {})
        preset = {"requested": "auto", "stream_family": "cifar10-c", "family": "cifar10-c",
                  "source": "mariodoebler/test-time-adaptation:classification/cfgs/cifar10_c/eata.yaml",
                  "options": dict(EATA_PRESET), "overridden": {"lr": lr} if lr is not None else {}}  # fmt: skip
    elif method == "tent":
        opts = {"optimizer": "adam", "lr": 0.001, "steps": 1}
    forgetting = {"source": 0.0, "norm": 0.5, "tent": 1.5, "eata": 0.8}[method]
    return make_run(root, stream="cifar10-c", method=method, seed=seed, task="classification",
                    model="resnet20-cifar10", domains=list(CIFAR_DOMAINS), domain_rows=rows, extra={},
                    fingerprint="cifar10-c-fp", clean=(8.0, 8.0 + forgetting), method_opts=opts, preset=preset,
                    limit=N_PER_DOMAIN, batches_per_domain=2)  # fmt: skip


def realistic_runs(root: Path) -> None:
    """digits-c in the realistic setting, k fixed at 2 (stream.speed_ratio): 2 batches per domain, the method
    adapts on the first of each domain's two and predicts the second unadapted."""
    from tta_bench.config import RunConfig
    from tta_bench.runner import run

    for method in ("source", "tent"):
        cfg = RunConfig(method=method, stream="digits-c", setting="realistic", seed=0, limit=32, batch_size=16,
                        stream_opts={"speed_ratio": 2}, clean_eval="off", out=str(root))  # fmt: skip
        run(cfg, quiet=True)


def ccc_runs(root: Path, tmp: Path) -> None:
    """ccc-cifar on a 20-image pool with a tiny random BatchNorm CNN (as test_ccc), tent and source."""
    from PIL import Image
    from test_ccc import _tiny_cifar_net

    from tta_bench import RunConfig, run
    from tta_bench.models import MODELS

    rng = np.random.default_rng(0)
    for c in range(10):
        (tmp / "pool" / f"class{c}").mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tmp / "pool" / f"class{c}" / f"{k}.png"
            )
    MODELS.add("ccc-tiny-net", _tiny_cifar_net)
    try:
        opts = {"clean_dir": str(tmp / "pool"), "length": 120, "speed": 40, "calib_size": 10, "window": 40}
        for method in ("tent", "source"):
            run(RunConfig(method=method, stream="ccc-cifar", model="ccc-tiny-net", batch_size=16, stream_opts=opts,
                          clean_eval="off", out=str(root)), quiet=True)  # fmt: skip
    finally:
        MODELS._entries.pop("ccc-tiny-net")


def researcher_runs(tmp_path_factory) -> Path:
    """All of the module doc's runs under one folder (made once per session)."""
    if "runs" not in _MADE:
        root = tmp_path_factory.mktemp("page_runs")
        shutil.copytree(shared_runs(tmp_path_factory), root / "digits")
        for seed in (0, 1):
            for method, lr in CIFAR:
                cifar_run(root / "cifar", method, seed, lr)
            for method in ("source", "norm", "tent"):
                pneumonia_run(root / "pneumonia", method, seed)
        rows = [{"domain": d, "error": 20.0, "n": 16, "balanced_error": 30.0, "auc": 70.0} for d in MED_DOMAINS]
        make_run(root / "pneumonia", stream="pneumoniamnist-c", method="tent", seed=0, task="binary",
                 model="medical-resnet", domains=MED_DOMAINS, domain_rows=rows,
                 extra={"balanced_error": 30.0, "auc": 70.0}, limit=16)  # fmt: skip  # a one-entry table
        realistic_runs(root / "realistic")
        ccc_runs(root / "ccc", tmp_path_factory.mktemp("ccc_pool"))
        _MADE["runs"] = root
    return _MADE["runs"]
