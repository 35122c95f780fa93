"""Read run folders into tidy tables (file names, completeness and the summary schema: `tta_bench.rundir`).

A run folder is complete when it holds `done` (written last by the runner); anything else under the runs
directory that looks like a run folder (holds any of the runner's files, or is an empty hash-named folder)
is counted as incomplete and ignored. A complete folder that cannot be read (invalid or truncated
summary.json/config.json/CSVs, a `run_id` that is not a hex run id) is skipped and listed in `unreadable`.
Hidden entries (`.<id>.tmp-*` folders of runs in progress, locks) are never read.

Tables (pandas DataFrames, one row per ...):
- `runs`: completed run — identity columns, headline metrics, any other scalar of summary.json (e.g. `miou`,
  `auc`), `err:<domain>` per-domain errors (%, mean over rounds), plus `table` (the protocol group it is
  compared within) and `entry` (method label in that table).
- `domains`: (run, round, domain) — the run's domains.csv with identity columns (for paired tests, heatmaps).
- `batches`: (run, batch) — the run's batches.csv with identity columns (for curves over the stream).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tta_bench import rundir
from tta_bench.kernel import UserError, hash_json

if TYPE_CHECKING:  # pandas loads where tables are built, so `printable` and the CLI's checks answer without it
    import pandas as pd

# Protocol fields: runs are only compared (same table) when all of these agree. The data is named by its fingerprint
# (config.json `data_fingerprint`: files' names, sizes, mtimes), not by the path it was reached through, and the
# sample count by the samples each domain actually held (`samples_per_domain`), not by the --limit asked for.
PROTOCOL = ("stream", "setting", "severity", "batch_size", "samples", "rounds", "precision", "data", "stream_opts")
# Stream options that only say where the data is found: left out of a table's identity when the run recorded a data
# fingerprint (the same files reached through another path or a symlink are the same protocol).
LOCATION_OPTIONS = ("root", "clean_dir", "source_root", "download")
# Columns of `runs` besides metrics (summary.json scalars not listed here become extra metric columns).
FIXED = ("severity", "batch_size", "limit", "rounds", "n_samples", "device", "first_diverged_batch", "task")
IDENTITY = ("run_id", "table", "stream", "setting", "model", "method", "entry", "seed")


@dataclass
class Collection:
    """Everything the leaderboard reads from a runs directory."""

    runs: pd.DataFrame
    domains: pd.DataFrame
    batches: pd.DataFrame
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run_id -> config.json
    folders: dict[str, Path] = field(default_factory=dict)  # run_id -> run folder
    incomplete: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # complete folders that could not be read
    conflicts: list[Conflict] = field(default_factory=list)  # run ids whose copies hold different results
    n_copies: int = 0  # identical extra copies of a run (found in several folders), each counted once


def find_run_folders(
    root: Path, exclude: Path | None = None, errors: list[tuple[Path, str]] | None = None
) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete) run folders under `root`, searched recursively, sorted by path.

    A directory is a run folder when it directly holds one of the runner's files; an empty directory
    counts as an incomplete run (the runner creates the folder before writing anything). Other
    directories are searched further (so `runs/<sweep>/<hash>/` layouts work), each once (a symlink loop, a
    second link to a folder, or a link to the runs folder or one above it, such as `/`, is not followed).
    `exclude` (e.g. the site being written inside the runs folder) is skipped. A directory below `root` that
    cannot be listed is appended to `errors` with the reason.
    """
    complete: list[Path] = []
    incomplete: list[Path] = []
    excluded = exclude.resolve() if exclude is not None else None
    seen: set[tuple[int, int]] = set()
    for up in (Path(root), *Path(root).resolve().parents):  # a link back to the runs folder or above it (`/`): not read
        try:
            st = up.stat()
            seen.add((st.st_dev, st.st_ino))
        except OSError:
            pass

    def visit(d: Path) -> None:
        try:
            st = d.stat()
            if (st.st_dev, st.st_ino) in seen or (excluded is not None and d.resolve() == excluded):
                return
            seen.add((st.st_dev, st.st_ino))
            children = sorted(d.iterdir())
            if rundir.is_complete(d):
                complete.append(d)
            elif any(os.path.lexists(d / f) for f in rundir.RUN_FILES) or not children:
                incomplete.append(d)
            else:
                for c in children:
                    if c.is_dir() and not c.name.startswith("."):
                        visit(c)
        except (OSError, RuntimeError) as e:  # unlistable, vanished, a symlink loop: that folder only
            if errors is not None:
                errors.append((d, f"cannot be read ({type(e).__name__}: {getattr(e, 'strerror', None) or e})"))

    for c in _children(root):
        if c.is_dir() and not c.name.startswith("."):
            visit(c)
    return complete, incomplete


