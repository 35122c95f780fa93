"""Reading files that may be damaged or hostile (stdlib only): nothing a file holds can crash, hang or exhaust the
reader. Used for run folders (`tta_bench.rundir.check_run`, which the leaderboard relies on).

- `read_bytes`: a regular file of bounded size, checked before reading (a FIFO, device, directory or huge file is
  refused without blocking or reading it);
- `read_json`: strict JSON (UTF-8, no NaN/Infinity/1e999, 64-bit integers, no duplicate keys, valid Unicode,
  bounded depth);
- `read_csv`: every cell typed (counts, finite numbers, bounded non-empty text), header and row lengths checked.

Each refusal is a UserError naming the file and what is wrong, plus the caller's `hint` (what to do).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tta_bench.kernel.errors import UserError

MAX_JSON_DEPTH = 32
MAX_INT = 2**63 - 1
MAX_CSV_COLUMNS = 4096
MAX_TEXT = 256  # characters of a CSV text cell (a name shown on a page)


def _refused(path: Path, what: str, hint: str = "") -> UserError:
    return UserError(f"{path} {what}." + (f" {hint}" if hint else ""))


def read_bytes(path: Path, max_bytes: int, hint: str = "") -> bytes:
    """The bytes of `path`: a regular file of at most `max_bytes` (checked before reading), else a UserError naming
    it (`hint`: what to do, appended). A FIFO, device or directory is refused without blocking or reading it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the reader
    except FileNotFoundError:
        raise _refused(path, "does not exist", hint) from None
    except OSError as e:
        raise _refused(path, f"cannot be opened ({e.strerror})", hint) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refused(path, "is not a regular file", hint)
    with os.fdopen(fd, "rb") as f:
        if st.st_size > max_bytes:
            raise _refused(path, f"holds {st.st_size:,} bytes, more than such a file may ({max_bytes:,})", hint)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while being read
        raise _refused(path, f"holds more than {max_bytes:,} bytes", hint)
    return data


def _strict_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:20]} is not finite")
    return v


def _strict_int(text: str) -> int:
    v = int(text)  # over 4,300 digits: ValueError
    if abs(v) > MAX_INT:
        raise ValueError(f"integer {text[:20]}... is larger than 64 bits")
    return v


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError(f"duplicate key {next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))!r}"[:80])
    return d


def _check_tree(obj: Any) -> None:
    """Depth at most MAX_JSON_DEPTH and every string valid Unicode (no lone surrogates from \\udXXX escapes)."""
    stack = [(obj, 1)]
    while stack:
        x, depth = stack.pop()
        if depth > MAX_JSON_DEPTH and isinstance(x, (dict, list)):
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        items = [*x.keys(), *x.values()] if isinstance(x, dict) else x if isinstance(x, list) else [x]
        for v in items:
            if isinstance(v, str):
                v.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
            elif isinstance(v, (dict, list)):
                stack.append((v, depth + 1))


def read_json(path: Path, max_bytes: int, what: str = "file", hint: str = "") -> Any:
    """A JSON file read strictly: UTF-8, RFC 8259 JSON, finite numbers (no NaN/Infinity/1e999), 64-bit integers,
    no duplicate keys, valid Unicode, at most MAX_JSON_DEPTH deep and `max_bytes` long; anything else is a UserError
    naming it (`hint` appended)."""
    data = read_bytes(path, max_bytes, hint)
    try:
        obj = json.loads(
            data.decode("utf-8"),
            parse_float=_strict_float,
            parse_int=_strict_int,
            parse_constant=_reject_constant,
            object_pairs_hook=_no_duplicates,
        )
        _check_tree(obj)
    except UnicodeDecodeError as e:
        raise _refused(path, f"is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})", hint) from None
    except (ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise _refused(path, f"is not strict JSON ({reason}); the {what} is truncated or damaged", hint) from None
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def read_csv(
    path: Path, types_: dict[str, str], required: Sequence[str], max_bytes: int, hint: str = ""
) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of a CSV file, each cell checked and converted by its column's kind in `types_` ("int": a
    count >= 0, "number": finite, "text": non-empty, at most MAX_TEXT characters; a "?" suffix allows an empty cell,
    read as None); other columns must be numbers or empty. A UserError naming the file and the first bad cell
    otherwise (not UTF-8, missing or repeated columns, ragged rows, text where a number belongs, inf/nan, huge)."""
    data = read_bytes(path, max_bytes, hint)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _refused(path, f"is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})", hint) from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = next(reader, None)
        if not header:
            raise _refused(path, "is empty (no header row)", hint)
        if len(header) > MAX_CSV_COLUMNS or len(set(header)) != len(header):
            raise _refused(path, f"has {len(header)} columns, repeated or more than {MAX_CSV_COLUMNS}", hint)
        missing = [c for c in required if c not in header]
        if missing:
            raise _refused(path, f"lacks the column(s) {', '.join(missing)}", hint)
        kinds = [types_.get(c, "number?") for c in header]
        rows = []
        for line in reader:
            if len(line) != len(header):
                raise _refused(path, f"row {reader.line_num} has {len(line)} cells for {len(header)} columns", hint)
            rows.append([_cell(v, k, path, reader.line_num, c, hint) for v, k, c in zip(line, kinds, header)])
    except csv.Error as e:
        raise _refused(path, f"is not valid CSV (line {reader.line_num}: {e})", hint) from None
    return header, rows


def _cell(v: str, kind: str, path: Path, line: int, column: str, hint: str) -> Any:
    if v == "":
        if kind.endswith("?"):
            return None
        raise _refused(path, f"has an empty `{column}` on line {line}", hint)
    if kind == "text":
        if len(v) > MAX_TEXT:
            raise _refused(path, f"has a `{column}` of {len(v)} characters on line {line} (at most {MAX_TEXT})", hint)
        return v
    try:
        x = float(v)
    except ValueError:
        raise _refused(path, f"has the text {v[:30]!r} in the number column `{column}` on line {line}", hint) from None
    if not math.isfinite(x) or abs(x) > MAX_INT:
        raise _refused(path, f"has the non-finite or huge number {v[:30]!r} in `{column}` on line {line}", hint)
    if kind.startswith("int"):
        if x != int(x) or x < 0:
            raise _refused(path, f"has {v[:30]!r} in `{column}` on line {line}, not a count (integer >= 0)", hint)
        return int(x)
    return x
