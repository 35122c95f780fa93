"""Import `tta_bench.methods|corruptions|leaderboard` from the repository's top-level folders.

The repository keeps `methods/`, `corruptions/` and `leaderboard/` beside `tta_bench/` (DESIGN.md's layout), while
their import names live under `tta_bench` so that a user's own `methods` package never shadows ours. Installed
wheels put them inside `tta_bench/` (setup.cfg `package_dir`) and editable installs map them; for a source tree used
without installing (`PYTHONPATH=.`), this finder maps exactly these three names to the sibling folders. It is only
asked after the normal path finder failed, and only answers for a folder that holds an `__init__.py`.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

SUBPACKAGES = ("methods", "corruptions", "leaderboard")
_ROOT = Path(__file__).resolve().parent.parent


class _SiblingFinder:
    """A meta-path finder for `tta_bench.<name>` -> `<repository>/<name>/` (the three names above only)."""

    @classmethod
    def find_spec(cls, fullname: str, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix != "tta_bench" or name not in SUBPACKAGES:
            return None  # submodules are found through the package's __path__ by the normal finder
        init = _ROOT / name / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def install() -> None:
    """Append the finder once (after the standard finders: an installed layout always wins)."""
    if not any(f is _SiblingFinder for f in sys.meta_path):
        sys.meta_path.append(_SiblingFinder)