def _children(root: Path) -> list[Path]:
    """The entries of the runs folder, sorted; UserError when it cannot be listed (an unusable --runs)."""
    try:
        return sorted(Path(root).iterdir())
    except OSError as e:
        raise UserError(
            f"The runs folder {root} cannot be read ({e.strerror or e}). Pass a readable folder holding run "
            "folders with --runs (the --out of `python -m tta_bench run` / `sweep`)."
        ) from None


def samples_label(cfg: dict[str, Any]) -> str:
    """`n<count>` when every domain held the same number of samples, else `n<min>-<max>~<total>`; from the
    recorded `samples_per_domain` (or the --limit asked for, for runs that did not record it)."""
    counts = [int(v) for v in (cfg.get("samples_per_domain") or {}).values()]
    if not counts:
        limit = cfg["config"].get("limit")
        return f"n{limit if limit is not None else 'all'}"
    lo, hi = min(counts), max(counts)
    return f"n{lo}" if lo == hi else f"n{lo}-{hi}~{sum(counts)}"


def protocol_opts(cfg: dict[str, Any]) -> dict[str, Any]:
    """The stream options that are part of the protocol (LOCATION_OPTIONS dropped when the data is fingerprinted)."""
    fp = cfg.get("data_fingerprint")
    return {k: v for k, v in cfg["config"].get("stream_opts", {}).items() if not (fp and k in LOCATION_OPTIONS)}


def table_key(cfg: dict[str, Any]) -> str:
    """Readable, unique name of a protocol group (PROTOCOL), e.g. `digits-c/continual/sev5/bs32/n64/r1/fp32/data-3fa2`.

    Paths never enter it: two runs on the same files reached through different paths land in one table."""
    c = cfg["config"]
    fp = cfg.get("data_fingerprint")
    parts = [
        c["stream"],
        c["setting"],
        f"sev{c['severity']}" if has_severity(cfg) else "",
        f"bs{c['batch_size']}",
        samples_label(cfg),
        f"r{c['rounds']}",
        c["precision"],
        f"data-{hash_json(fp, 8)}" if fp else "data-?",
    ]
    opts = ",".join(f"{k}={v}" for k, v in sorted(protocol_opts(cfg).items()) if v is not None)  # None: not set
    return "/".join(p for p in parts if p) + (f"/{opts}" if opts else "")


def has_severity(cfg: dict[str, Any]) -> bool:
    """Whether the stream has severities (some domain of config.json `domain_order` has one; True if unrecorded)."""
    order = cfg.get("domain_order") or []
    return not order or any(d.get("severity") is not None for d in order)


def load_run(folder: Path) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """(config.json, summary.json, domains.csv, batches.csv) of one completed run folder, validated against the
    run-folder schema (`tta_bench.rundir.check_run`: types, sizes, depth, encodings, finite numbers, consistency).

    Raises UserError naming the file when any of them is missing, truncated or invalid.
    """
    cfg, summary, domains, batches = rundir.check_run(folder)
    return cfg, dict(summary), _frame(*domains), _frame(*batches)


