"""Published tables as data: `tables/<name>.json`, loaded and validated here (stdlib only, no torch).

A table file holds where its numbers come from (`source`: citation, repository, file and commit or URL, section),
the protocol they were measured under (`protocol`: stream, model, setting, severity, samples per domain, batch
size, seeds, and where each of those is stated), the metric compared (`metric`: a summary.json key, its
direction; `derive: "reduction"` compares 100·(1 − method/baseline) instead), a tolerance, and one `cell` per
published number. Every cell names the adapter it is compared with, its value as printed and where exactly it
is printed (`where`); a cell may override protocol keys (e.g. `setting` for the realistic column, `method_opts`,
`model`). Nothing here is computed: the numbers are copied from the cited source, and a table that could not
be found is absent rather than approximated.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tta_bench.kernel import UserError, close_matches

TABLES_DIR = Path(__file__).resolve().parent / "tables"
# protocol keys a cell may override, with the type each must have
OVERRIDABLE: dict[str, tuple[type, ...]] = {
    "stream": (str,),
    "model": (str,),
    "setting": (str,),
    "severity": (int, type(None)),
    "samples_per_domain": (int,),
    "batch_size": (int,),
    "preset": (str,),
    "domains": (list,),
    "stream_opts": (dict,),
    "model_opts": (dict,),
    "method_opts": (dict,),
}
PROTOCOL_REQUIRED = ("stream", "model", "setting", "domains", "samples_per_domain", "batch_size", "seeds", "source")
PROTOCOL_KEYS = set(OVERRIDABLE) | set(PROTOCOL_REQUIRED) | {"precision", "split_domains", "model_note"}
CELL_KEYS = set(OVERRIDABLE) | {
    "id", "method", "label", "value", "where", "spread", "spread_kind", "baseline", "column", "tolerance", "note",
}  # fmt: skip
TOP_KEYS = {
    "name", "title", "source", "protocol", "metric", "tolerance", "tolerance_note", "caveat", "stand_in", "cells",
    "notes",
}  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One published number: compared with `method` (and, for a derived metric, with `baseline`)."""

    id: str
    method: str
    label: str
    value: float
    where: str
    spread: float | None = None
    baseline: str | None = None
    column: str | None = None
    tolerance: float | None = None
    note: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    source: dict[str, str]
    protocol: dict[str, Any]
    metric: dict[str, str]
    tolerance: float
    cells: tuple[Cell, ...]
    tolerance_note: str = ""
    caveat: str | None = None
    stand_in: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    path: Path | None = None

    def cell_protocol(self, cell: Cell) -> dict[str, Any]:
        """The protocol one cell was measured under: the table's, with the cell's overrides."""
        return {**self.protocol, **cell.overrides}

    def cell_tolerance(self, cell: Cell) -> float:
        return self.tolerance if cell.tolerance is None else cell.tolerance

    def methods(self) -> list[str]:
        """Every adapter the table runs (cells' methods and baselines), in first-seen order."""
        out: list[str] = []
        for c in self.cells:
            out += [m for m in (c.method, c.baseline) if m and m not in out]
        return out

    def source_text(self) -> str:
        s = self.source
        where = s.get("repo") and f"{s['repo']}: {s.get('file', '')}@{s.get('commit', '')[:7]}"
        return "; ".join(x for x in (s.get("citation"), where or s.get("url"), s.get("section")) if x)


def names() -> list[str]:
    """The shipped tables, by name (their file stems)."""
    return sorted(p.stem for p in TABLES_DIR.glob("*.json"))


