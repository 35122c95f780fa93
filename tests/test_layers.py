"""The import layers of DESIGN.md, read from the source with `ast` (every import: top level, inside functions,
under TYPE_CHECKING, and `importlib.import_module("literal")`), so a forbidden arrow fails here before it ships:

    kernel (stdlib only)  <-  methods/, corruptions/, run-folder schema  <-  harness (tta_bench)  <-  CLI (cli)
                                                       ^                                            |
                                                       +---------------- leaderboard/ <-------------+

- `tta_bench.kernel` imports nothing of the project (but itself) and no third-party package;
- `methods/` and `corruptions/` import from `tta_bench` only the kernel, and never the leaderboard;
- `leaderboard/` imports from `tta_bench` only the kernel and `tta_bench.rundir`, and no adapter or corruption
  (it runs without torch);
- the harness (`tta_bench.*` but the kernel, `cli` and `__main__`) never imports `leaderboard`;
- nothing imports `tta_bench.__main__` (running it as `python -m` would load it a second time under another name).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tta_bench", "methods", "corruptions", "leaderboard")


@dataclass(frozen=True)
class Arrow:
    source: str  # importing module, e.g. "tta_bench.methods.tent"
    target: str  # imported module, e.g. "tta_bench.kernel"
    line: int
    path: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} -> {self.target}"


OLD_NAMES = ("methods", "corruptions", "leaderboard")  # folders of the repository, imported as tta_bench.<name>


def module_name(path: Path) -> str:
    """The import name of a project file: `methods/tent.py` -> `tta_bench.methods.tent`."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(["tta_bench", *parts] if parts[0] in OLD_NAMES else parts)


