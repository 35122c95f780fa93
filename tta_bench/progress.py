"""Progress display of the harness: the kernel's `progress` (plain lines when output is not a terminal) with tqdm's
live bar installed for terminals. Importing this module installs the bar; `methods/` call `tta_bench.kernel.progress`
and get the same display.

Phases shown: source-model training (`tta_bench.training`), the prepare stage (warm-up, Fisher pass, prompt
learning: the runner wraps the source loader, so every pass over it is counted), the stream (a bar with the running
error; without a terminal, a line per domain with its error) and clean evaluation.
"""

from __future__ import annotations

from typing import Any

from tta_bench.kernel.progressbar import Progress, is_terminal, progress, quiet_while, set_bar_factory, set_quiet

__all__ = ["Progress", "is_terminal", "progress", "quiet_while", "set_quiet", "tqdm_bar"]


def tqdm_bar(total: int | None, desc: str, unit: str, leave: bool) -> Any:
    """A tqdm bar drawn on stderr (only called when stderr is a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)


set_bar_factory(tqdm_bar)
