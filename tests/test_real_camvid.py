"""Real offline check: ESPNet-CamVid (released weights) on the real CamVid test split, clean and camvid-c.

Slow on a shared CPU (minutes): marked `slow` and `real`. Figures measured (2-core CPU, one thread):
clean 55.86 mIoU on all 233 test images at 480×360 (published 55.64). camvid-c, severity 3, continual,
first 16 images per corruption, model input resized to 240×180 (`model.inference=resize`, `model.size=180`;
labels scored at 480×360), batch 8: mean mIoU source 20.29, tent 20.81, alpha_bn 24.73, norm 26.12 (Tent beats
norm on the first three corruptions, then degrades to about the source level: continual error accumulation);
unchanged by camvid-c's held-out source split (the last 40 test images; the stream shows the first 16).
ecotta (defaults: K=4 partitions level2 [2] + level3 [2,3,3], identity init, 10 warm-up epochs at lr 5e-2 on
the 40 held-out images, ~40 s; test-time SGD lr 5e-3): 22.55, above source, below norm: the warm-up on 40
frames of another sequence (Seq05VD; the stream shows 0001TP) costs it; without warm-up (`warmup_epochs=0`)
26.70, the best of the five. Before the meta networks acted in normalised units (methods/_meta.py, `scale`),
their SGD steps diverged on ESPNet's small features (partition output std ~0.03): 3.99.

    OMP_NUM_THREADS=1 python -m pytest tests/test_real_camvid.py -m slow -s -q     # ~4 min, prints the table
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tta_bench.config import RunConfig
from tta_bench.data.segmentation import camvid
from tta_bench.metrics import SegmentationMeter
from tta_bench.models import MODELS, ModelContext
from tta_bench.runner import run

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny convolutions: one intra-op thread is faster, and far faster on a shared, loaded CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def espnet_camvid(shared: Path, **opts):
    ctx = ModelContext(shared / "models", shared / "cache", torch.device("cpu"))
    return MODELS.get("espnet-camvid").factory(SimpleNamespace(num_classes=11), ctx, **opts).eval()


def test_clean_miou_matches_the_published_figure(shared_data):
    model = espnet_camvid(shared_data)
    ds = camvid(shared_data / "camvid", "test")
    assert len(ds) == 233
    meter = SegmentationMeter(1, "cpu", 11)
    with torch.no_grad():
        for i in range(0, len(ds), 8):
            xs, ys = zip(*(ds[j] for j in range(i, min(i + 8, len(ds)))))
            meter.update(model(torch.stack(xs)), torch.stack(ys), torch.zeros(len(xs), dtype=torch.long))
    s = meter.summary()
    print(f"ESPNet-CamVid clean: mIoU {s['miou']:.2f}  pixel acc {s['pixel_acc']:.2f}")
    assert abs(s["miou"] - 55.64) < 1.5  # published 55.64; measured 55.86 with the CamVid test statistics


def camvid_c(shared: Path, out: Path, method: str, **method_opts):
    cfg = RunConfig(
        method=method,
        stream="camvid-c",
        severity=3,
        batch_size=8,
        limit=16,
        out=str(out),
        data_dir=str(shared),
        model_opts={
            "weights": str(shared / "models" / "espnet" / "espnet_p_2_q_8_camvid.pth"),
            "inference": "resize",
            "size": 180,
        },
        method_opts=method_opts,
        device="cpu",
    )
    return run(cfg, quiet=True)


def test_camvid_c_severity3_ordering(shared_data, tmp_path):
    from tta_bench import methods

    names = [m for m in ("source", "norm", "alpha_bn", "tent", "ecotta") if m in methods.names()]
    res = {m: camvid_c(shared_data, tmp_path, m) for m in names}
    table = {m: r.domains.set_index("domain")["miou"] for m, r in res.items()}
    for m, r in res.items():
        print(f"{m:9s} mean mIoU {100 - r.summary['mean_error']:.2f}  " + " ".join(f"{v:.1f}" for v in table[m]))
    err = {m: r.summary["mean_error"] for m, r in res.items()}
    # Measured ordering: test-batch BN statistics help most; alpha_bn (0.9 source weight) a little less; tent is
    # best early (first corruptions) but accumulates errors over the 15 continual domains.
    assert err["norm"] < err["source"] - 3
    assert abs(err["tent"] - err["source"]) < 2.5  # measured 0.5 apart: tent ends up no better than source
    first3 = {m: float(t.iloc[:3].mean()) for m, t in table.items()}  # noise corruptions, seen first
    assert first3["tent"] > first3["norm"] and err["tent"] > err["norm"]
    if "alpha_bn" in err:
        assert err["norm"] < err["alpha_bn"] < err["tent"]
    assert table["norm"]["brightness"] > table["source"]["brightness"] + 10
    if "ecotta" in res:  # warm-up on the 40 held-out test images (no CamVid train split offline)
        info = res["ecotta"].summary
        print(f"ecotta warm-up {info['prepare_s']:.1f} s (source split: the last 40 CamVid test images)")
        cold = camvid_c(shared_data, tmp_path, "ecotta", warmup_epochs=0)
        err["ecotta-no-warm-up"] = cold.summary["mean_error"]
        print(f"ecotta without warm-up: mean mIoU {100 - err['ecotta-no-warm-up']:.2f}")
        # Measured: 22.55 with the defaults (above source 20.29), 26.70 without the warm-up on held-out frames of
        # another sequence (norm 26.12): adapting never collapses, and the meta networks alone match norm.
        assert err["ecotta"] < err["source"] - 1
        assert err["ecotta-no-warm-up"] < err["norm"] + 1 and err["ecotta-no-warm-up"] < err["ecotta"]
        assert float(table["ecotta"].min()) > 10  # no domain collapses (before the fix: 2-4 mIoU everywhere)
