"""`python -m tta_bench leaderboard --runs DIR [--out leaderboard_site/]`: run folders -> CSVs, plots, HTML."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tta_bench import rundir
from tta_bench.kernel import UserError
from tta_bench.leaderboard.collect import printable


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default="runs", help="folder holding run folders, searched recursively (default runs/)")
    p.add_argument("--out", default="leaderboard_site", help="site folder to write (default leaderboard_site/)")


def report(site) -> str:
    """A few lines about what `build` wrote (printed by the CLI and by sweeps)."""
    lines = [f"leaderboard: {site.n_runs} completed run(s) in {len(site.tables)} table(s)"]
    if site.incomplete:
        lines.append(f"ignored {len(site.incomplete)} incomplete run folder(s) (no `done` marker):")
        lines += [f"  {printable(str(p))}" for p in site.incomplete[:10]]
        lines += ["  ..."] if len(site.incomplete) > 10 else []
    if getattr(site, "unreadable", None):
        lines.append(f"skipped {len(site.unreadable)} unreadable run folder(s) (listed on the page):")
        lines += [f"  {printable(str(p))}: {printable(why)}" for p, why in site.unreadable[:10]]
        lines += [f"  ... and {len(site.unreadable) - 10} more (all on the page)"] if len(site.unreadable) > 10 else []
    for t in site.tables:
        s = site.summary[site.summary["table"] == t]
        best = s.iloc[0]
        from tta_bench.leaderboard.site import headline_of

        m = headline_of(s)[0]  # the table's headline metric ranks it
        value = f"{m.label} {best[f'{m.key}_mean']:.2f} %"
        lines.append(f"  {printable(t)}: {len(s)} entries, best {printable(str(best['entry']))} ({value})")
    lines.append(f"page: {printable(str((site.out / 'index.html').resolve()))}")
    return "\n".join(lines)


def build_and_report(runs: Path, out: Path) -> str:
    """Build the site from the run folders under `runs` into `out`; return `report` of it.

    Only an unusable --runs or --out stops the build (UserError); a damaged run folder is skipped and listed."""
    from tta_bench.leaderboard.site import build

    runs, out = Path(runs), Path(out)
    check_folders(runs, out)
    try:
        return report(build(runs, out))
    except OSError as e:
        raise UserError(
            f"Cannot write the leaderboard site to --out {printable(str(out))} ({type(e).__name__}: "
            f"{e.strerror or e}). Pass a writable --out folder (the previous site, if any, is left as it was)."
        ) from None


def check_folders(runs: Path, out: Path) -> None:
    """UserError when --runs is not a readable folder or --out cannot hold the site: an existing file, the runs
    folder itself or a folder holding it (the site replaces --out whole), or a run folder."""
    if not runs.is_dir():
        raise UserError(
            f"Runs folder '{printable(str(runs))}' does not exist or is not a folder. Pass the folder that holds run "
            "folders with --runs (the --out of `python -m tta_bench run` / `sweep`, default runs/)."
        )
    why = ""
    if out.exists() and not out.is_dir():
        why = "is an existing file, not a folder"
    elif out.resolve() == runs.resolve() or out.resolve() in runs.resolve().parents:
        why = "is the runs folder or holds it, and the site replaces --out whole"
    elif any(os.path.lexists(out / f) for f in rundir.RUN_FILES):
        why = "is a run folder (it holds the runner's files)"
    if why:
        raise UserError(
            f"--out {printable(str(out))} {why}. Pass a folder of its own for the site, e.g. --out leaderboard_site "
            f"(--runs {printable(str(runs))} is only read)."
        )


def main(args: argparse.Namespace) -> int:
    print(build_and_report(Path(args.runs), Path(args.out)))
    return 0
