"""Hostile files: no code from a data or weights file ever runs; damaged files are refused, named, never crash.

- A source scan: nothing in the repository unpickles without restriction (`pickle.load(s)`, a bare
  `pickle.Unpickler`, `torch.load` without `weights_only=True`, `np.load(allow_pickle=True)`, joblib/dill/pandas
  pickles); the kernel's restricted unpickler is the one place that touches `pickle`.
- Poisoned CIFAR pickles (a `__reduce__` that calls `os.system` to create a marker file) under
  `stream.clean_dir` (cifar10-c and cifar100-c), in `cifar-100-python/` (cifar100-b2n) and as `make-c --src`:
  refused with exit code 2, a message naming the file, and the marker never created. The same for a
  hostile `model.weights` file, and for several payloads fed to the restricted unpickler directly.
- The lazy readers (images decoded while streaming, label maps, weights files, .npy, .npz) turn truncated or
  garbage input into a UserError naming the file.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tta_bench.cli import main
from tta_bench.kernel import UserError, safe_unpickle

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["tta_bench", "methods", "corruptions", "leaderboard", "benchmarks"]


# --- the source scan ------------------------------------------------------------------------------------------------
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            yield node, name, node.func.attr


def _kw(node: ast.Call, key: str):
    for k in node.keywords:
        if k.arg == key:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def unsafe_loads(source: str, name: str) -> list[str]:
    """`name:line what` of every unrestricted deserialisation call in one source file's text."""
    out = []
    for node, owner, attr in _calls(ast.parse(source, name)):
        where = f"{name}:{node.lineno}"
        if owner in ("pickle", "cPickle", "dill", "cloudpickle", "joblib") and attr in ("load", "loads", "Unpickler"):
            out.append(f"{where} {owner}.{attr}")
        elif owner == "torch" and attr == "load" and _kw(node, "weights_only") is not True:
            out.append(f"{where} torch.load without weights_only=True")
        elif owner in ("np", "numpy") and attr == "load" and _kw(node, "allow_pickle") not in (None, False):
            out.append(f"{where} np.load(allow_pickle=...)")
        elif owner in ("pd", "pandas") and attr == "read_pickle":
            out.append(f"{where} pandas.read_pickle")
    return out


def test_no_unrestricted_unpickling_anywhere():
    files = [p for d in SOURCES for p in (REPO / d).rglob("*.py")]
    assert len(files) > 50
    found = [hit for p in files for hit in unsafe_loads(p.read_text(), p.relative_to(REPO).as_posix())]
    assert found == [], "unrestricted deserialisation:\n" + "\n".join(found)
    # the one unpickler is the kernel's restricted subclass (writing pickles, e.g. a benchmark's fixtures, is fine)
    users = [p for p in files if "Unpickler" in p.read_text()]
    assert [p.relative_to(REPO).as_posix() for p in users] == ["tta_bench/kernel/files.py"]


def test_the_scan_finds_what_it_looks_for():
    source = (
        "import pickle, torch, numpy as np\n"
        "pickle.load(f)\npickle.loads(b)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "np.load(p, allow_pickle=True)\nx = pickle.Unpickler(f)\npd.read_pickle(p)\n"
        "torch.load(p, weights_only=True)\nnp.load(p)\nnp.load(p, allow_pickle=False)\n"
    )
    assert [int(h.split(":")[1].split()[0]) for h in unsafe_loads(source, "bad.py")] == [2, 3, 4, 5, 6, 7, 8]


# --- poisoned pickles through the CLI --------------------------------------------------------------------------------
class Payload:
    """Unpickling an instance runs `os.system(cmd)` (what a poisoned dataset file could do)."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def poisoned(path: Path, marker: Path, label_key: bytes = b"labels") -> Path:
    """A CIFAR-style pickle whose images field creates `marker` when unpickled without restriction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({b"data": Payload(f"touch {marker}"), label_key: [0, 1]}, protocol=2))
    return path


def cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def run_argv(tmp: Path, stream: str, *extra: str) -> list[str]:
    return ["run", "--method", "source", "--stream", stream, "--limit", "8", "--out", str(tmp / "runs"), "--quiet",
            "--data-dir", str(tmp), *extra]  # fmt: skip


def assert_refused(code: int, err: str, path: Path, marker: Path) -> None:
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert str(path) in err and "not allowed" in err, err
    assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize("stream, folder, name", [
    ("cifar10-c", "cifar-10-batches-py", "test_batch"),
    ("cifar100-c", "cifar-100-python", "test"),
])  # fmt: skip
def test_poisoned_clean_dir_pickle_is_refused(stream, folder, name, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    key = b"labels" if stream == "cifar10-c" else b"fine_labels"
    path = poisoned(tmp_path / "clean" / folder / name, marker, key)
    argv = run_argv(
        tmp_path, stream, "--set", f"stream.clean_dir={tmp_path / 'clean'}", "--set", "stream.mode=generated"
    )
    assert_refused(*cli(argv, capsys), path, marker)


def test_poisoned_pickle_in_data_dir_is_refused_by_cifar100_b2n(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    d = tmp_path / "cifar-100-python"
    path = poisoned(d / "train", marker, b"fine_labels")
    (d / "test").write_bytes(path.read_bytes())
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"a", b"b"]}))
    assert_refused(*cli([*run_argv(tmp_path, "cifar100-b2n"), "--model", "clip-tiny"], capsys), path, marker)