def _is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[:2] and parts[0] == "tta_bench" and len(parts) > 1 and parts[1] in OLD_NAMES:
        parts = parts[1:]  # tta_bench.methods.x lives in methods/x.py
    p = ROOT.joinpath(*parts)
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) for every import in `source` (the code of `module`)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing package
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:  # `from pkg import submodule` imports pkg.submodule, `from pkg import name` pkg
                sub = f"{base}.{a.name}"
                out.append((sub if a.name != "*" and _is_module(sub) else base, node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                out.append((node.args[0].value, node.lineno))
    return out


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def arrows() -> list[Arrow]:
    out = []
    for path in project_files():
        mod = module_name(path)
        for target, line in imports(path.read_text(), mod, path.name == "__init__.py"):
            out.append(Arrow(mod, target, line, str(path.relative_to(ROOT))))
    return out


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


ADAPTERS = ("tta_bench.methods", "tta_bench.corruptions")  # methods/ and corruptions/ (their import names)
LEADERBOARD = "tta_bench.leaderboard"  # leaderboard/


def is_project(name: str) -> bool:
    return name.split(".")[0] == "tta_bench" or name.split(".")[0] in OLD_NAMES


def violation(a: Arrow) -> str | None:
    """Why the design forbids arrow `a`, or None."""
    src, dst = a.source, a.target
    top = dst.split(".")[0]
    if top in OLD_NAMES:
        return f"import {dst} as tta_bench.{dst} (the top-level name clashes with users' packages)"
    if within(dst, "tta_bench.__main__"):
        return "nothing imports tta_bench.__main__ (the CLI is the top layer)"
    if within(src, "tta_bench.kernel"):
        if is_project(dst) and not within(dst, "tta_bench.kernel"):
            return "the kernel imports nothing of the project"
        if not is_project(dst) and top not in sys.stdlib_module_names:
            return "the kernel imports no third-party package (stdlib only)"
        return None
    if any(within(src, p) for p in ADAPTERS):
        if within(dst, LEADERBOARD):
            return "methods/ and corruptions/ never import the leaderboard"
        if is_project(dst) and not (within(dst, "tta_bench.kernel") or any(within(dst, p) for p in ADAPTERS)):
            return "methods/ and corruptions/ import from tta_bench only tta_bench.kernel"
        return None
    if within(src, LEADERBOARD):
        if any(within(dst, p) for p in ADAPTERS):
            return "the leaderboard imports no adapter or corruption (it runs without torch)"
        if is_project(dst) and not any(within(dst, p) for p in ("tta_bench.kernel", "tta_bench.rundir", LEADERBOARD)):
            return "the leaderboard imports from tta_bench only the kernel and tta_bench.rundir (no torch)"
        return None
    if within(src, "tta_bench") and src not in CLI and within(dst, LEADERBOARD):
        return "the harness never imports the leaderboard (only the CLI joins them)"
    return None


CLI = ("tta_bench.__main__", "tta_bench.cli")  # the top layer: `python -m tta_bench` runs tta_bench.cli.main


def test_import_layers() -> None:
    found = arrows()
    assert len({a.source for a in found}) > 50  # every package was parsed
    bad = [f"{a}  ({why})" for a in found if (why := violation(a))]
    assert not bad, "imports the design forbids:\n" + "\n".join(bad)


def test_the_kernel_imports_only_the_stdlib_and_itself() -> None:
    kernel = [a for a in arrows() if within(a.source, "tta_bench.kernel")]
    assert kernel and all(
        within(a.target, "tta_bench.kernel") or a.target.split(".")[0] in sys.stdlib_module_names for a in kernel
    )


@pytest.mark.parametrize(
    ("module", "code", "why"),
    [
        ("tta_bench.methods.x", "from tta_bench.config import check_options", "only tta_bench.kernel"),
        ("tta_bench.methods.x", "def f():\n    from tta_bench.memory import measure", "only tta_bench.kernel"),
        ("tta_bench.methods.x", "import tta_bench", "only tta_bench.kernel"),
        ("tta_bench.methods.x", "from tta_bench import streams", "only tta_bench.kernel"),
        ("tta_bench.corruptions.make_c", "from tta_bench.errors import UserError", "only tta_bench.kernel"),
        ("tta_bench.corruptions.x", "import tta_bench.leaderboard.site", "never import the leaderboard"),
        ("tta_bench.leaderboard.collect", "from tta_bench.runner import is_complete", "kernel and tta_bench.rundir"),
        ("tta_bench.leaderboard.collect", "from tta_bench import methods", "no adapter"),
        ("tta_bench.sweep", "def main():\n    from tta_bench.leaderboard.site import build", "harness never imports"),
        (
            "tta_bench.sweep",
            "import importlib\nimportlib.import_module('tta_bench.leaderboard.cli')",
            "harness never imports",
        ),
        ("tta_bench.sweep", "from tta_bench.__main__ import config_kwargs", "tta_bench.__main__"),
        ("tta_bench.kernel.files", "import numpy", "stdlib only"),
        ("tta_bench.kernel.files", "from tta_bench.config import RunConfig", "nothing of the project"),
        ("tta_bench.kernel.files", "from ..config import RunConfig", "nothing of the project"),
    ],
)
def test_each_forbidden_arrow_is_caught(module: str, code: str, why: str) -> None:
    found = [Arrow(module, t, n, "<test>") for t, n in imports(textwrap.dedent(code), module)]
    reasons = [violation(a) for a in found]
    assert any(r and why in r for r in reasons), (found, reasons)


@pytest.mark.parametrize(
    ("module", "code"),
    [
        ("tta_bench.methods.x", "from tta_bench.kernel import UserError"),
        ("tta_bench.methods.x", "from tta_bench.methods.base import Adapter\nimport torch"),
        ("tta_bench.corruptions.x", "from ._registry import register"),
        ("tta_bench.leaderboard.collect", "from tta_bench import rundir\nfrom tta_bench.kernel import read_json"),
        ("tta_bench.cli", "from tta_bench.leaderboard.cli import build_and_report"),
        ("tta_bench.__main__", "from tta_bench.cli import main"),
        ("tta_bench.kernel.files", "import hashlib\nfrom tta_bench.kernel.errors import UserError"),
        ("tta_bench.kernel", "from .errors import UserError"),
    ],
)
def test_allowed_arrows_pass(module: str, code: str) -> None:
    found = [Arrow(module, t, n, "<test>") for t, n in imports(code, module, module.count(".") == 1)]
    assert found and not [violation(a) for a in found if violation(a)]


def test_the_leaderboard_imports_without_torch() -> None:
    """`leaderboard.collect` and `leaderboard.site` load with torch made unimportable (and load no adapter)."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import tta_bench.leaderboard.collect, tta_bench.leaderboard.site, tta_bench.leaderboard.cli\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('tta_bench.methods', 'tta_bench.corruptions')))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_adapters_load_only_the_kernel_and_registries_load_their_modules() -> None:
    """At run time too: importing every adapter and corruption loads nothing of the harness but the kernel, nor the
    leaderboard. And no `load_zoo()` is needed: STREAMS and MODELS import tta_bench.data / tta_bench.zoo on first
    use."""
    code = (
        "import sys\n"
        "from tta_bench import methods, corruptions\n"
        "ok = ('tta_bench.kernel', 'tta_bench.methods', 'tta_bench.corruptions', 'tta_bench._layout')\n"
        "bad = sorted(m for m in sys.modules if m.startswith('tta_bench.') and not m.startswith(ok))\n"
        "assert not bad, bad\n"
        "from tta_bench.models import MODELS\n"
        "from tta_bench.streams import STREAMS\n"
        "assert 'digits-c' in STREAMS and STREAMS.get('cifar10-c').attrs['default_model']\n"
        "assert 'small-cnn' in MODELS and 'clip-tiny' in MODELS.names()\n"
        "assert 'tent' in methods.names() and 'fog' in corruptions.names()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_users_own_methods_corruptions_and_leaderboard_packages_do_not_clash(tmp_path: Path) -> None:
    """In a folder with its own `methods/`, `corruptions/` and `leaderboard/` (as the most-used suite's
    `classification/` has), both the user's packages and tta_bench's import, each under its own name."""
    for name in OLD_NAMES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"OWN = '{name}'\n")
    code = (
        "import methods, corruptions, leaderboard\n"
        "assert (methods.OWN, corruptions.OWN, leaderboard.OWN) == ('methods', 'corruptions', 'leaderboard')\n"
        "from tta_bench.methods import Tent\n"
        "from tta_bench import corruptions as c\n"
        "from tta_bench.leaderboard.site import build\n"
        "assert Tent.name == 'tent' and 'fog' in c.names() and callable(build)\n"
        "assert methods.OWN == 'methods' and not hasattr(methods, 'Tent')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_old_top_level_names_are_refused_in_project_code() -> None:
    found = [Arrow("tta_bench.runner", t, n, "<test>") for t, n in imports("import methods", "tta_bench.runner")]
    assert any("clashes" in (violation(a) or "") for a in found)
