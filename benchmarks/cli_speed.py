"""CLI answer time: CPU seconds of `python -m tta_bench list`, `--help`, `run --help`, a typo error and `list settings`,
against `python -c "import torch"` (what every call cost before the CLI stopped importing torch where it needs none).

Each command runs in a fresh process; its CPU time (user + system) is read with `resource.getrusage(RUSAGE_CHILDREN)`
before and after, so a busy machine's waiting does not count. The commands are interleaved (one round runs each once)
and the median of `--repeats` rounds is printed, with the ratio to `import torch` and whether the command imported
torch. The listing's catalogue is built (cached) before timing: a first `list` after a code change imports torch once
(`tta_bench/catalogue.py`); that cold cost is printed too.

    python -m benchmarks.cli_speed [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile

COMMANDS = {
    "list": ["-m", "tta_bench", "list"],
    "list settings": ["-m", "tta_bench", "list", "settings"],
    "--help": ["-m", "tta_bench", "--help"],
    "run --help": ["-m", "tta_bench", "run", "--help"],
    "typo error (run --method tnet)": ["-m", "tta_bench", "run", "--method", "tnet", "--stream", "digits-c"],
    "import torch": ["-c", "import torch"],
}
# Prints whether torch was imported by the command (run after main(), in the same process).
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['tta_bench', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('tta_bench', run_name='__main__')\n"
    "except SystemExit:\n    pass\n"
    "print('torch' in sys.modules, file=sys.stderr)\n"
)


def cpu_seconds(args: list[str], env: dict[str, str]) -> float:
    """CPU seconds (user + system) of `python <args>` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def imports_torch(args: list[str], env: dict[str, str]) -> bool | None:
    """Whether `python -m tta_bench <...>` leaves torch in sys.modules (None for a command that is not the CLI)."""
    if args[:2] != ["-m", "tta_bench"]:
        return None
    r = subprocess.run([sys.executable, "-c", PROBE, *args[2:]], env=env, capture_output=True, text=True, check=False)
    return r.stderr.strip().splitlines()[-1] == "True"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median reported)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TTA_BENCH_CACHE": cache, "PYTHONWARNINGS": "ignore"}
        cold = cpu_seconds(COMMANDS["list"], env)  # builds the catalogue (imports torch once)
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for _ in range(args.repeats):
            for name, cmd in COMMANDS.items():
                times[name].append(cpu_seconds(cmd, env))
        torch_s = statistics.median(times["import torch"])
        print(f"CPU seconds, median of {args.repeats} interleaved runs (python {sys.version.split()[0]}):")
        print(f"  {'command':<32} {'CPU s':>7} {'vs import torch':>16}  imports torch")
        for name, cmd in COMMANDS.items():
            t = statistics.median(times[name])
            probe = imports_torch(cmd, env)
            flag = "-" if probe is None else "yes" if probe else "no"
            print(f"  {name:<32} {t:7.3f} {t / torch_s:15.2f}x  {flag}")
        print(
            f"  {'list, first after a code change':<32} {cold:7.3f} {cold / torch_s:15.2f}x  yes (builds the catalogue)"
        )


if __name__ == "__main__":
    main()
