"""Adding a method or a corruption is one new file and no other edit: each test writes one module into a temporary
folder on its package's search path (as a file dropped into `methods/` or `corruptions/`), in a fresh interpreter,
and finds it registered, importable by name and usable, with the built-in ones still there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NEW_METHOD = '''
import torch

from tta_bench.methods import register
from tta_bench.methods.base import Adapter


@register("flip_vote")
class FlipVote(Adapter):
    """Averages the logits of an image and its mirror image (no training)."""

    defaults = {"weight": 0.5}
    ranges = {"weight": "[0,1]"}
    option_docs = {"weight": "weight of the mirrored view"}

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        w = self.hp.weight
        return (1 - w) * self.model(x) + w * self.model(x.flip(-1))
'''

NEW_CORRUPTION = """
import torch

from tta_bench.corruptions._registry import register


@register("invert", "photographic negative, blended by severity")
def invert(x: torch.Tensor, severity: int, generator) -> torch.Tensor:
    a = severity / 5
    return (1 - a) * x + a * (1 - x)
"""


def run_python(code: str, tmp: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp, capture_output=True, text=True,
                       timeout=300, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_adding_a_method_is_one_new_file(tmp_path: Path) -> None:
    (tmp_path / "flip_vote.py").write_text(NEW_METHOD)
    out = run_python(
        f"""
        import torch
        from tta_bench import methods
        methods.__path__.append({str(tmp_path)!r})  # as if flip_vote.py sat in methods/
        from tta_bench.methods import FlipVote
        assert "flip_vote" in methods.names() and "tent" in methods.names()
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        adapter = methods.create("flip_vote", model, weight=1.0)
        x = torch.rand(2, 1, 3, 4)
        assert torch.allclose(adapter(x), model(x.flip(-1)))
        assert FlipVote is methods.get("flip_vote")
        try:
            methods.create("flip_vote", model, weight=2.0)
        except ValueError as e:
            print("range:", e)
        """,
        tmp_path,
    )
    assert "option 'weight' must be" in out


def test_adding_a_corruption_is_one_new_file(tmp_path: Path) -> None:
    (tmp_path / "invert.py").write_text(NEW_CORRUPTION)
    out = run_python(
        f"""
        import torch
        from tta_bench import corruptions
        corruptions.__path__.append({str(tmp_path)!r})  # as if invert.py sat in corruptions/
        assert "invert" in corruptions.names() and "fog" in corruptions.names()
        x = torch.rand(2, 3, 8, 8)
        assert torch.allclose(corruptions.corrupt(x, "invert", 5), 1 - x)
        print(corruptions.describe("invert"))
        """,
        tmp_path,
    )
    assert "photographic negative" in out


NEW_STREAM = '''
import torch
from torch.utils.data import TensorDataset

from tta_bench.streams import CleanSplit, StreamSpec, register


@register("stripes-c", default_model="small-cnn", family="cifar10-c",
          clean=CleanSplit("16 images of their own", disjoint=True))
def stripes_c(*, data_dir=None, seed: int = 0) -> StreamSpec:
    """Ten classes of horizontal stripes, brighter by domain."""

    def images(n: int, shift: float, g: int) -> TensorDataset:
        y = torch.arange(n) % 10
        rows = (torch.arange(32)[None, :] * (y[:, None] + 1) // 8 % 2).float()
        x = (rows[:, None, :, None].expand(n, 3, 32, 32) * 0.8 + shift).clamp(0, 1)
        return TensorDataset(x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(g)), y)

    def load(domain: str, severity, limit):
        n = limit or 40
        return images(n, {"dim": 0.0, "bright": 0.2}[domain], 1)

    return StreamSpec(name="stripes-c", domain_names=["dim", "bright"], load=load, num_classes=10,
                      data_fingerprint="stripes-v1", source_fingerprint="stripes-v1",
                      source=images(200, 0.0, 2), clean=images(16, 0.0, 3), severities=None)
'''


def test_adding_a_stream_is_one_new_file(tmp_path: Path) -> None:
    (tmp_path / "stripes.py").write_text(NEW_STREAM)
    out = run_python(
        f"""
        import torch
        from tta_bench import data
        data.__path__.append({str(tmp_path)!r})  # as if stripes.py sat in tta_bench/data/
        from tta_bench.streams import STREAMS
        assert "stripes-c" in STREAMS.names() and "digits-c" in STREAMS.names()
        from tta_bench import RunConfig, run
        torch.set_num_threads(1)
        r = run(RunConfig(method="norm", stream="stripes-c", batch_size=20, clean_eval="end",
                          out={str(tmp_path / "runs")!r}), quiet=True)
        print("domains", sorted(r.summary["domain_errors"]), r.summary["n_samples"])
        """,
        tmp_path,
    )
    assert "domains ['bright', 'dim'] 80" in out
