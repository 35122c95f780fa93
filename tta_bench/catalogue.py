"""What `python -m tta_bench list` prints, and the names and option names the CLI checks typos against, without
importing torch.

Methods, streams, models and corruptions register when their modules are imported, and those modules import torch
(about 5 s of CPU). The catalogue is the registries' listing rows (name, description, the `-v` details) and the
option names of every method, stream and model (with each stream's default model), built from the live registries
and kept as a JSON file in the cache folder (`$TTA_BENCH_CACHE/catalogue/<fingerprint>.json`). Its name is a
fingerprint of the code that decides it: every `.py` file of `tta_bench`, `tta_bench.methods` and
`tta_bench.corruptions` (names and contents, ~1 MB, hashed in a few ms), the Python version and the catalogue format.
Any edit, an added method or stream file included, changes the fingerprint, so a stale listing is never shown: the
first `list` after a change builds it again from the registries (importing torch, once), the next ones read the
file. A damaged or unreadable file is rebuilt; a cache folder that cannot be written only costs the speed.

A process that has imported a registry already (a library user or a test that registered an entry of its own, or
extended a package's `__path__`) holds entries no file shows: it lists and checks from its live registries, and
writes no catalogue.

Why a cache rather than reading the method files statically (ast): a method's listing is computed (options
inherited from its base class and optimizer, presets resolved, defaults evaluated), so a static reader would be a
second implementation that drifts; the cache is the live registries' own output, checked by its fingerprint.

Settings need no catalogue: they are declared in pure Python (`tta_bench.settings`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import tta_bench

FORMAT = 2  # bump when the layout changes
SECTIONS = ("methods", "streams", "models", "corruptions")  # the registries' sections (settings are separate)
KEEP = 8  # catalogue files kept in the cache folder (several checkouts may share it)
_MAX_BYTES = 8 << 20
# The modules that hold the registries: once one is imported, entries may have been registered in this process.
REGISTRY_MODULES = ("tta_bench.methods", "tta_bench.streams", "tta_bench.models", "tta_bench.corruptions")

Row = tuple[str, str, str]  # (name, description, what `-v` adds below it)
OPTION_KINDS = ("method", "stream", "model")


def _roots() -> list[Path]:
    """The folders whose code decides the listing: tta_bench and (in a source tree, beside it) methods/corruptions."""
    roots = [Path(tta_bench.__file__).resolve().parent]
    for name in ("tta_bench.methods", "tta_bench.corruptions"):
        spec = importlib.util.find_spec(name)  # finds the package without running it
        if spec is not None and spec.submodule_search_locations:
            folder = Path(list(spec.submodule_search_locations)[0]).resolve()
            if not any(folder == r or r in folder.parents for r in roots):
                roots.append(folder)
    return roots


def fingerprint() -> str:
    """Hash of every source file's name and bytes under the listing's roots, the Python version and FORMAT."""
    h = hashlib.sha256(f"catalogue {FORMAT} python {sys.version_info[0]}.{sys.version_info[1]}\n".encode())
    for root in _roots():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root.parent).as_posix()
            try:
                data = path.read_bytes()
            except OSError:
                data = b"<unreadable>"
            h.update(f"{rel}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()[:24]


def registries_loaded() -> bool:
    """True when this process has imported a registry (its live entries are then the truth, not the cache)."""
    return any(m in sys.modules for m in REGISTRY_MODULES)


def _folder() -> Path | None:
    """The cache folder's `catalogue/`, or None when `$TTA_BENCH_CACHE` is unusable (then nothing is cached)."""
    from tta_bench.config import cache_dir_default
    from tta_bench.kernel import UserError

    try:
        return cache_dir_default() / "catalogue"
    except UserError:
        return None


