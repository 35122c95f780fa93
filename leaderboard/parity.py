"""The page's parity section: the reports `python -m tta_bench reproduce` writes to `<runs>/parity/<table>.json`.

Reads each report (schema 1 of `tta_bench.reproduce.parity`; its keys are the contract, this module imports
nothing of the harness) and returns what the template shows per table: title, source, mode, tolerance, and one row
per published cell with ours, the difference, the seeds' spread and the verdict. A report that cannot be read is
listed with the reason, never fatal to the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tta_bench.kernel import UserError, read_json

FOLDER = "parity"
MODE_NOTES = {
    "full": "full scale: every image of every domain",
    "reduced": "reduced (--limit): fewer images per domain than the protocol, not comparable with the published values",
    "stand-in": "stand-in model and data: tests the machinery only, not comparable with the published values",
}


def _num(v: Any, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _printed(v: float) -> str:
    return f"{v:.1f}" if round(v, 1) == v else f"{v:g}"


def _row(r: dict[str, Any]) -> dict[str, Any]:
    spread = _num(r.get("ours_std"))
    return {
        "label": r.get("label", r.get("cell", "")),
        "method": r.get("method", "") + (f" vs {r['baseline']}" if r.get("baseline") else ""),
        "published": _printed(r["published"]) + (f" ± {r['published_spread']:g}" if r.get("published_spread") else ""),
        "ours": _num(r.get("ours")) + (f" ± {spread}" if spread else ""),
        "seeds": r.get("n_seeds", 0),
        "range": "" if r.get("ours_min") is None else f"{_num(r['ours_min'])}–{_num(r['ours_max'])}",
        "diff": "" if r.get("diff") is None else f"{r['diff']:+.2f}",
        "tolerance": f"{r.get('tolerance', 0):g}",
        "verdict": r.get("verdict", ""),
        "reason": r.get("reason", ""),
        "where": r.get("where", ""),
    }


def section(path: Path) -> dict[str, Any]:
    """One report file as the template's table (or `{"file", "error"}` when it cannot be read)."""
    try:
        rep = read_json(path, "parity report")
        if not isinstance(rep, dict) or rep.get("schema") != 1 or not isinstance(rep.get("rows"), list):
            raise UserError(f"{path} is not a parity report (schema 1 with rows)")
        src = rep.get("source") or {}
        return {
            "file": path.name,
            "table": rep.get("table", path.stem),
            "title": rep.get("title", path.stem),
            "source": rep.get("source_text", ""),
            "url": src.get("url", ""),
            "protocol": rep.get("protocol_text", ""),
            "mode": rep.get("mode", ""),
            "mode_note": MODE_NOTES.get(rep.get("mode", ""), ""),
            "metric": (rep.get("metric") or {}).get("label", ""),
            "unit": (rep.get("metric") or {}).get("unit", ""),
            "tolerance_note": rep.get("tolerance_note", ""),
            "caveat": rep.get("caveat"),
            "generated": rep.get("generated", ""),
            "counts": rep.get("counts", {}),
            "rows": [_row(r) for r in rep["rows"] if isinstance(r, dict)],
            "notes": [n for n in rep.get("notes", []) if isinstance(n, str)],
        }
    except (UserError, KeyError, TypeError, ValueError) as e:
        return {"file": path.name, "error": str(e)}


def sections(runs_dir: Path) -> list[dict[str, Any]]:
    """Every parity report under `<runs_dir>/parity/`, full-scale ones first, then by table name."""
    folder = Path(runs_dir) / FOLDER
    if not folder.is_dir():
        return []
    out = [section(p) for p in sorted(folder.glob("*.json"))]
    return sorted(out, key=lambda s: (s.get("mode") == "stand-in", s.get("table", s["file"])))
