"""Import shims for third-party packages whose published wheels do not import as-is.

`robustbench` 1.1.1 does `from autoattack import AutoAttack` (and `autoattack.state`), but the
AutoAttack code installs from PyPI as the distribution `pyautoattack` with top-level package
`pyautoattack`; it also imports `pkg_resources`, which setuptools removed in version 81 (hence the
`setuptools<81` requirement). Everything in tta_bench that uses robustbench imports it through
`import_robustbench()`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

from tta_bench.kernel import UserError


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves `alias[.sub]` to the already importable `target[.sub]`, lazily (submodules on demand)."""

    def __init__(self, alias: str, target: str) -> None:
        self.alias, self.target = alias, target

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.alias or fullname.startswith(self.alias + "."):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        real = importlib.import_module(self.target + spec.name[len(self.alias) :])
        sys.modules[spec.name] = real
        return real

    def exec_module(self, module) -> None:  # the real module is already executed
        pass


def alias_autoattack() -> None:
    """Make `import autoattack[.sub]` resolve to `pyautoattack[.sub]` (no-op when a real `autoattack` exists)."""
    if "autoattack" in sys.modules or any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        return
    if importlib.util.find_spec("autoattack") is not None:
        return
    if importlib.util.find_spec("pyautoattack") is None:
        raise UserError(
            "robustbench needs the AutoAttack package, which is missing. Install it with "
            "`pip install pyautoattack` (or `pip install -e .` in the tta_bench checkout)."
        )
    sys.meta_path.append(_AliasFinder("autoattack", "pyautoattack"))


def import_robustbench() -> ModuleType:
    """`import robustbench` after installing the shims above; a UserError saying what to install otherwise."""
    try:
        with warnings.catch_warnings():  # its deprecation notice is robustbench's to act on, not the user's
            warnings.simplefilter("ignore")
            import pkg_resources  # noqa: F401  (robustbench.loaders needs it; removed in setuptools 81)
    except ImportError as e:
        raise UserError(
            "robustbench imports `pkg_resources`, which setuptools 81+ no longer ships. Run "
            "`pip install 'setuptools<81'`."
        ) from e
    alias_autoattack()
    try:
        with warnings.catch_warnings():  # timm's "importing from timm.models.layers is deprecated" notices
            warnings.simplefilter("ignore", FutureWarning)
            return importlib.import_module("robustbench")
    except ImportError as e:
        raise UserError(
            f"Could not import robustbench ({e}). Install it with `pip install robustbench==1.1.1 pyautoattack` "
            "(keeping your torch: add `torch==<your version>` to the same pip command)."
        ) from e
