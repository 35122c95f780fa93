"""SegmentationMeter: mIoU / pixel accuracy against hand-computed confusion matrices."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tta_bench.metrics import METERS, SegmentationMeter, make_meter, miou_from_confusion


def onehot_logits(pred: torch.Tensor, c: int) -> torch.Tensor:
    """(N,H,W) class ids -> (N,C,H,W) logits whose argmax is `pred`."""
    return torch.nn.functional.one_hot(pred, c).permute(0, 3, 1, 2).float() * 5


def test_registered_and_for_spec():
    assert METERS["segmentation"] is SegmentationMeter
    spec = SimpleNamespace(task="segmentation", num_classes=3, ignore_index=7, class_names=["road", "sky", "car"])
    m = make_meter(spec, 2, "cpu")
    assert (m.num_classes, m.ignore_index, m.class_names) == (3, 7, ["road", "sky", "car"])


def test_hand_computed_confusion_with_ignore_and_absent_class():
    # 4 classes; class 3 appears neither in the labels nor in the predictions -> excluded from the mean.
    y = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 0]]])  # (1,2,4), one ignored pixel
    p = torch.tensor([[[0, 1, 1, 1], [2, 0, 3, 0]]])  # the ignored pixel predicts 3: must not count
    m = SegmentationMeter(1, "cpu", class_names=["a", "b", "c", "d"])
    m.update(onehot_logits(p, 4), y, torch.zeros(1, dtype=torch.long))
    conf = m.confusion()
    want = torch.zeros(4, 4, dtype=torch.long)
    for gt, pr in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (2, 0), (0, 0)]:
        want[gt, pr] += 1
    assert torch.equal(conf, want)
    # IoU: class 0: TP 2, FP 1 (gt 2 -> 0), FN 1 (0 -> 1): 2/4; class 1: TP 2, FP 1: 2/3; class 2: 1/2; class 3: NaN
    s = m.summary()
    assert s["miou"] == pytest.approx(100 * (0.5 + 2 / 3 + 0.5) / 3)
    assert s["error"] == pytest.approx(100 - s["miou"])
    assert s["pixel_acc"] == pytest.approx(100 * 5 / 7)
    assert s["iou_a"] == pytest.approx(50.0) and s["iou_b"] == pytest.approx(200 / 3)
    assert math.isnan(s["iou_d"])
    assert s["n"] == 1 and s["n_pixels"] == 7


def test_class_predicted_but_absent_counts_as_zero():
    y = torch.zeros(1, 2, 2, dtype=torch.long)
    p = torch.tensor([[[0, 0], [0, 1]]])  # class 1 predicted, never in the ground truth: IoU 0, in the mean
    m = SegmentationMeter(1, "cpu")
    m.update(onehot_logits(p, 3), y, torch.zeros(1, dtype=torch.long))
    iou, miou = miou_from_confusion(m.confusion())
    assert iou[0] == pytest.approx(0.75) and iou[1] == 0 and math.isnan(iou[2])
    assert float(miou) == pytest.approx(0.375)


def test_per_domain_and_per_batch_accumulation():
    g = torch.Generator().manual_seed(0)
    c, meter = 5, SegmentationMeter(3, "cpu")
    ys, ps, ds = [], [], []
    for _ in range(4):
        y = torch.randint(0, c, (2, 6, 7), generator=g)
        y[:, 0, :3] = 255
        p = torch.randint(0, c, (2, 6, 7), generator=g)
        d = torch.randint(0, 2, (2,), generator=g) * 2  # domains 0 and 2 only
        meter.update(onehot_logits(p, c), y, d)
        ys.append(y), ps.append(p), ds.append(d)
    y, p, d = torch.cat(ys), torch.cat(ps), torch.cat(ds)
    res = meter.domain_results()
    assert set(res) == {0, 2}
    for dom in (0, 2):
        sel = d == dom
        yv, pv = y[sel], p[sel]
        v = yv != 255
        want = torch.zeros(c, c, dtype=torch.long)
        for a, b in zip(yv[v].tolist(), pv[v].tolist()):
            want[a, b] += 1
        assert torch.equal(meter.confusion(dom), want)
        assert res[dom]["n"] == int(sel.sum())
        assert res[dom]["miou"] == pytest.approx(100 * float(miou_from_confusion(want)[1]))
    errs = meter.batch_errors()
    assert len(errs) == 4 and meter.batch_count == [2, 2, 2, 2]
    v = ys[1] != 255
    one = torch.bincount(c * ys[1][v] + ps[1][v], minlength=c * c).view(c, c)
    assert errs[1] == pytest.approx(100 - 100 * float(miou_from_confusion(one)[1]))


def test_perfect_prediction_and_ece_range():
    y = torch.randint(0, 3, (2, 4, 4))
    m = SegmentationMeter(1, "cpu")
    m.update(onehot_logits(y, 3) * 10, y, torch.zeros(2, dtype=torch.long))
    s = m.summary()
    assert s["error"] == pytest.approx(0.0) and s["pixel_acc"] == pytest.approx(100.0)
    assert 0 <= s["ece"] < 1