def _valid(obj: Any, fp: str) -> bool:
    """True for a catalogue file of this format and fingerprint whose rows are lists of three strings."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("fingerprint") != fp:
        return False
    sections = obj.get("sections")
    if not isinstance(sections, dict) or set(sections) != set(SECTIONS):
        return False
    rows_ok = all(
        isinstance(rows, list)
        and all(isinstance(r, list) and len(r) == 3 and all(isinstance(x, str) for x in r) for r in rows)
        for rows in sections.values()
    )
    options, defaults = obj.get("options"), obj.get("default_model")
    return (
        rows_ok
        and isinstance(options, dict)
        and set(options) == set(OPTION_KINDS)
        and all(
            isinstance(by_name, dict)
            and all(isinstance(v, list) and all(isinstance(k, str) for k in v) for v in by_name.values())
            for by_name in options.values()
        )
        and isinstance(defaults, dict)
        and all(isinstance(v, str) for v in defaults.values())
    )


def cached() -> dict[str, Any] | None:
    """The catalogue of the code as it is now, when the cache holds it (no torch imported); else None. Keys:
    `sections` ({section: [Row]}), `options` ({"method"|"stream"|"model": {name: [option names]}}) and
    `default_model` ({stream: model}). None too when the registries are loaded in this process (`registries_loaded`)."""
    if registries_loaded():
        return None
    folder = _folder()
    if folder is None:
        return None
    fp = fingerprint()
    path = folder / f"{fp}.json"
    try:
        if not path.is_file() or path.stat().st_size > _MAX_BYTES:
            return None
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not _valid(obj, fp):
        return None
    sections = {sec: [tuple(r) for r in rows] for sec, rows in obj["sections"].items()}
    return {"sections": sections, "options": obj["options"], "default_model": obj["default_model"]}


def build() -> dict[str, Any]:
    """The catalogue from the live registries (imports every method, stream, model and corruption: torch)."""
    from tta_bench import corruptions, methods, presets
    from tta_bench.methods._doc import option_lines
    from tta_bench.models import MODELS, model_options
    from tta_bench.streams import STREAMS, clean_split, default_model, family, stream_options

    def method_row(e) -> Row:
        preset_lines = "".join(f"\n      preset {line}" for line in presets.describe(e.factory))
        options = "".join(f"\n      option {line}" for line in option_lines(e.factory)) or "\n      (no options)"
        return (e.name, e.description + preset_lines, e.description + options + preset_lines)

    def stream_row(e) -> Row:
        text = f"{e.description} [default model: {default_model(e.name)}; family: {family(e.name) or '-'}]"
        return (e.name, text, f"{text}\n      {clean_split(e.name).describe()}")

    sections = {
        "methods": [method_row(e) for e in methods.METHODS.items()],
        "streams": [stream_row(e) for e in STREAMS.items()],
        "models": [(e.name, e.description, e.description) for e in MODELS.items()],
        "corruptions": [(n, corruptions.describe(n), corruptions.describe(n)) for n in corruptions.names()],
    }
    options = {
        "method": {n: sorted(methods.get(n).defaults) for n in methods.METHODS.names()},
        "stream": {n: sorted(stream_options(n)) for n in STREAMS.names()},
        "model": {n: sorted(model_options(n)) for n in MODELS.names()},
    }
    return {"sections": sections, "options": options, "default_model": {n: default_model(n) for n in STREAMS.names()}}


def save(cat: dict[str, Any]) -> Path | None:
    """Write `cat` as the catalogue of the current code (atomically); the oldest files beyond KEEP are removed.
    Returns the file, or None when the cache folder cannot be written (the listing is still printed)."""
    from tta_bench.kernel import write_atomic

    folder = _folder()
    if folder is None:
        return None
    fp = fingerprint()
    path = folder / f"{fp}.json"
    rows = {s: [list(r) for r in rows] for s, rows in cat["sections"].items()}
    obj = {"format": FORMAT, "fingerprint": fp, **cat, "sections": rows}
    try:
        write_atomic(path, json.dumps(obj, ensure_ascii=False))
        old = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP:]
        for p in old:
            p.unlink(missing_ok=True)
    except OSError:
        return None
    return path


def load() -> dict[str, Any]:
    """The catalogue: from the cache when it matches the code, else built from the registries and cached (unless the
    registries were loaded in this process before: then built from them and not cached)."""
    if registries_loaded():
        return build()
    found = cached()
    if found is not None:
        return found
    cat = build()
    save(cat)
    return cat


def known(section: str) -> list[str] | None:
    """The names of a section (methods, streams, models, corruptions) when the cached catalogue holds them (no
    torch), else None (the caller then asks the registry itself)."""
    found = cached()
    return None if found is None else [r[0] for r in found["sections"][section]]
