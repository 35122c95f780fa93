"""Progress of long phases (training, warm-up, prepare, the stream, clean evaluation), stdlib only.

`progress(iterable, desc=..., unit=...)` wraps a loop; `methods/` may call it (it is the kernel's) as the runner does.
Where it shows:

- stderr is a terminal and a bar factory is installed (`set_bar_factory`; `tta_bench.progress` installs tqdm's):
  a live bar, with `postfix` (e.g. the running error) refreshed every few updates;
- otherwise (output sent to a file or a pipe, CI logs): plain lines on stderr, `<desc>: started` for an announced
  phase, a line at most every `interval` seconds with the count and the postfix, `<desc>: done, N <unit> in S s`,
  and any `log(...)` line (the runner writes one per domain with its error);
- `set_quiet(True)` or `disable=True`: nothing.

A wrapped iterable may be iterated several times (a prepare stage running epochs over its source loader): each pass
is counted and named in the lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tta_bench.kernel.options import env_number

INTERVAL_ENV = "TTA_BENCH_PROGRESS_INTERVAL"  # seconds between plain progress lines (default 20)
_STATE: dict[str, Any] = {"bar": None, "quiet": False}


def set_bar_factory(factory: Callable[..., Any] | None) -> None:
    """Install the live bar used on terminals: `factory(total=, desc=, unit=, leave=)` -> a tqdm-like object."""
    _STATE["bar"] = factory


def set_quiet(quiet: bool) -> None:
    """Silence every progress display (the CLI's --quiet)."""
    _STATE["quiet"] = bool(quiet)


@contextmanager
def quiet_while(quiet: bool) -> Iterator[None]:
    """Silence progress inside the block when `quiet` (a library caller's `run(cfg, quiet=True)`)."""
    before = _STATE["quiet"]
    _STATE["quiet"] = before or bool(quiet)
    try:
        yield
    finally:
        _STATE["quiet"] = before


def interval() -> float:
    """Seconds between plain progress lines: `$TTA_BENCH_PROGRESS_INTERVAL` (0 to a day; unset or empty: 20). A value
    that is not such a number is a UserError naming the variable (the CLI checks it before any work)."""
    return env_number(INTERVAL_ENV, 20.0, 0.0, 86400.0, "the seconds between plain progress lines")


def is_terminal() -> bool:
    """True when stderr is an interactive terminal (where a live bar is drawn)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A loop's progress: iterate it, or call `update(n)`; `log(text)` adds a line in plain mode."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        desc: str = "",
        total: int | None = None,
        unit: str = "it",
        announce: bool = True,
        disable: bool = False,
        leave: bool = True,
        postfix: Callable[[], str] | None = None,
    ) -> None:
        self.iterable, self.desc, self.unit, self.announce = iterable, desc, unit, announce
        self.name = desc  # the phase's name (set_description changes only what the bar shows)
        self.postfix = postfix
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.passes = total, 0, 0
        self.off = disable or _STATE["quiet"]
        self.t0 = self.last = time.perf_counter()
        self.interval = interval()
        factory = _STATE["bar"]
        self.bar = None
        if not self.off and factory is not None and is_terminal():
            self.bar = factory(total=total, desc=desc, unit=unit, leave=leave)
        elif not self.off and announce:
            self._line(f"{desc}: started" + (f" ({total} {unit})" if total else ""))

    # --- display ------------------------------------------------------------------------------------------
    @property
    def shows_postfix(self) -> bool:
        """True when a live bar is drawn (the running-error postfix is worth computing each few updates)."""
        return self.bar is not None

    def _line(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description(desc)

    def set_postfix(self, text: str) -> None:
        """Text after a live bar's counts (e.g. the running error); call it only when `shows_postfix`."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def log(self, text: str) -> None:
        """A line of its own in plain mode (e.g. a domain's result); nothing on a live bar or when quiet."""
        if not self.off and self.bar is None:
            self._line(text)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.off:
            return
        if self.bar is not None:
            self.bar.update(n)
            if self.postfix is not None:
                self.bar.set_postfix_str(self.postfix())
            return
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self._line(f"{self.desc}: {self._count()}{self._postfix()} ({now - self.t0:.0f} s)")

    def _count(self) -> str:
        of = f"/{self.total}" if self.total else ""
        at = f"pass {self.passes}, " if self.passes > 1 else ""
        return f"{at}{self.n if self.passes <= 1 else self._in_pass}{of} {self.unit}"

    def _postfix(self) -> str:
        return f", {self.postfix()}" if self.postfix is not None else ""

    # --- iteration and closing ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator:
        assert self.iterable is not None, "progress() without an iterable: call update()"
        self.passes += 1
        self._in_pass = 0
        if self.bar is not None and self.passes > 1:
            self.bar.reset(total=self.total)
            self.bar.set_description(f"{self.desc} (pass {self.passes})")
        for item in self.iterable:
            yield item
            self._in_pass += 1
            self.update(1)

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]

    def close(self) -> None:
        if self.off:
            return
        if self.bar is not None:
            self.bar.close()
        elif self.announce or time.perf_counter() - self.t0 >= self.interval:
            passes = f" in {self.passes} passes" if self.passes > 1 else ""
            took = time.perf_counter() - self.t0
            self._line(f"{self.name}: done, {self.n} {self.unit}{passes} in {took:.1f} s{self._postfix()}")
        self.off = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    _in_pass = 0


def progress(iterable: Iterable | None = None, **kwargs: Any) -> Progress:
    """`Progress(iterable, desc=, total=, unit=, announce=, disable=, leave=, postfix=)`; use as a context manager
    (or call `close()`) so the closing line / bar is written."""
    return Progress(iterable, **kwargs)
