"""`python -m tta_bench leaderboard --runs DIR [DIR ...] [--out FOLDER] [--format html|latex|markdown]`.

Run folders (of one out folder, or merged from several machines' out folders) -> CSVs, plots and HTML (the default),
or the overview and detail tables as paste-ready LaTeX (booktabs) or GitHub Markdown (`leaderboard.export`)."""

from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Sequence
from pathlib import Path

from tta_bench import rundir
from tta_bench.kernel import UserError
from tta_bench.leaderboard.collect import Collection, printable  # light: pandas loads where tables are built

FORMATS = ("html", "latex", "markdown")
DEFAULT_OUT = {"html": "leaderboard_site", "latex": "leaderboard_tables", "markdown": "leaderboard_tables"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runs",
        nargs="+",
        default=["runs"],
        metavar="FOLDER",
        help="folders holding run folders, each searched recursively (default runs/); several folders or a quoted "
        "glob ('hosts/*/runs') merge the runs of several machines: a run id found twice counts once when both copies "
        "hold the same results, and copies with different results are reported, never ranked",
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder to write: the site (default leaderboard_site/) or, with --format latex|markdown, the tables "
        "(default leaderboard_tables/)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="html",
        help="html: the site (CSVs, plots, index.html; default); latex: booktabs tables (tables.tex and one .tex per "
        "table); markdown: GitHub pipe tables (tables.md and one .md per table); the protocol is each table's caption",
    )


def runs_folders(values: Sequence[str | os.PathLike]) -> list[Path]:
    """The --runs values as folders: a glob pattern (`*`, `?`, `[`) that is not itself an existing path is expanded
    to the folders it matches (UserError when none). Folders are checked by `check_folders`."""
    from tta_bench.kernel.options import check_path

    out: list[Path] = []
    for v in values:
        path = check_path(v, "--runs", empty="Pass a folder, or leave --runs out.")
        text = os.fspath(v)
        if os.path.lexists(path) or not glob.has_magic(text):
            out.append(path)
            continue
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True))
        folders = [m for m in matches if m.is_dir()]
        if not folders:
            raise UserError(
                f"--runs {printable(text)} matches no folder"
                + (f" ({len(matches)} file(s), no folder)" if matches else "")
                + ". Pass folders that hold run folders (the --out of `python -m tta_bench run` / `sweep`), as paths "
                "or as a quoted glob such as 'hosts/*/runs'."
            )
        out += folders
    return list(dict.fromkeys(out))


def copies_line(n: int) -> str:
    """The report's line on identical copies of runs merged."""
    what = "1 run was found in two folders" if n == 1 else f"{n} extra copies of runs were found in other folders"
    return f"merged: {what} with the same results (counted once)"


def conflict_warning(col: Collection, most: int = 5) -> str:
    """One paragraph about run ids whose copies hold different results ('' when none)."""
    if not col.conflicts:
        return ""
    said = []
    for c in col.conflicts[:most]:
        groups = " vs ".join(" = ".join(printable(str(f)) for f in g) for g in c.folders)
        said.append(f"{c.run_id} ({groups}: {'; '.join(c.differs) or 'results differ'})")
    more = f" and {len(col.conflicts) - most} more" if len(col.conflicts) > most else ""
    return (
        f"warning: {len(col.conflicts)} run id(s) have copies with different results (the same run id, so the same "
        f"method, stream, options and seed, but other numbers): {', '.join(said)}{more}. No copy of these runs is "
        "ranked; they are listed on the page and in csv/conflicts.csv. Keep the copy you trust (move or delete the "
        "others, or re-run it with `python -m tta_bench run ... --force`), then rebuild the leaderboard."
    )


def report(site, col: Collection | None = None) -> str:
    """A few lines about what `build` wrote (printed by the CLI and by sweeps)."""
    lines = [f"leaderboard: {site.n_runs} completed run(s) in {len(site.tables)} table(s)"]
    if col is not None and col.n_copies:
        lines.append(copies_line(col.n_copies))
    if site.incomplete:
        lines.append(f"ignored {len(site.incomplete)} incomplete run folder(s) (no `done` marker):")
        lines += [f"  {printable(str(p))}" for p in site.incomplete[:10]]
        lines += ["  ..."] if len(site.incomplete) > 10 else []
    if site.unreadable:
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
    if col is not None and col.conflicts:
        lines.append(conflict_warning(col))
    return "\n".join(lines)


