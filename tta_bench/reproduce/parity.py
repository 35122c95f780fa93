"""The parity report: ours vs published, per cell, from measured values (pure functions; no torch).

`rows(table, measured, ...)` takes, per cell and role (`method`, and `baseline` for a derived metric), the value
of each seed, and returns one row per cell: the published value (and its printed spread), ours (mean over
seeds, sample standard deviation, min and max), the difference ours − published, the tolerance and a verdict:

- `match` / `differs`: |ours − published| within / beyond the tolerance, at full scale (every image of every
  domain; fewer seeds than published are allowed and said in `reason`);
- `reduced`: fewer images per domain than the protocol (`--limit`): not comparable;
- `stand-in`: a stand-in model and data (`--stand-in`): tests the machinery, not comparable at all;
- `missing`: no completed run for the cell (failed, not run yet, or filtered out by --methods).

`write(report, folder)` writes `<table>.json` and `<table>.csv` (stand-in reports `<table>-stand-in.*`, so they
never replace a real one). The JSON's keys are the contract with `leaderboard/parity.py`, which renders it.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from pathlib import Path
from typing import Any

from tta_bench.kernel import write_atomic, write_json
from tta_bench.reproduce.tables import Table

SCHEMA = 1
COLUMNS = (
    "table", "cell", "label", "method", "baseline", "metric", "unit", "published", "published_spread", "ours",
    "ours_std", "ours_min", "ours_max", "n_seeds", "seeds", "diff", "tolerance", "verdict", "reason", "where",
)  # fmt: skip
VERDICTS = ("match", "differs", "reduced", "stand-in", "missing")


def derive(table: Table, by_role: dict[str, dict[int, float]]) -> dict[int, float]:
    """Per-seed values of the cell's metric: the method's, or 100·(1 − method/baseline) (paired by seed)."""
    values = by_role.get("method", {})
    if table.metric.get("derive") != "reduction":
        return dict(values)
    base = by_role.get("baseline", {})
    return {s: 100.0 * (1.0 - v / base[s]) for s, v in values.items() if s in base and base[s]}


def rows(
    table: Table,
    measured: dict[str, dict[str, dict[int, float]]],
    *,
    mode: str = "full",
    limit: int | None = None,
    seeds: list[int] | None = None,
    errors: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One parity row per cell. `measured[cell_id][role][seed]` = value; `mode` full | reduced | stand-in;
    `errors[cell_id]`: why a cell's runs failed (the reason of a `missing` row)."""
    out = []
    for cell in table.cells:
        proto = table.cell_protocol(cell)
        per_seed = derive(table, measured.get(cell.id, {}))
        vals = [per_seed[s] for s in sorted(per_seed) if per_seed[s] is not None and math.isfinite(per_seed[s])]
        tol = table.cell_tolerance(cell)
        row: dict[str, Any] = {
            "table": table.name,
            "cell": cell.id,
            "label": cell.label,
            "method": cell.method,
            "baseline": cell.baseline,
            "metric": table.metric.get("label", table.metric["key"]),
            "unit": table.metric.get("unit", ""),
            "published": cell.value,
            "published_spread": cell.spread,
            "ours": statistics.fmean(vals) if vals else None,
            "ours_std": statistics.stdev(vals) if len(vals) > 1 else None,
            "ours_min": min(vals) if vals else None,
            "ours_max": max(vals) if vals else None,
            "n_seeds": len(vals),
            "seeds": " ".join(str(s) for s in sorted(per_seed)),
            "tolerance": tol,
            "where": cell.where,
        }
        row["diff"] = None if row["ours"] is None else row["ours"] - cell.value
        row["verdict"], row["reason"] = verdict(row, proto, mode, limit, seeds or proto["seeds"])
        if row["verdict"] == "missing" and (errors or {}).get(cell.id):
            row["reason"] = errors[cell.id]  # type: ignore[index]
        out.append(row)
    return out