def test_poisoned_pickle_is_refused_by_make_c(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    path = poisoned(tmp_path / "src" / "cifar-10-batches-py" / "test_batch", marker)
    argv = ["make-c", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--format", "cifar-c",
            "--corruptions", "brightness"]  # fmt: skip
    assert_refused(*cli(argv, capsys), path, marker)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_hostile_weights_file_is_refused(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    path = tmp_path / "resnet20.th"
    path.write_bytes(pickle.dumps({"state_dict": Payload(f"touch {marker}")}))
    argv = [*run_argv(tmp_path, "digits-c"), "--model", "resnet20-cifar10", "--set", f"model.weights={path}"]
    code, err = cli(argv, capsys)
    assert code == 2 and str(path) in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not marker.exists()


@pytest.mark.parametrize("fn, args", [
    (os.system, ("touch {m}",)),
    (subprocess.check_call, (["touch", "{m}"],)),
    (eval, ("open('{m}', 'w')",)),
    (exec, ("open('{m}', 'w')",)),
    (open, ("{m}", "w")),
    (__import__, ("os",)),
], ids=["os.system", "subprocess", "eval", "exec", "open", "import"])  # fmt: skip
def test_restricted_unpickler_refuses_callables(fn, args, tmp_path):
    marker = tmp_path / "MARKER"
    fill = lambda a: a.format(m=marker) if isinstance(a, str) else [fill(x) for x in a] if isinstance(a, list) else a  # noqa: E731
    args = tuple(fill(a) for a in args)

    class Evil:
        def __reduce__(self):
            return (fn, args)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(UserError, match="not allowed"):
        safe_unpickle(path)
    assert not marker.exists()


def test_restricted_unpickler_reads_real_cifar_style_data(tmp_path):
    want = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [1, 2], b"filenames": [b"a.png", b"b"]}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(want, protocol=2))
    got = safe_unpickle(path)
    assert np.array_equal(got[b"data"], want[b"data"]) and got[b"labels"] == [1, 2]


# --- damaged files read lazily (while streaming) ---------------------------------------------------------------------
def _truncated_image(path: Path, size: int = 48, keep: float = 0.4) -> Path:
    buf = io.BytesIO()
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * keep)])
    return path


@pytest.mark.parametrize("name", ["x.JPEG", "x.png"])
def test_truncated_image_names_its_file(name, tmp_path):
    from tta_bench.data.folders import ImageFiles

    path = _truncated_image(tmp_path / "n01440764" / name)
    with pytest.raises(UserError, match="x\\.(JPEG|png)") as e:
        ImageFiles([path], [0])[0]
    assert str(path) in str(e.value)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="junk.png"):
        ImageFiles([tmp_path / "junk.png"], [0])[0]


def test_truncated_label_map_names_its_file(tmp_path):
    from tta_bench.data.segmentation import CAMVID_LUT, SegFiles

    img = tmp_path / "test" / "a.png"
    img.parent.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    lab = _truncated_image(tmp_path / "testannot" / "a.png", keep=0.3)
    with pytest.raises(UserError, match="testannot/a.png"):
        SegFiles([(img, lab)], CAMVID_LUT)[0]


def test_damaged_weights_files_are_named(tmp_path):
    from tta_bench.models import load_into, load_state_file

    net = torch.nn.Linear(3, 2)
    good = tmp_path / "w.pt"
    torch.save(net.state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="cut.pt"):
        load_state_file(cut)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserError, match="not a state_dict"):
        load_state_file(tmp_path / "list.pt")
    with pytest.raises(UserError, match="does not fit"):
        load_into(torch.nn.Linear(4, 2), load_state_file(good), good)
    load_into(net, load_state_file(good), good)  # the right one loads


def test_espnet_and_segmentation_weights_refuse_garbage(tmp_path):
    from tta_bench.zoo.espnet import load_espnet
    from tta_bench.zoo.segmentation_zoo import _load_file

    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(3000))
    with pytest.raises(UserError, match="junk.pth"):
        load_espnet(junk, 11, True)
    with pytest.raises(UserError, match="junk.pth"):
        _load_file(torch.nn.Linear(2, 2), str(junk))


def test_damaged_npy_is_named(tmp_path):
    from tta_bench.data.folders import load_npy

    np.save(tmp_path / "a.npy", np.zeros((10, 4), np.uint8))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:100])
    (tmp_path / "obj.npy").write_bytes(b"")
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    for name in ("cut.npy", "obj.npy"):
        with pytest.raises(UserError, match=name):
            load_npy(tmp_path / name)
    assert load_npy(tmp_path / "a.npy").shape == (10, 4)


@pytest.mark.parametrize("content", ["garbage", "other-architecture"])
def test_damaged_torchvision_weights_in_the_weights_dir_are_named(content, tmp_path):
    import torchvision.models as tvm

    from tta_bench.models import MODELS, ModelContext

    w = tvm.get_model_weights("resnet18")["IMAGENET1K_V1"]
    path = tmp_path / "torchvision" / w.url.rsplit("/", 1)[-1]
    path.parent.mkdir()
    if content == "garbage":
        path.write_bytes(os.urandom(5000))
    else:
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(UserError, match=path.name):
        MODELS.get("resnet18").factory(None, ModelContext(tmp_path, tmp_path / "cache", torch.device("cpu")))