def load(name_or_path: str | Path) -> Table:
    """A shipped table by name, or a table file by path; UserError naming the file and field when invalid."""
    p = Path(name_or_path)
    if p.suffix != ".json":
        if str(name_or_path) not in names():
            near = close_matches(str(name_or_path), names())
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise UserError(
                f"Unknown table '{name_or_path}'{hint}. `python -m tta_bench reproduce list` shows the tables "
                f"({', '.join(names())}); a path to a table file (.json) also works."
            )
        p = TABLES_DIR / f"{name_or_path}.json"
    if not p.is_file():
        raise UserError(f"Table file {p} does not exist. Give a shipped table name or the path of a table .json file.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"Table file {p} is not valid JSON ({e}). Fix the file (strict JSON, UTF-8).") from None
    return validate(data, p)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number in strict JSON")


def _fail(path: Path | str, field_: str, problem: str, fix: str) -> UserError:
    return UserError(f"Table file {path}: {field_} {problem}. {fix}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_type(path: Path | str, where: str, v: Any, types: tuple[type, ...]) -> None:
    if isinstance(v, bool) or not isinstance(v, types):
        names_ = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise _fail(path, where, f"is {v!r}, not {names_}", f"Write {where} as {names_}.")


def validate(data: Any, path: Path | str = "<table>") -> Table:
    """Check a table's structure and every cell; return it as a Table."""
    if not isinstance(data, dict):
        raise _fail(
            path, "the file", "is not a JSON object", "A table is an object with name, source, protocol, cells."
        )
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise _fail(path, f"key(s) {sorted(unknown)}", "are unknown", f"Use only {sorted(TOP_KEYS)}.")
    for key in ("name", "title", "source", "protocol", "metric", "tolerance", "cells"):
        if key not in data:
            raise _fail(path, f"'{key}'", "is missing", "Every table has name, title, source, protocol, metric, "
                        "tolerance and cells.")  # fmt: skip
    if isinstance(path, Path) and path.parent == TABLES_DIR and data["name"] != path.stem:
        raise _fail(path, "'name'", f"is {data['name']!r}", f"Name it after its file: {path.stem!r}.")
    src = data["source"]
    if not isinstance(src, dict) or not src.get("citation") or not (src.get("url") or src.get("repo")):
        raise _fail(path, "'source'", "lacks a citation or a url/repo", "Say where the numbers are printed.")
    proto = _protocol(path, data["protocol"])
    metric = data["metric"]
    if not isinstance(metric, dict) or not isinstance(metric.get("key"), str):
        raise _fail(path, "'metric'", "has no 'key'", 'Give the summary.json key, e.g. {"key": "mean_error"}.')
    if metric.get("better") not in ("lower", "higher"):
        raise _fail(path, "metric.better", f"is {metric.get('better')!r}", "Write 'lower' or 'higher'.")
    if metric.get("derive") not in (None, "reduction"):
        raise _fail(path, "metric.derive", f"is {metric.get('derive')!r}", "Only 'reduction' is known (or omit it).")
    if not _number(data["tolerance"]) or data["tolerance"] <= 0:
        raise _fail(path, "'tolerance'", f"is {data['tolerance']!r}", "Give a positive number (metric units).")
    cells = data["cells"]
    if not isinstance(cells, list) or not cells:
        raise _fail(path, "'cells'", "is empty or not a list", "List one cell per published number.")
    parsed = tuple(_cell(path, i, c, metric) for i, c in enumerate(cells))
    ids = [c.id for c in parsed]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise _fail(path, "cell ids", f"repeat ({', '.join(dup)})", "Give every cell its own id.")
    stand_in = data.get("stand_in")
    if stand_in is not None and not (isinstance(stand_in, dict) and {"stream", "model"} <= set(stand_in)):
        raise _fail(path, "'stand_in'", "needs stream and model", 'E.g. {"stream": "digits-c", "model": "small-cnn"}.')
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise _fail(path, "'notes'", "is not a list of strings", "Write notes as a list of sentences.")
    return Table(
        name=str(data["name"]),
        title=str(data["title"]),
        source=dict(src),
        protocol=proto,
        metric=dict(metric),
        tolerance=float(data["tolerance"]),
        cells=parsed,
        tolerance_note=str(data.get("tolerance_note", "")),
        caveat=data.get("caveat"),
        stand_in=stand_in,
        notes=tuple(notes),
        path=Path(path) if isinstance(path, Path) else None,
    )


def _protocol(path: Path | str, proto: Any) -> dict[str, Any]:
    if not isinstance(proto, dict):
        raise _fail(path, "'protocol'", "is not an object", f"Give {', '.join(PROTOCOL_REQUIRED)}.")
    missing = [k for k in PROTOCOL_REQUIRED if k not in proto]
    if missing:
        raise _fail(path, f"protocol.{missing[0]}", "is missing", f"A protocol states {', '.join(PROTOCOL_REQUIRED)}.")
    unknown = set(proto) - PROTOCOL_KEYS
    if unknown:
        raise _fail(path, f"protocol key(s) {sorted(unknown)}", "are unknown", f"Use only {sorted(PROTOCOL_KEYS)}.")
    for k, types in OVERRIDABLE.items():
        if k in proto:
            _check_type(path, f"protocol.{k}", proto[k], types)
    seeds = proto["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise _fail(path, "protocol.seeds", f"is {seeds!r}", "Give the published seeds as a list of integers.")
    for k in ("samples_per_domain", "batch_size"):
        if proto[k] < 1:
            raise _fail(path, f"protocol.{k}", f"is {proto[k]}", "Give a positive whole number.")
    if not proto["domains"] or not all(isinstance(d, str) for d in proto["domains"]):
        raise _fail(path, "protocol.domains", f"is {proto['domains']!r}", "List the domains in stream order.")
    return dict(proto)


def _cell(path: Path | str, i: int, c: Any, metric: dict[str, str]) -> Cell:
    where = f"cells[{i}]"
    if not isinstance(c, dict):
        raise _fail(path, where, "is not an object", "Each cell is an object with id, method, label, value, where.")
    for k in ("id", "method", "label", "where"):
        if not isinstance(c.get(k), str) or not c[k].strip():
            raise _fail(path, f"{where}.{k}", f"is {c.get(k)!r}", "Give a non-empty string.")
    where = f"cell '{c['id']}'"
    unknown = set(c) - CELL_KEYS
    if unknown:
        raise _fail(path, f"{where} key(s) {sorted(unknown)}", "are unknown", f"Use only {sorted(CELL_KEYS)}.")
    if not _number(c.get("value")):
        raise _fail(path, f"{where}.value", f"is {c.get('value')!r}", "Give the published number as printed "
                    "(a JSON number, not a string).")  # fmt: skip
    for k in ("spread", "tolerance"):
        if k in c and (not _number(c[k]) or c[k] < 0):
            raise _fail(path, f"{where}.{k}", f"is {c[k]!r}", "Give a non-negative number.")
    if metric.get("derive") and not c.get("baseline"):
        raise _fail(path, f"{where}.baseline", "is missing", "A derived metric compares a method with a baseline.")
    for k, types in OVERRIDABLE.items():
        if k in c:
            _check_type(path, f"{where}.{k}", c[k], types)
    return Cell(
        id=c["id"],
        method=c["method"],
        label=c["label"],
        value=float(c["value"]),
        where=c["where"],
        spread=c.get("spread"),
        baseline=c.get("baseline"),
        column=c.get("column"),
        tolerance=c.get("tolerance"),
        note=c.get("note"),
        overrides={k: c[k] for k in OVERRIDABLE if k in c},
    )
