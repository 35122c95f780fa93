"""Step hooks for crash and concurrency tests: the production code only counts its write steps and calls the hooks
installed here (`tta_bench.kernel.atomic.add_step_hook`); the switches live in the tests.

In this process: `kill_at(n)` (SIGKILL at write step n), `hold_while(path)` (wait before every step while `path`
exists). In a child interpreter: put this folder on `PYTHONPATH`, set `KILL_AT` / `HOLD_WHILE` in its environment
and start its code with `import crash_hooks; crash_hooks.from_env()` (see CHILD_PREFIX).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tta_bench.kernel import atomic

KILL_AT = "CRASH_HOOKS_KILL_AT"
HOLD_WHILE = "CRASH_HOOKS_HOLD_WHILE"
HERE = str(Path(__file__).resolve().parent)
CHILD_PREFIX = f"import sys; sys.path.insert(0, {HERE!r}); import crash_hooks; crash_hooks.from_env(); "


def kill_at(step: int) -> None:
    atomic.reset_steps()
    atomic.add_step_hook(lambda n: os.kill(os.getpid(), signal.SIGKILL) if n == step else None)


def hold_while(path: str | Path) -> None:
    atomic.reset_steps()

    def hold(_: int) -> None:
        while Path(path).exists():
            time.sleep(0.05)

    atomic.add_step_hook(hold)


def from_env() -> None:
    """Install what the environment asks for (a child started by a test)."""
    if os.environ.get(KILL_AT):
        kill_at(int(os.environ[KILL_AT]))
    if os.environ.get(HOLD_WHILE):
        hold_while(os.environ[HOLD_WHILE])