def verdict(row: dict[str, Any], proto: dict[str, Any], mode: str, limit: int | None, seeds: list[int]) -> tuple:
    """(verdict, reason) of one row; see the module docstring."""
    if row["ours"] is None:
        return "missing", "no completed run (not run yet, failed, or left out with --methods)"
    if mode == "stand-in":
        return "stand-in", "stand-in model and data: tests the machinery, not comparable with the published value"
    n = proto["samples_per_domain"]
    if limit is not None and limit < n:
        return "reduced", f"{limit} images per domain of the protocol's {n}: not comparable at full scale"
    ok = abs(row["diff"]) <= row["tolerance"] + 1e-9
    reason = f"|ours − published| = {abs(row['diff']):.2f} {'≤' if ok else '>'} {row['tolerance']:g}"
    if row["n_seeds"] < len(proto["seeds"]):
        reason += f"; {row['n_seeds']} of the published {len(proto['seeds'])} seeds"
    return ("match" if ok else "differs"), reason


def protocol_text(table: Table) -> str:
    """The protocol in one line: stream, model, settings, domains, severity, images, batch size, seeds."""
    p = table.protocol
    settings = " + ".join(sorted({table.cell_protocol(c)["setting"] for c in table.cells}))
    split = ", one run per domain" if p.get("split_domains") else ""
    sev = f", severity {p['severity']}" if p.get("severity") else ""
    own = [c.id for c in table.cells if set(c.overrides) - {"setting"}]
    return (
        f"{p['stream']}, {p['model']}, {settings}{split}, {len(p['domains'])} domain(s){sev}, "
        f"{p['samples_per_domain']:,} images per domain, batch {p['batch_size']}, {p.get('precision', 'fp32')}, "
        f"seeds {' '.join(map(str, p['seeds']))}"
    ) + (f"; cells {', '.join(own)} override part of it (see the table file)" if own else "")


def report(table: Table, table_rows: list[dict[str, Any]], *, mode: str, limit: int | None, seeds: list[int]) -> dict:
    """The report object written as `<table>.json` (schema 1; read by leaderboard/parity.py)."""
    counts = {v: sum(r["verdict"] == v for r in table_rows) for v in VERDICTS}
    return {
        "schema": SCHEMA,
        "table": table.name,
        "title": table.title,
        "source": table.source,
        "source_text": table.source_text(),
        "protocol": table.protocol,
        "protocol_text": protocol_text(table),
        "metric": table.metric,
        "tolerance": table.tolerance,
        "tolerance_note": table.tolerance_note,
        "caveat": table.caveat,
        "notes": list(table.notes),
        "mode": mode,
        "limit": limit,
        "seeds": seeds,
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "counts": {k: v for k, v in counts.items() if v},
        "columns": list(COLUMNS),
        "rows": table_rows,
    }


def to_csv(table_rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in table_rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
    return buf.getvalue()


def write(rep: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write `<folder>/<table>[-stand-in].json` and `.csv` atomically; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = rep["table"] + ("-stand-in" if rep["mode"] == "stand-in" else "")
    js, cs = folder / f"{stem}.json", folder / f"{stem}.csv"
    write_json(js, rep)
    write_atomic(cs, to_csv(rep["rows"]))
    return js, cs


def printed(v: float) -> str:
    """A published value as printed: one decimal at least (20.0, 16.2, 0.05)."""
    return f"{v:.1f}" if round(v, 1) == v else f"{v:g}"


def text(rep: dict[str, Any]) -> str:
    """The report as a few printed lines."""
    unit = rep["metric"].get("unit", "")
    lines = [f"parity: {rep['title']} [{rep['mode']}]", f"  source: {rep['source_text']}"]
    for r in rep["rows"]:
        ours = "—" if r["ours"] is None else f"{r['ours']:.2f}"
        spread = "" if r["ours_std"] is None else f" ± {r['ours_std']:.2f}"
        diff = "" if r["diff"] is None else f" ({r['diff']:+.2f})"
        lines.append(
            f"  {r['label']:<28} published {printed(r['published'])}{unit}  ours {ours}{spread}{diff}  {r['verdict']}"
        )
    lines.append("  " + ", ".join(f"{n} {v}" for v, n in rep["counts"].items()))
    return "\n".join(lines)
