"""Label-free model selection (issue #30 item 1): which grid point of a method's options each criterion picks, and
how far its test error is from the oracle's.

`sweep --grid method.lr=1e-3,1e-4 --grid method.steps=1,2 --select all` runs every point of the grid (the product
of the listed values) plus the method's default point, then scores each point by each criterion from its run
folder and picks the best point per benchmark (stream, model, setting) and method; seeds are averaged per point
first. The criteria (TTAB, Zhao et al. ICML'23, and the unsupervised model-selection work that followed it):

- `oracle` *(uses the test labels)*: the point with the lowest test error: the optimistic number TTA papers report
  when hyper-parameters are tuned on the test stream.
- `last`: no selection: TTAB's last iterate with the method's default options (the preset of the stream's family).
- `entropy`: the lowest mean prediction entropy over the stream (summary `mean_entropy`, nats).
- `im`: the highest information maximisation score, marginal entropy minus mean entropy (SHOT's objective as a
  selection score: confident and diverse predictions; `marginal_entropy - mean_entropy`).
- `source`: the lowest error on the held-out clean (source-distribution) split after adaptation (summary
  `clean_error_after`, needs `--clean-eval domain|end`): labelled source data, never target labels.

The gap of a criterion is its chosen point's test error minus the oracle's (pp, >= 0). The table is written to
`<out>/selection/<benchmark>__<method>.json` (one per benchmark and method, rewritten by the next selection of the
same pair) and `<out>/selection/selection.csv` (every JSON file of the folder); the leaderboard shows them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tta_bench.kernel import UserError
from tta_bench.kernel.options import check_set_value, parse_value
from tta_bench.rundir.selection import COLUMNS, CSV_NAME, FOLDER, MEANINGS, read
from tta_bench.rundir.selection import num as _num

MAX_POINTS = 256  # grid points per method: a larger grid is refused before anything runs


@dataclass(frozen=True)
class Criterion:
    """A selection rule: `score(summary)` (None when the run lacks it), better when lower unless `higher`."""

    name: str
    meaning: str
    score: Callable[[dict[str, Any]], float | None]
    higher: bool = False
    uses_labels: bool = False


def _key(name: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda s: _num(s.get(name))


def _im(s: dict[str, Any]) -> float | None:
    ent, marg = _num(s.get("mean_entropy")), _num(s.get("marginal_entropy"))
    return None if ent is None or marg is None else marg - ent


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion("oracle", MEANINGS["oracle"], _key("mean_error"), uses_labels=True),
        Criterion("last", MEANINGS["last"], lambda s: None),
        Criterion("entropy", MEANINGS["entropy"], _key("mean_entropy")),
        Criterion("im", MEANINGS["im"], _im, higher=True),
        Criterion("source", MEANINGS["source"], _key("clean_error_after")),
    )
}


def criteria(names: list[str]) -> list[str]:
    """The `--select` names as a list of criteria (`all` = every one; `oracle` is always added: the gaps need it)."""
    out: list[str] = []
    for n in [v.strip() for item in names for v in item.split(",") if v.strip()]:
        if n == "all":
            out += list(CRITERIA)
        elif n in CRITERIA:
            out.append(n)
        else:
            raise UserError(
                f"--select {n!r} is not a selection criterion. Choose from: all, {', '.join(CRITERIA)} "
                "(e.g. --select oracle entropy source)."
            )
    return list(dict.fromkeys(["oracle", *out]))


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`["method.lr=1e-3,1e-4", "method.steps=1,2"]` -> `{"lr": [1e-3, 1e-4], "steps": [1, 2]}` (values parsed like
    `--set` values; a value holding a comma is written in brackets: `method.betas=[0.9,0.99];[0.5,0.9]` uses `;`)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        scope, dot, name = key.partition(".")
        if not sep or scope != "method" or not dot or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UserError(
                f"Bad --grid '{item}': expected method.<option>=v1,v2,... (the method's options the selection "
                "chooses among), e.g. --grid method.lr=1e-3,1e-4."
            )
        if name in grid:
            raise UserError(f"--grid method.{name} is given twice: list all its values in one --grid option.")
        sep_char = ";" if ";" in values else ","
        parts = [v.strip() for v in values.split(sep_char) if v.strip()]
        if not parts:
            raise UserError(f"--grid '{item}' lists no values: give at least one, e.g. --grid method.{name}=1e-3,1e-4.")
        vals = [check_set_value(f"method.{name}", parse_value(v)) for v in parts]
        if len({json.dumps(v, sort_keys=True) for v in vals}) != len(vals):
            raise UserError(f"--grid '{item}' lists a value twice: give each value once.")
        grid[name] = vals
    n = math.prod(len(v) for v in grid.values()) if grid else 0
    if n > MAX_POINTS:
        raise UserError(f"--grid gives {n} points per method, more than {MAX_POINTS}: list fewer values.")
    return grid


def points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every point of the grid (the product of its values), in the order the values were given."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _point_id(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)


def _label(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in point.items()) or "(defaults)"


def run_row(folder: Path, keys: list[str]) -> dict[str, Any]:
    """One run folder as a selection row: its benchmark, method, seed, grid point (`keys` of its resolved method
    options) and summary (validated)."""
    from tta_bench import rundir

    cfg, summary = rundir.load_config(folder), rundir.load_summary(folder)
    c = cfg["config"]
    opts = c.get("method_opts") if isinstance(c.get("method_opts"), dict) else {}
    return {
        "run_id": cfg["run_id"],
        "method": str(c.get("method")),
        "benchmark": f"{c.get('stream')}/{c.get('model')}/{c.get('setting')}",
        "seed": c.get("seed"),
        "point": {k: opts.get(k) for k in keys},
        "summary": dict(summary),
    }


def select(
    rows: list[dict[str, Any]], defaults: dict[tuple[str, str], dict[str, Any]], names: list[str]
) -> list[dict[str, Any]]:
    """The selection table: one row per (benchmark, method, criterion) with the chosen point, its test error, the
    oracle's and the gap. `defaults[(benchmark, method)]` is the method's default point (the `last` criterion's
    choice); seeds are averaged per point (a point's score is None when any of its seeds lacks it); ties go to the
    point listed first (the default point, then the grid's order)."""
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        groups.setdefault((r["benchmark"], r["method"]), {}).setdefault(_point_id(r["point"]), []).append(r)
    table = []
    for (bench, method), by_point in groups.items():
        default_id = _point_id(defaults[(bench, method)]) if (bench, method) in defaults else None
        order = sorted(by_point, key=lambda p: p != default_id)  # stable: the default point first
        point_of = {p: by_point[p][0]["point"] for p in order}

        def mean(p: str, crit: Criterion, by_point=by_point) -> float | None:
            vals = [crit.score(r["summary"]) for r in by_point[p]]
            return None if not vals or any(v is None for v in vals) else sum(vals) / len(vals)  # type: ignore[misc]

        err = {p: mean(p, CRITERIA["oracle"]) for p in order}
        chosen: dict[str, str | None] = {}
        scores: dict[str, float | None] = {}
        for name in names:
            crit = CRITERIA[name]
            if name == "last":
                pick = default_id if default_id in by_point else None
                chosen[name], scores[name] = pick, None
                continue
            scored = [(p, mean(p, crit)) for p in order]
            scored = [(p, s) for p, s in scored if s is not None]
            if not scored:
                chosen[name], scores[name] = None, None
                continue
            best = (max if crit.higher else min)(s for _, s in scored)
            pick = next(p for p, s in scored if s == best)
            chosen[name], scores[name] = pick, best
        oracle_err = err.get(chosen.get("oracle")) if chosen.get("oracle") else None
        for name in names:
            p = chosen[name]
            e = err.get(p) if p is not None else None
            table.append(
                {
                    "benchmark": bench,
                    "method": method,
                    "criterion": name,
                    "uses_labels": CRITERIA[name].uses_labels,
                    "chosen": _label(point_of[p]) if p is not None else None,
                    "score": scores[name],
                    "error": e,
                    "oracle_error": oracle_err,
                    "gap": None if e is None or oracle_err is None else e - oracle_err,
                    "points": len(order),
                    "seeds": max(len(v) for v in by_point.values()),
                }
            )
    return table


def _file_name(bench: str, method: str) -> str:
    text = f"{bench}__{method}"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:100]
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}.json"


