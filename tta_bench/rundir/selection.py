"""The model-selection tables an out folder holds (`<out>/selection/`, written by `sweep --select`, read by the
leaderboard): their place, columns, criteria names and meanings, and the reader. The criteria's scores live in
`tta_bench.selection` (the harness); what a table file holds is declared here, so the leaderboard reads it without
importing the harness."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tta_bench.kernel import UserError, untrusted

FOLDER = "selection"
CSV_NAME = "selection.csv"
COLUMNS = ("benchmark", "method", "criterion", "uses_labels", "chosen", "score", "error", "oracle_error", "gap",
           "points", "seeds")  # fmt: skip
# criterion -> its meaning, in the order tables list them
MEANINGS: dict[str, str] = {
    "oracle": "lowest test error (uses the test labels)",
    "last": "no selection: the method's default options (TTAB's last iterate)",
    "entropy": "lowest mean prediction entropy",
    "im": "highest marginal entropy minus mean entropy (information maximisation)",
    "source": "lowest clean (source-distribution) error after adaptation",
}


def num(v: Any) -> float | None:
    """`v` as a finite float, else None (booleans are not numbers here)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def read(out: Path) -> list[dict[str, Any]]:
    """Every selection row under `<out>/selection/*.json` (sorted by benchmark, method, criterion order); a file
    that is not a selection table is skipped (the page shows what is valid)."""
    folder = Path(out) / FOLDER
    if not folder.is_dir():
        return []
    rows = []
    for path in sorted(folder.glob("*.json")):
        try:
            obj = untrusted.read_json(path, 1 << 20, "selection table", "Delete it and run the selection again.")
        except UserError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("rows"), list):
            rows += [r for r in obj["rows"] if isinstance(r, dict) and _valid(r)]
    order = list(MEANINGS)
    return sorted(rows, key=lambda r: (r["benchmark"], r["method"], order.index(r["criterion"])))


def _valid(r: dict[str, Any]) -> bool:
    return (
        all(k in r for k in COLUMNS)
        and r["criterion"] in MEANINGS
        and isinstance(r["benchmark"], str)
        and isinstance(r["method"], str)
        and all(r[k] is None or num(r[k]) is not None for k in ("score", "error", "oracle_error", "gap"))
    )