def _frame(header: list[str], rows: list[list[Any]]) -> pd.DataFrame:
    """A validated CSV (`rundir.check_run`) as a DataFrame: number columns numeric, text columns text."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=header)
    for c in header:
        if not any(isinstance(v, str) for v in df[c]):
            df[c] = pd.to_numeric(df[c])
    return df


def entry_labels(runs: pd.DataFrame, opts: dict[str, dict[str, Any]]) -> pd.Series:
    """Method label per run: the method name, plus the hyper-parameters that vary among that method's
    runs in the same table and model (e.g. `tent[lr=0.0001]`), so hyper-parameter variants stay apart."""
    labels = runs["method"].copy()
    for _, g in runs.groupby(["table", "model", "method"]):
        keys = sorted({k for rid in g["run_id"] for k in opts[rid]})
        varying = [k for k in keys if len({json.dumps(opts[rid].get(k), default=str) for rid in g["run_id"]}) > 1]
        for idx, rid in zip(g.index, g["run_id"]):
            if varying:
                hp = ",".join(f"{k}={opts[rid].get(k)}" for k in varying)
                labels[idx] = f"{runs.at[idx, 'method']}[{hp}]"
    return labels


def collect(roots: Path | str | Sequence[Path | str], exclude: Path | None = None) -> Collection:
    """Read every completed run folder under `roots` (one runs folder or several, e.g. the out folders of several
    machines) into a `Collection`; incomplete ones are listed, not read.

    A run id found in several folders counts once when every copy holds the same results (`results_digest`); copies
    that disagree are a `Conflict`: none of them is ranked, each is listed in `unreadable` with what differs, and the
    conflict in `conflicts`. A folder reached twice (the same path under two roots) is read once."""
    import pandas as pd

    roots = [Path(roots)] if isinstance(roots, (str, os.PathLike)) else [Path(r) for r in roots]
    unreadable: list[tuple[Path, str]] = []
    complete, incomplete, seen = [], [], set()
    for root in roots:
        done, partial = find_run_folders(root, exclude, unreadable)
        for found, into in ((done, complete), (partial, incomplete)):
            for folder in found:
                if folder.resolve() not in seen:
                    seen.add(folder.resolve())
                    into.append(folder)
    copies: dict[str, list[_Copy]] = {}
    for folder in complete:
        try:
            cfg, s, dom, bat = load_run(folder)
            row = run_row(cfg, s)
        except Exception as e:  # noqa: BLE001 - one bad folder, whatever its damage, never aborts the leaderboard
            unreadable.append((folder, reason(e)))
            continue
        copies.setdefault(cfg["run_id"], []).append(_Copy(folder, cfg, s, dom, bat, row))
    rows, dom_frames, batch_frames = [], [], []
    configs, folders, method_opts = {}, {}, {}
    conflicts: list[Conflict] = []
    n_copies = 0
    for rid, same in copies.items():
        groups: dict[str, list[_Copy]] = {}
        for c in same:
            groups.setdefault(results_digest(c.summary, c.domains, c.batches), []).append(c)
        if len(groups) > 1:  # same run id, different results: never pick one
            conflict = Conflict(
                rid, [[c.folder for c in g] for g in groups.values()], differences(list(groups.values()))
            )
            conflicts.append(conflict)
            unreadable += [(f, conflict.why(f)) for g in conflict.folders for f in g]
            continue
        n_copies += len(same) - 1  # identical copies (the same run fetched from several machines): counted once
        c = same[0]
        configs[rid], folders[rid] = c.cfg, c.folder
        method_opts[rid] = c.cfg["config"].get("method_opts", {})
        rows.append(c.row)
        dom_frames.append(c.domains.assign(run_id=rid))
        batch_frames.append(c.batches.assign(run_id=rid))
    runs = pd.DataFrame(rows)
    if runs.empty:
        empty = pd.DataFrame(columns=list(IDENTITY))
        return Collection(
            empty, empty.copy(), empty.copy(), configs, folders, incomplete, unreadable, conflicts, n_copies
        )
    runs.insert(runs.columns.get_loc("method") + 1, "entry", entry_labels(runs, method_opts))
    runs = runs.sort_values(["table", "model", "entry", "seed"], kind="stable").reset_index(drop=True)
    ident = runs[list(IDENTITY)]
    domains = pd.concat(dom_frames, ignore_index=True).merge(ident, on="run_id")
    batches = pd.concat(batch_frames, ignore_index=True).merge(ident, on="run_id")
    front = list(IDENTITY)
    domains = domains[front + [c for c in domains.columns if c not in front]]
    batches = batches[front + [c for c in batches.columns if c not in front]]
    return Collection(runs, domains, batches, configs, folders, incomplete, unreadable, conflicts, n_copies)


@dataclass
class _Copy:
    """One read copy of a run folder."""

    folder: Path
    cfg: dict[str, Any]
    summary: dict[str, Any]
    domains: pd.DataFrame
    batches: pd.DataFrame
    row: dict[str, Any]


# What a run measures of the machine it ran on rather than of the method: left out when copies of one run id are
# compared (the same run made on two machines has other timings, and is still the same result).
MEASURED_KEYS = ("images_per_s", "stream_seconds", "prepare_s", "peak_device_mb")
MEASURED_COLUMNS = ("seconds", "images_per_s", "peak_device_mb")


def results(summary: dict[str, Any], domains: pd.DataFrame, batches: pd.DataFrame) -> dict[str, Any]:
    """The results of a run, the part two copies of one run id must share: summary.json, domains.csv and batches.csv
    without the machine's measurements (MEASURED_KEYS, MEASURED_COLUMNS; a measured `speed_ratio`)."""
    s = {k: v for k, v in summary.items() if k not in MEASURED_KEYS}
    if isinstance(s.get("memory"), dict):
        s["memory"] = {k: v for k, v in s["memory"].items() if k not in MEASURED_KEYS}
    if s.get("speed_ratio_measured"):
        s.pop("speed_ratio", None)

    def rows(df: pd.DataFrame) -> dict[str, list[Any]]:
        kept = df.drop(columns=[c for c in MEASURED_COLUMNS if c in df])
        return {c: [None if _missing(v) else v for v in kept[c].tolist()] for c in kept.columns}

    return {"summary": s, "domains.csv": rows(domains), "batches.csv": rows(batches)}