def write(out: Path, table: list[dict[str, Any]]) -> list[Path]:
    """Write the table's rows as `<out>/selection/<benchmark>__<method>-<hash>.json` (one per pair) and rebuild
    `<out>/selection/selection.csv` from every JSON file there; the paths written."""
    from tta_bench import rundir

    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in table:
        by_pair.setdefault((row["benchmark"], row["method"]), []).append(row)
    written = []
    for (bench, method), rows in by_pair.items():
        path = folder / _file_name(bench, method)
        rundir.write_json_file(path, {"benchmark": bench, "method": method, "rows": rows})
        written.append(path)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for row in read(Path(out)):
        w.writerow({k: row.get(k) for k in COLUMNS})
    rundir.write_file(folder / CSV_NAME, buf.getvalue())
    return [*written, folder / CSV_NAME]


def format_table(table: list[dict[str, Any]]) -> str:
    """The table as text (one line per criterion; the oracle marked as using labels)."""
    lines = []
    for row in table:
        err = "n/a" if row["error"] is None else f"{row['error']:.2f} %"
        gap = "" if row["gap"] is None else f" (gap {row['gap']:+.2f} pp)"
        tag = " [uses test labels]" if row["uses_labels"] else ""
        lines.append(
            f"  {row['benchmark']} {row['method']} {row['criterion']:<8} -> {row['chosen'] or 'none'}: {err}{gap}{tag}"
        )
    return "\n".join(lines)
