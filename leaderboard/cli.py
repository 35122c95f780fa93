"""`python -m tta_bench leaderboard --runs DIR [--out leaderboard_site/]`: run folders -> CSVs, plots, HTML."""

from __future__ import annotations

import argparse
from pathlib import Path

from tta_bench.kernel import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default="runs", help="folder holding run folders, searched recursively (default runs/)")
    p.add_argument("--out", default="leaderboard_site", help="site folder to write (default leaderboard_site/)")


def report(site) -> str:
    """A few lines about what `build` wrote (printed by the CLI and by sweeps)."""
    lines = [f"leaderboard: {site.n_runs} completed run(s) in {len(site.tables)} table(s)"]
    if site.incomplete:
        lines.append(f"ignored {len(site.incomplete)} incomplete run folder(s) (no `done` marker):")
        lines += [f"  {p}" for p in site.incomplete[:10]] + (["  ..."] if len(site.incomplete) > 10 else [])
    if getattr(site, "unreadable", None):
        lines.append(f"skipped {len(site.unreadable)} unreadable run folder(s) (listed on the page):")
        lines += [f"  {p}: {why}" for p, why in site.unreadable[:10]] + (["  ..."] if len(site.unreadable) > 10 else [])
    for t in site.tables:
        s = site.summary[site.summary["table"] == t]
        best = s.iloc[0]
        from tta_bench.leaderboard.site import headline_of

        m = headline_of(s)[0]  # the table's headline metric ranks it
        lines.append(f"  {t}: {len(s)} entries, best {best['entry']} ({m.label} {best[f'{m.key}_mean']:.2f} %)")
    lines.append(f"page: {(site.out / 'index.html').resolve()}")
    return "\n".join(lines)


def build_and_report(runs: Path, out: Path) -> str:
    """Build the site from the run folders under `runs` into `out`; return `report` of it."""
    from tta_bench.leaderboard.site import build

    return report(build(Path(runs), Path(out)))


def main(args: argparse.Namespace) -> int:
    runs = Path(args.runs)
    if not runs.is_dir():
        raise UserError(
            f"Runs folder '{runs}' does not exist. Pass the folder that holds run folders with --runs "
            "(the --out of `python -m tta_bench run` / `sweep`, default runs/)."
        )
    print(build_and_report(runs, Path(args.out)))
    return 0