def results_digest(summary: dict[str, Any], domains: pd.DataFrame, batches: pd.DataFrame) -> str:
    """sha256 (16 hex) of `results`: equal for copies of a run that hold the same results."""
    return hash_json(results(summary, domains, batches))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def differences(groups: list[list[_Copy]], most: int = 3) -> list[str]:
    """What differs between the first copy of each group, in words: up to `most` summary values (`mean_error 8.54
    vs 9.10`), else the CSV files that differ."""
    first = [results(g[0].summary, g[0].domains, g[0].batches) for g in groups]
    keys = [k for k in first[0]["summary"] if len({json.dumps(r["summary"].get(k), default=str) for r in first}) > 1]
    keys += [k for r in first[1:] for k in r["summary"] if k not in first[0]["summary"] and k not in keys]
    out = [f"{k} " + " vs ".join(_short(r["summary"].get(k)) for r in first) for k in keys[:most]]
    out += [f"and {len(keys) - most} more summary value(s)"] if len(keys) > most else []
    if not keys:
        out = [
            f"{name} differs" for name in ("domains.csv", "batches.csv") if len({hash_json(r[name]) for r in first}) > 1
        ]
    return out


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = printable(json.dumps(v, default=str))
    return text if len(text) <= 40 else text[:39] + "…"


@dataclass
class Conflict:
    """One run id whose copies hold different results: `folders` groups the copies by results (identical copies
    together), `differs` says what differs."""

    run_id: str
    folders: list[list[Path]]
    differs: list[str]

    def why(self, folder: Path) -> str:
        """Why `folder` is not ranked (the page's list of skipped folders)."""
        others = [printable(str(f)) for g in self.folders if folder not in g for f in g]
        return printable(
            f"conflicting copies of run {self.run_id}: {', '.join(others)} hold(s) other results "
            f"({'; '.join(self.differs) or 'results differ'}); no copy is ranked",
            400,
        )


def reason(e: BaseException) -> str:
    """Why a run folder was skipped, in one line of printable text (at most 400 characters)."""
    text = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    return printable(text, 400)


def printable(text: str, limit: int | None = None) -> str:
    """`text` safe to print and show: control characters and undecodable bytes (file names) escaped, cut to
    `limit` characters."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def run_row(cfg: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """One row of `runs` from a run's config.json and (validated) summary.json."""
    c = cfg["config"]
    row: dict[str, Any] = {"run_id": cfg["run_id"], "table": table_key(cfg)}
    row.update({k: c[k] for k in ("stream", "setting", "model", "method", "seed")})
    row.update({k: c[k] for k in ("severity", "batch_size", "limit", "rounds")})
    row["task"] = s.get("task")
    row.update({k: _num(s.get(k)) for k in rundir.core_keys()})  # the METRICS table's core keys
    row["n_samples"] = s.get("n_samples")
    row["diverged"] = bool(s["diverged"])
    row["first_diverged_batch"] = s["first_diverged_batch"]
    row["collapsed"] = bool(s.get("collapsed", False))  # a window near chance error (tta_bench.protocols)
    # stream/task-specific scalars (e.g. balanced_error, auc, miou, harmonic means, stream_seconds)
    row.update(
        {k: float(v) for k, v in s.items() if k not in row and _scalar(v) and k not in FIXED and k not in IDENTITY}
    )
    row["device"] = cfg.get("execution", {}).get("device")
    row.update({f"err:{d}": _num(e) for d, e in s.get("domain_errors", {}).items()})
    return row


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v: Any) -> float:
    """A metric as float (None -> NaN), so columns stay numeric."""
    return float("nan") if v is None else float(v)
