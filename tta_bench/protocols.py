"""Evaluation protocols over a stream: the compute-aware `realistic` setting and long-horizon (windowed) metrics.

Pure functions and small classes; the runner only asks `RealisticClock.step(adapter, x)` for the predictions of
a batch and hands the per-batch errors to `long_horizon(...)` after the stream.

Realistic setting (Alfarra et al., "Evaluation of Test-Time Adaptation Under Computational Time Constraints",
ICML 2024; official code MotasemAlfarra/Online_Test_Time_Adaptation, `utils/online_eval.py`,
`delayed_eval_online` at 8e21fad, called once per corruption): the stream does not wait for the method. When
the method is free (`delay == 0`) it adapts on the batch and returns its predictions; its relative cost
``k = t_method / t_source`` is measured on that same batch (both forwards timed, CUDA synchronised around each),
and the next ``max(0, ceil(k * eta) - 1)`` batches arrive while it is busy: they are predicted by the *current*
model without adaptation (`model.model(images)` in the official code; here `adapter.predict(x)`, which also
restores buffers so the no-adapt prediction has no side effect). With a given ``stream.speed_ratio=k`` the same
rule runs with the fixed ratio (``eta = 1``): the method adapts on exactly every ``ceil(k)``-th batch, independent
of the device. A measured ratio makes a run device-dependent (summary.json records the median over adapted
batches; a given ratio is part of the run id). Every domain starts with the method free (the official loop
restarts with ``delay = 0`` per corruption).

Long-horizon metrics (every run): the error of consecutive windows of ``window`` images (at batch granularity:
a batch belongs to the window its first image falls in), the worst full window, and ``collapsed`` when a full
window's error is within ``COLLAPSE_MARGIN`` percentage points of chance error ``100 (1 - 1/C)`` or above it
(RDumb's "collapse": the adapted model ends at chance level; the paper gives no numeric threshold, this one is
ours). A trailing window shorter than half a window is reported but not used for the worst window or the flag.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from tta_bench.kernel import UserError
from tta_bench.kernel.options import MAX_IMAGES

# the schema's window rule and constants (the leaderboard uses them too)
from tta_bench.rundir import COLLAPSE_MARGIN, DEFAULT_WINDOW, window_errors

MAX_SPEED_RATIO = 1e6  # a method a million times slower than the source forward adapts on the first batch only


def check_stream_options(setting: str, opts: dict[str, Any]) -> None:
    """UserError for a bad `stream.window`, or a `stream.speed_ratio` that is not a finite number in
    (0, MAX_SPEED_RATIO] or is given outside the realistic setting (RunConfig checks the user's options with it).
    Each option is checked whatever the others are."""
    k = opts.get("speed_ratio")
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= MAX_SPEED_RATIO):
        raise UserError(
            f"stream.speed_ratio must be a positive number up to {MAX_SPEED_RATIO:g} (the method's cost relative to "
            f"the source model's forward, e.g. 2 = adapt on every 2nd batch), got {k!r}. Omit it to measure it."
        )
    if k is not None and setting != "realistic":
        raise UserError(
            f"stream.speed_ratio={k!r} only applies to --setting realistic (the compute-aware protocol); "
            f"drop it or pass --setting realistic."
        )
    w = opts.get("window", DEFAULT_WINDOW)
    if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_IMAGES:
        raise UserError(
            f"stream.window must be a positive number of images up to {MAX_IMAGES:,}, got {w!r} "
            "(e.g. stream.window=500)."
        )


def clock_for(setting: str, opts: dict[str, Any], device: torch.device | None = None) -> RealisticClock | None:
    """The realistic setting's clock for resolved stream options (`speed_ratio` None: measured), else None."""
    if setting != "realistic":
        return None
    k = opts.get("speed_ratio")
    return RealisticClock(None if k is None else float(k), device=device)


def adapted_summary(clock: RealisticClock | None, n_batches: int) -> dict[str, Any]:
    """summary.json keys every run has: batches adapted, and the ratio (None outside the realistic setting)."""
    if clock is None:
        return {"speed_ratio": None, "speed_ratio_measured": None, "batches_adapted": n_batches}
    return clock.summary()


class RealisticClock:
    """The official `delayed_eval_online` loop, one batch at a time.

    `speed_ratio=None` measures ``k`` on every adapted batch (the paper); a number fixes it. `eta` is the
    official stream-speed factor (1 in the paper's main results).
    """

    def __init__(self, speed_ratio: float | None = None, eta: float = 1.0, device: torch.device | None = None):
        if speed_ratio is not None and speed_ratio <= 0:
            raise ValueError(f"speed_ratio must be positive, got {speed_ratio}")
        self.speed_ratio, self.eta = speed_ratio, eta
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.delay = 0  # batches still arriving while the method is busy
        self.adapted = 0
        self.skipped = 0
        self.ratios: list[float] = []  # measured k of every adapted batch

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _timed(self, fn, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        self._sync()
        t0 = time.perf_counter()
        out = fn(x)
        self._sync()
        return out, time.perf_counter() - t0

    def start_segment(self) -> None:
        """A new domain starts with the method free (the official loop is called once per corruption, delay 0)."""
        self.delay = 0

    def step(self, adapter, x: torch.Tensor) -> torch.Tensor:
        """Predictions for batch `x`: the adapted output when the method is free, else the no-adapt one."""
        if self.delay > 0:  # the previous adaptation is still running: predict with the current model
            self.delay -= 1
            self.skipped += 1
            return adapter.predict(x)
        if self.speed_ratio is None:
            out, t_method = self._timed(adapter, x)
            _, t_source = self._timed(adapter.predict, x)
            ratio = t_method / max(t_source, 1e-12)
            self.ratios.append(ratio)
        else:
            out, ratio = adapter(x), self.speed_ratio
        self.adapted += 1
        self.delay += skipped_after(ratio, self.eta)
        return out

    def summary(self) -> dict[str, Any]:
        """summary.json keys of the realistic setting."""
        measured = self.speed_ratio is None
        ratio = _median(self.ratios) if measured else self.speed_ratio
        return {
            "speed_ratio": ratio,
            "speed_ratio_measured": measured,
            "speed_ratio_mean": sum(self.ratios) / len(self.ratios) if self.ratios else ratio,
            "batches_adapted": self.adapted,
            "batches_not_adapted": self.skipped,
        }


def skipped_after(ratio: float, eta: float = 1.0) -> int:
    """Batches that arrive while a method of relative cost `ratio` adapts: ``max(0, ceil(ratio * eta) - 1)``.

    A tolerance of 1e-9 keeps exact integers exact (``ceil(3.0000000001) - 1`` would be 3, not 2).
    """
    return max(0, math.ceil(ratio * eta - 1e-9) - 1)


def _median(v: Sequence[float]) -> float | None:
    if not v:
        return None
    s = sorted(v)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def chance_error(num_classes: int) -> float:
    """Error (%) of uniform guessing over `num_classes` classes."""
    return 100.0 * (1.0 - 1.0 / max(num_classes, 1))


def long_horizon(
    counts: Sequence[int], errors: Sequence[float], window: int, num_classes: int, margin: float = COLLAPSE_MARGIN
) -> dict[str, Any]:
    """summary.json keys: window size, per-window errors, worst full window, and the collapse flag."""
    rows = window_errors(counts, errors, window)
    full = [r for r in rows if r["full"]] or rows  # a short tail is not judged (unless it is all)
    worst = max(full, key=lambda r: r["error"]) if full else None
    threshold = chance_error(num_classes) - margin
    return {
        "window": window,
        "window_errors": [r["error"] for r in rows],
        "worst_window": worst["window"] if worst else None,
        "worst_window_error": worst["error"] if worst else None,
        "collapse_threshold": threshold,
        "collapsed": bool(worst is not None and worst["error"] >= threshold),
    }
