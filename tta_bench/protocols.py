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

Time-dependent utility (realistic setting; after Tempora, Sreeram, Kwon and Mascolo, "Tempora: Characterising the
Time-Contingent Utility of Online Test-Time Adaptation", arXiv 2602.06136, ICML 2026; official code
sudotensor/tempora at 6a4bc08, `tempora/scripts/evaluate/continuous.py`, its *continuous utility*): a prediction is
worth less the later it comes. Time is counted in source-model forwards of a batch (the response budget: a prediction
as fast as the source model is on time). A batch the method adapts on comes ``delay = k - 1`` late (``k`` the run's
relative cost: fixed, or the median measured one that summary.json reports); a batch predicted by the current
model without adapting is on time (``delay = 0``; the realistic protocol predicts it while the adaptation runs). Its
worth is Tempora's hyperbolic discount ``u(delay) = 1 / (1 + delay / tau)`` (``tau = T - rho`` there; here
`stream.utility_tau` in source forwards, default ``DEFAULT_UTILITY_TAU`` = 1: a method twice as slow as the model
halves the worth of the batches it adapts on). ``time_utility = mean_b(acc_b * u_b)`` over batches b (%), which is
Tempora's ``accuracy * timeliness + alignment`` with ``timeliness = mean_b(u_b)`` and alignment the covariance of
per-batch accuracy and discount (Tempora's code takes the sample covariance, ddof 1; here the population one, so the
three keys add up exactly; the two differ by a factor n/(n-1) on the alignment term).

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

from tta_bench import markov
from tta_bench.kernel import UserError
from tta_bench.kernel.options import MAX_IMAGES

# the schema's window rule and constants (the leaderboard uses them too)
from tta_bench.rundir import COLLAPSE_MARGIN, DEFAULT_WINDOW, window_errors

MAX_SPEED_RATIO = 1e6  # a method a million times slower than the source forward adapts on the first batch only
DEFAULT_UTILITY_TAU = 1.0  # time constant of the time-dependent utility, in source forwards (stream.utility_tau)


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
    check_setting_options(setting, opts)
    w = opts.get("window", DEFAULT_WINDOW)
    if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_IMAGES:
        raise UserError(
            f"stream.window must be a positive number of images up to {MAX_IMAGES:,}, got {w!r} "
            "(e.g. stream.window=500)."
        )


def check_setting_options(setting: str, opts: dict[str, Any]) -> None:
    """UserError for a set `stream.utility_tau` that is not a positive finite number or is given outside the realistic
    setting, or a set Markov-chain option (`tta_bench.markov.OPTIONS`) outside the markov setting or invalid."""
    tau = opts.get("utility_tau")
    if tau is not None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < math.inf:
            raise UserError(
                f"stream.utility_tau is the time constant of the time-dependent utility (in source-model forwards: a "
                f"prediction delayed by tau is worth half), a positive finite number, got {tau!r} "
                f"(e.g. --set stream.utility_tau=2)."
            )
        if setting != "realistic":
            raise UserError(f"stream.utility_tau={tau!r} only applies to --setting realistic (the time-dependent "
                            "utility of its predictions); drop it or pass --setting realistic.")  # fmt: skip
    given = [k for k in markov.OPTIONS if opts.get(k) is not None]
    if given and setting != "markov":
        raise UserError(f"stream.{given[0]} only applies to --setting markov (a Markov-chain stream over domains and "
                        "classes); drop it or pass --setting markov.")  # fmt: skip
    if given:
        markov.chain_from_options(opts)


def time_discount(delay: float, tau: float = DEFAULT_UTILITY_TAU) -> float:
    """Worth (0, 1] of a prediction `delay` source-model forwards late: ``1 / (1 + delay / tau)`` (Tempora)."""
    return 1.0 / (1.0 + max(0.0, delay) / tau)


def time_utility(errors: Sequence[float], delays: Sequence[float], tau: float | None = None) -> dict[str, Any]:
    """summary.json keys of the time-dependent utility from per-batch errors (%) and delays (source forwards):
    `time_utility` = mean(acc * u) (%), `timeliness` = mean(u) (%), `utility_alignment` = population covariance of
    per-batch accuracy and discount (percentage points), `utility_tau`; None values for an empty stream."""
    tau = DEFAULT_UTILITY_TAU if tau is None else float(tau)
    if len(errors) != len(delays):
        raise ValueError(f"{len(errors)} batch errors but {len(delays)} delays")
    if not errors:
        return {"time_utility": None, "timeliness": None, "utility_alignment": None, "utility_tau": tau}
    acc = [1.0 - e / 100.0 for e in errors]
    u = [time_discount(d, tau) for d in delays]
    n = len(acc)
    ma, mu = sum(acc) / n, sum(u) / n
    cov = sum((a - ma) * (v - mu) for a, v in zip(acc, u)) / n
    return {"time_utility": 100.0 * sum(a * v for a, v in zip(acc, u)) / n, "timeliness": 100.0 * mu,
            "utility_alignment": 100.0 * cov, "utility_tau": tau}  # fmt: skip


def clock_for(setting: str, opts: dict[str, Any], device: torch.device | None = None) -> RealisticClock | None:
    """The realistic setting's clock for resolved stream options (`speed_ratio` None: measured), else None."""
    if setting != "realistic":
        return None
    k = opts.get("speed_ratio")
    return RealisticClock(None if k is None else float(k), device=device)


def adapted_summary(
    clock: RealisticClock | None, n_batches: int, errors: Sequence[float] | None = None, tau: float | None = None
) -> dict[str, Any]:
    """summary.json keys every run has: batches adapted, and the ratio (None outside the realistic setting); in the
    realistic setting, given the per-batch errors (%) in stream order, also the time-dependent utility."""
    if clock is None:
        return {"speed_ratio": None, "speed_ratio_measured": None, "batches_adapted": n_batches}
    return {**clock.summary(), **(time_utility(errors, clock.delays, tau) if errors is not None else {})}


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
        self.adapted_flags: list[bool] = []  # per batch: whether the method adapted on it

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
            self.adapted_flags.append(False)
            return adapter.predict(x)
        if self.speed_ratio is None:
            out, t_method = self._timed(adapter, x)
            _, t_source = self._timed(adapter.predict, x)
            ratio = t_method / max(t_source, 1e-12)
            self.ratios.append(ratio)
        else:
            out, ratio = adapter(x), self.speed_ratio
        self.adapted += 1
        self.adapted_flags.append(True)
        self.delay += skipped_after(ratio, self.eta)
        return out

    @property
    def delays(self) -> list[float]:
        """Per batch, the source forwards its prediction came late: ``k - 1`` for a batch the method adapted on (k the
        run's ratio: fixed, or the median measured one, as reported; per-batch timings are too noisy: a method with
        k = 1 would come late on half its batches), 0 for one predicted without adapting."""
        k = self.summary()["speed_ratio"]
        late = max(0.0, float(k) - 1.0) if k is not None else 0.0
        return [late if a else 0.0 for a in self.adapted_flags]

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
