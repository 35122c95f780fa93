"""tta_bench: a test-time adaptation (TTA) and robustness benchmark harness.

A stream of shifted data flows batch by batch through an adapter wrapped around a model; the runner
records what happened into a run folder; the leaderboard is a pure function of run folders.
See DESIGN.md for the contracts. Library entry points::

    from tta_bench import RunConfig, run
    result = run(RunConfig(method="tent", stream="digits-c"))
    from tta_bench.methods import Tent

The adapters, corruptions and the leaderboard import as `tta_bench.methods`, `tta_bench.corruptions` and
`tta_bench.leaderboard`, so they never clash with a user's own `methods/` package. In the repository they sit
beside this folder (`methods/`, `corruptions/`, `leaderboard/`, the layout of DESIGN.md); an installed wheel has
them inside `tta_bench/` (setup.cfg's `package_dir`), an editable install maps them there, and a plain source
tree on `sys.path` is served by `_layout.install()` below.
"""

from __future__ import annotations

from tta_bench import _layout

_layout.install()

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
