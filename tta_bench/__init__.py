"""tta_bench: a test-time adaptation (TTA) and robustness benchmark harness.

A stream of shifted data flows batch by batch through an adapter wrapped around a model; the runner
records what happened into a run folder; the leaderboard is a pure function of run folders.
See DESIGN.md for the contracts. Library entry points::

    from tta_bench import RunConfig, run
    result = run(RunConfig(method="tent", stream="digits-c"))
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["RunConfig", "run", "__version__"]


def __getattr__(name: str):  # lazy: keep `import tta_bench` cheap (no torch import)
    if name == "RunConfig":
        from tta_bench.config import RunConfig

        return RunConfig
    if name == "run":
        from tta_bench.runner import run

        return run
    raise AttributeError(name)
