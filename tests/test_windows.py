"""Long-horizon metrics: error per window of images, worst full window, the collapse flag (tta_bench.protocols)."""

from __future__ import annotations

import pytest

from tta_bench.protocols import COLLAPSE_MARGIN, chance_error, long_horizon, window_errors


def test_windows_weight_batches_by_size_and_assign_a_batch_to_the_window_of_its_first_image():
    # 4 batches of 50: windows of 100 images = batches (0,1) and (2,3)
    rows = window_errors([50, 50, 50, 50], [10.0, 30.0, 0.0, 100.0], 100)
    assert [r["window"] for r in rows] == [0, 1] and [r["n"] for r in rows] == [100, 100]
    assert rows[0]["error"] == pytest.approx(20.0) and rows[1]["error"] == pytest.approx(50.0)
    # unequal batches: 30 + 10 images; the error is per image, not the mean of batch errors
    (row,) = window_errors([30, 10], [0.0, 100.0], 1000)
    assert row["error"] == pytest.approx(25.0) and row["start"] == 0
    # a batch that straddles a boundary belongs to the window of its first image
    rows = window_errors([64, 64], [0.0, 50.0], 100)
    assert [(r["window"], r["n"]) for r in rows] == [(0, 128)]
    with pytest.raises(ValueError):
        window_errors([1], [0.0], 0)


def test_worst_window_ignores_a_short_tail_and_the_flag_follows_the_threshold():
    counts, errors = [100, 100, 20], [30.0, 60.0, 100.0]  # the 20-image tail is below half a window
    out = long_horizon(counts, errors, window=100, num_classes=10)
    assert out["window_errors"] == pytest.approx([30.0, 60.0, 100.0])
    assert out["worst_window"] == 1 and out["worst_window_error"] == pytest.approx(60.0)
    assert out["collapse_threshold"] == pytest.approx(90.0 - COLLAPSE_MARGIN) and out["collapsed"] is False
    collapsed = long_horizon([100, 100], [20.0, 86.0], window=100, num_classes=10)
    assert collapsed["collapsed"] is True and collapsed["worst_window"] == 1
    # a stream shorter than half a window is still judged on what it has
    assert long_horizon([10], [95.0], window=1000, num_classes=10)["collapsed"] is True


def test_chance_error():
    assert chance_error(10) == pytest.approx(90.0) and chance_error(1000) == pytest.approx(99.9)