def write_conflicts(col: Collection, path: Path) -> None:
    """csv/conflicts.csv: one row per copy of a conflicting run id (run_id, copy group, folder, what differs)."""
    import pandas as pd

    rows = [
        {"run_id": c.run_id, "group": i, "folder": printable(str(f)), "differs": "; ".join(c.differs)}
        for c in col.conflicts
        for i, g in enumerate(c.folders)
        for f in g
    ]
    pd.DataFrame(rows, columns=["run_id", "group", "folder", "differs"]).to_csv(path, index=False)


def build_site(roots: Sequence[Path], out: Path, col: Collection):
    """The HTML site of `col` (read from `roots`) built aside and swapped in as `out`, with csv/conflicts.csv."""
    from tta_bench.leaderboard.site import write_site

    shown = roots[0] if len(roots) == 1 else " + ".join(str(r) for r in roots)

    def write(tmp: Path):
        site = write_site(col, shown, tmp)
        write_conflicts(col, tmp / "csv" / "conflicts.csv")
        return site

    site = rundir.replace_tree(write, out)
    site.out = out
    site.plots = [out / p.relative_to(p.parents[1]) for p in site.plots]
    return site


def export_report(col: Collection, fmt: str, out: Path, files: list[Path]) -> str:
    lines = [
        f"leaderboard: {len(col.runs)} completed run(s), {len(files) - 1} {fmt} table(s) written to "
        f"{printable(str(out.resolve()))}",
        f"  all tables in one file: {printable(str((out / files[0].name).resolve()))}",
    ]
    if col.n_copies:
        lines.append(copies_line(col.n_copies))
    if col.unreadable:
        lines.append(f"skipped {len(col.unreadable)} unreadable run folder(s):")
        lines += [f"  {printable(str(p))}: {printable(why)}" for p, why in col.unreadable[:10]]
    if col.conflicts:
        lines.append(conflict_warning(col))
    return "\n".join(lines)


def build_and_report(runs: Path | Sequence[Path], out: Path, fmt: str = "html") -> str:
    """Build the site (or, for fmt latex/markdown, the tables) from the run folders under `runs` (one folder or
    several) into `out`; return a report of it.

    Only an unusable --runs or --out stops the build (UserError); a damaged run folder is skipped and listed."""
    from tta_bench.leaderboard.collect import collect

    roots = [Path(runs)] if isinstance(runs, (str, os.PathLike)) else [Path(r) for r in runs]
    out = Path(out)
    check_folders(roots, out)
    try:
        col = collect(roots, exclude=out)
        if fmt == "html":
            return report(build_site(roots, out, col), col)
        from tta_bench.leaderboard.export import write

        files = rundir.replace_tree(lambda tmp: write(col, fmt, tmp), out)
        return export_report(col, fmt, out, files)
    except OSError as e:
        raise UserError(
            f"Cannot write the leaderboard {'site' if fmt == 'html' else 'tables'} to --out {printable(str(out))} "
            f"({type(e).__name__}: {e.strerror or e}). Pass a writable --out folder (the previous one, if any, is "
            "left as it was)."
        ) from None


def check_folders(runs: Path | Sequence[Path], out: Path) -> None:
    """UserError when a --runs folder is not a readable folder or --out cannot hold the site: an existing file, a
    runs folder itself or a folder holding one (the site replaces --out whole), or a run folder."""
    roots = [Path(runs)] if isinstance(runs, (str, os.PathLike)) else [Path(r) for r in runs]
    for root in roots:
        if not root.is_dir():
            raise UserError(
                f"Runs folder '{printable(str(root))}' does not exist or is not a folder. Pass the folder that holds "
                "run folders with --runs (the --out of `python -m tta_bench run` / `sweep`, default runs/); several "
                "folders, or a quoted glob such as 'hosts/*/runs', merge the runs of several machines."
            )
    why = ""
    if out.exists() and not out.is_dir():
        why = "is an existing file, not a folder"
    elif any(out.resolve() == r.resolve() or out.resolve() in r.resolve().parents for r in roots):
        which = "the runs folder or holds it" if len(roots) == 1 else "one of the runs folders or holds one"
        why = f"is {which}, and the site replaces --out whole"
    elif any(os.path.lexists(out / f) for f in rundir.RUN_FILES):
        why = "is a run folder (it holds the runner's files)"
    if why:
        shown = " ".join(printable(str(r)) for r in roots)
        raise UserError(
            f"--out {printable(str(out))} {why}. Pass a folder of its own for the site, e.g. --out leaderboard_site "
            f"(--runs {shown} is only read)."
        )


def main(args: argparse.Namespace) -> int:
    roots = runs_folders(args.runs)
    out = Path(args.out if args.out is not None else DEFAULT_OUT[args.format])
    print(build_and_report(roots, out, args.format))
    return 0
