"""Bad-input census: every user error gives exit code 2 and one paragraph naming the file or option, never a traceback.

Each case builds its own tiny on-disk fixture under `tmp_path` (real formats: .npy, .npz, CIFAR pickles, PNG/JPEG
ImageFolders, run folders), runs the CLI in-process (`tta_bench.cli.main(argv)`) and asserts: exit code 2,
`error: ` + one line on stderr, no "Traceback", and the named file/option in the message. A case that raises
anything but a UserError fails the test with its traceback (a genuine bug must stay visible). A handful run in a
subprocess to check the real `python -m tta_bench` entry point too. The census table is in the closing note.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from tta_bench.cli import main

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
N = 10  # images per severity in the tiny CIFAR-10-C fixture


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], list[str]]  # fixture under tmp_path -> argv
    needles: tuple[str, ...]  # each must appear in the error message
    argparse: bool = False  # rejected by argparse (usage line + error line)
    xfail: str = ""  # a known gap (why), reported in the census


CASES: list[Case] = []


def case(id: str, *needles: str, argparse: bool = False):
    def deco(fn: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
        CASES.append(Case(id, fn, needles, argparse))
        return fn

    return deco


def simple(id: str, args: list[str], *needles: str, argparse: bool = False) -> None:
    CASES.append(Case(id, lambda t, a=args: run_args(t, *a), needles, argparse))


# --- fixture helpers --------------------------------------------------------------------------------------------
def run_args(tmp: Path, *extra: str, method: str = "tent", stream: str = "digits-c") -> list[str]:
    """`run` on the embedded digits-c stream (no download; small-cnn trains once per session), tiny limits."""
    base = ["run", "--method", method, "--stream", stream, "--limit", "8", "--batch-size", "8"]
    return [*base, "--out", str(tmp / "runs"), "--quiet", *extra]


def cifar_run(tmp: Path, *extra: str, stream: str = "cifar10-c") -> list[str]:
    return run_args(tmp, *extra, "--data-dir", str(data_dir(tmp)), stream=stream)


def data_dir(tmp: Path) -> Path:
    d = tmp / "data"
    d.mkdir(exist_ok=True)
    return d


def cifar_c_files(tmp: Path) -> Path:
    """A complete tiny CIFAR-10-C folder: labels.npy (5N,) uint8 + 15 x (5N,32,32,3) uint8."""
    root = tmp / "CIFAR-10-C"
    root.mkdir()
    rng = np.random.default_rng(0)
    np.save(root / "labels.npy", np.tile(np.arange(N) % 10, 5).astype(np.uint8))
    for c in CORRUPTIONS:
        np.save(root / f"{c}.npy", rng.integers(0, 256, (5 * N, 32, 32, 3), dtype=np.uint8))
    return root


def files_run(tmp: Path, root: Path, *extra: str) -> list[str]:
    return cifar_run(tmp, "--set", f"stream.root={root}", "--set", "stream.download=False", *extra)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


class Boom:
    """Unpickling this calls os.system to create a marker file (what a poisoned dataset pickle could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cifar_pickle(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def cifar_test_dict(n: int = 20, labels=None) -> dict:
    rng = np.random.default_rng(1)
    return {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": list(np.arange(n) % 10) if labels is None else labels,
    }


def clean_run(tmp: Path, test_batch_obj=None, raw: bytes | None = None) -> list[str]:
    d = tmp / "clean" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    if raw is not None:
        (d / "test_batch").write_bytes(raw)
    else:
        cifar_pickle(d / "test_batch", test_batch_obj)
    return cifar_run(tmp, "--set", f"stream.clean_dir={tmp / 'clean'}", "--set", "stream.mode=generated")


def image_folder(root: Path, classes: int = 10, per: int = 2, ext: str = ".png", size: int = 32) -> Path:
    rng = np.random.default_rng(2)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
        for i in range(per):
            a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / f"class{c:02d}" / f"img{i}{ext}")
    return root


def folder_run(tmp: Path) -> list[str]:
    return cifar_run(tmp, "--set", f"stream.clean_dir={tmp / 'clean'}", "--set", "stream.mode=generated")


def medmnist_npz(path: Path, **override) -> Path:
    rng = np.random.default_rng(3)
    arrays = {}
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def med_run(tmp: Path, npz: Path) -> list[str]:
    return run_args(tmp, "--set", f"stream.root={npz}", "--set", "stream.download=False", stream="pneumoniamnist-c")


def run_folder(root: Path, name: str = "0123456789abcdef", config: str | None = None, summary: str | None = None):
    f = root / name
    f.mkdir(parents=True)
    if config is not None:
        (f / "config.json").write_text(config)
    if summary is not None:
        (f / "summary.json").write_text(summary)
    (f / "done").write_text("x\n")
    return f


# --- 1. unknown names --------------------------------------------------------------------------------------------
CASES.append(Case("method-typo", lambda t: run_args(t, method="tnet"), ("tnet", "Did you mean: tent")))
CASES.append(Case("stream-typo", lambda t: run_args(t, stream="digits"), ("digits", "Did you mean: digits-c")))
simple("model-typo", ["--model", "small_cnn"], "small_cnn", "small-cnn")
simple("setting-typo", ["--setting", "continuous"], "continuous", "--setting")
simple("precision-fp64", ["--precision", "fp64"], "fp64", "--precision")
simple("clean-eval-bogus", ["--clean-eval", "bogus"], "bogus", "--clean-eval")
simple("channels-last-maybe", ["--channels-last", "maybe"], "maybe", "--channels-last")
simple("optimizer-unknown", ["--set", "method.optimizer=rmsprop"], "rmsprop", "method.optimizer")
CASES.append(
    Case(
        "lame-affinity-unknown",
        lambda t: run_args(t, "--set", "method.affinity=cosine", method="lame"),
        ("cosine", "affinity"),
    )
)
CASES.append(
    Case(
        "lame-output-unknown",
        lambda t: run_args(t, "--set", "method.output=logits", method="lame"),
        ("logits", "output"),
    )
)
CASES.append(
    Case(
        "lame-feature-layer-unknown",
        lambda t: run_args(t, "--set", "method.feature_layer=head", method="lame"),
        ("'head'", "feature_layer"),
    )
)
CASES.append(
    Case(
        "ecotta-meta-init-unknown",
        lambda t: run_args(t, "--set", "method.meta_init=zeros", method="ecotta"),
        ("zeros", "meta_init"),
    )
)
CASES.append(Case("list-unknown", lambda t: ["list", "metods"], ("metods",), argparse=True))

# --- 2. RunConfig fields out of range / wrong type ------------------------------------------------------------------
simple("severity-9", ["--severity", "9"], "9", "--severity")
simple("severity-0", ["--severity", "0"], "0", "--severity")
simple("severity-word", ["--severity", "high"], "--severity", argparse=True)
simple("batch-size-0", ["--batch-size", "0"], "--batch-size")
simple("batch-size-negative", ["--batch-size", "-4"], "--batch-size")
simple("rounds-0", ["--rounds", "0"], "--rounds")
simple("limit-0", ["--limit", "0"], "--limit")
simple("limit-negative", ["--limit", "-3"], "--limit")
simple("workers-negative", ["--workers", "-1"], "--workers")
simple("seed-negative", ["--seed", "-1"], "--seed")
simple("device-tpu", ["--device", "tpu"], "tpu", "--device")
simple("device-cuda-index-garbage", ["--device", "cuda:x"], "cuda:x", "--device")


@case("prompt-method-on-non-clip-model", "coop", "CLIP")
def _(tmp):
    from tta_bench.zoo.cifar_resnet import CifarResNet

    torch.save(CifarResNet(20).state_dict(), tmp / "r20.th")  # a model from a file: nothing to train
    return run_args(tmp, "--model", "resnet20-cifar10", "--set", f"model.weights={tmp / 'r20.th'}", method="coop")


simple("device-cuda-index-out-of-range", ["--device", "cuda:7"], "cuda:7", "--device")
simple("device-mps-absent", ["--device", "mps"], "--device mps", "no MPS device")
if not torch.cuda.is_available():  # on a GPU machine --device cuda is fine
    simple("device-cuda-absent", ["--device", "cuda"], "--device cuda", "CUDA")
simple("data-dir-missing", ["--data-dir", "/nonexistent/tta"], "/nonexistent/tta", "--data-dir")


def test_every_declared_range_names_a_hyper_parameter_and_admits_its_defaults():
    from tta_bench import methods

    for name in methods.names():
        cls = methods.get(name)
        declared = set().union(*(getattr(k, "defaults", {}) for k in cls.__mro__))  # a subclass may drop some
        assert set(cls.ranges) <= declared, f"{name}: ranges for undeclared options {set(cls.ranges) - declared}"
        cls.validate(dict(cls.defaults))
        for preset in cls.presets.values():
            cls.validate({k: v for k, v in preset.get("options", {}).items() if k in cls.defaults})


def test_run_config_fields_have_types():
    """Library use (and sweeps) build RunConfig directly: a wrong type is a UserError naming the field."""
    from tta_bench.config import RunConfig
    from tta_bench.kernel import UserError

    for kw, name in [({"severity": "5"}, "--severity"), ({"limit": 2.5}, "--limit"), ({"seed": True}, "--seed"),
                     ({"batch_size": None}, "--batch-size"), ({"device": 0}, "--device")]:  # fmt: skip
        with pytest.raises(UserError, match=name):
            RunConfig(method="tent", stream="digits-c", **kw)
    RunConfig(method="tent", stream="digits-c", seed=np.int64(3), limit=None)  # numpy integers are whole numbers


@case("data-dir-is-file", "--data-dir", "not a folder")
def _(tmp):
    (tmp / "f").write_text("x")
    return run_args(tmp, "--data-dir", str(tmp / "f"))


@case("out-under-a-file", "--out")
def _(tmp):
    (tmp / "f").write_text("x")
    return [*run_args(tmp)[:-3], "--out", str(tmp / "f" / "runs"), "--quiet"]


@case("out-read-only", "--out")
def _(tmp):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; out-under-a-file covers the check")
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return [*run_args(tmp)[:-3], "--out", str(ro / "runs"), "--quiet"]


# --- 3. --set syntax / scope / key / type / length / range ---------------------------------------------------------
simple("set-no-scope", ["--set", "lr=1e-3"], "lr=1e-3", "scope.key=value")
simple("set-no-equals", ["--set", "method.lr"], "method.lr", "scope.key=value")
simple("set-unknown-scope", ["--set", "optim.lr=1e-3"], "optim", "Scopes")
simple("set-method-key-typo", ["--set", "method.lrr=1e-3"], "lrr", "Did you mean: lr")
simple("set-stream-key-typo", ["--set", "stream.gama=0.5"], "gama", "gamma")
simple("set-model-key-typo", ["--set", "model.widht=8"], "widht", "width")
simple("set-method-type", ["--set", "method.lr=fast"], "'lr'", "expects float")
simple("set-steps-float", ["--set", "method.steps=1.5"], "'steps'", "expects int")
simple("set-betas-length", ["--set", "method.betas=[0.9]"], "betas", "2 numbers")
simple("set-betas-range", ["--set", "method.betas=[0.9,1.5]"], "betas", "[0, 1)")
simple("set-steps-0", ["--set", "method.steps=0"], "steps", ">= 1")
simple("set-steps-negative", ["--set", "method.steps=-2"], "steps", ">= 1")
simple("set-lr-negative", ["--set", "method.lr=-0.001"], "'lr'", ">= 0")
simple("set-wd-negative", ["--set", "method.wd=-1"], "'wd'", ">= 0")
simple("set-nesterov-type", ["--set", "method.nesterov=3"], "nesterov", "expects bool")
simple("set-stream-type", ["--setting", "non-iid", "--set", "stream.gamma=wide"], "'gamma'", "expects float")
simple("set-model-type", ["--set", "model.width=wide"], "'width'", "expects int")
simple("set-list-for-a-number", ["--set", "method.lr=[0.1,0.2]"], "'lr'", "expects float")
CASES.append(Case("set-norm-has-no-options", lambda t: run_args(t, "--set", "method.lr=1", method="norm"), ("'lr'",)))


def method_case(id: str, method: str, setting: str, *needles: str) -> None:
    CASES.append(Case(id, lambda t: run_args(t, "--set", f"method.{setting}", method=method), needles))


method_case("eata-momentum-negative", "eata", "momentum=-0.5", "momentum", ">= 0")
method_case("eata-fisher-size-0", "eata", "fisher_size=0", "fisher_size", ">= 1")
method_case("eata-e-margin-negative", "eata", "e_margin_frac=-1", "e_margin_frac")
method_case("cotta-mt-above-1", "cotta", "mt=1.5", "'mt'", "[0, 1]")
method_case("cotta-rst-negative", "cotta", "rst=-0.1", "'rst'", "[0, 1]")
method_case("cotta-ap-above-1", "cotta", "ap=2", "'ap'", "[0, 1]")
method_case("cotta-n-aug-0", "cotta", "n_aug=0", "n_aug", ">= 1")
method_case("rotta-memory-size-0", "rotta", "memory_size=0", "memory_size", ">= 1")
method_case("rotta-update-frequency-0", "rotta", "update_frequency=0", "update_frequency", ">= 1")
method_case("rotta-nu-above-1", "rotta", "nu=3", "'nu'", "[0, 1]")
method_case("sar-rho-negative", "sar", "rho=-1", "'rho'", ">= 0")
method_case("lame-knn-0", "lame", "knn=0", "knn", ">= 1")
method_case("lame-sigma-0", "lame", "sigma=0", "sigma", "> 0")
method_case("alpha-bn-weight-above-1", "alpha_bn", "source_weight=1.5", "source_weight", "[0, 1]")
method_case("ecotta-partitions-0", "ecotta", "partitions=0", "partitions", ">= 1")
method_case("ecotta-split-not-numbers", "ecotta", "split=['a','b']", "split", ">= 1")
method_case("ecotta-warmup-epochs-negative", "ecotta", "warmup_epochs=-1", "warmup_epochs", ">= 0")
method_case("roid-temperature-0", "roid", "temperature=0", "temperature", "> 0")
method_case("tpt-selection-p-0", "tpt", "selection_p=0", "selection_p", "(0, 1]")
method_case("deyo-aug-type-unknown", "deyo", "aug_type=blur", "aug_type", "'patch'")
simple("stream-gamma-negative", ["--setting", "non-iid", "--set", "stream.gamma=-1"], "stream.gamma", "> 0")
simple("stream-gamma-zero", ["--setting", "non-iid", "--set", "stream.gamma=0"], "stream.gamma", "> 0")
CASES.append(Case("stream-clean-size-negative", lambda t: cifar_run(t, "--set", "stream.clean_size=-1"),
                   ("stream.clean_size", ">= 0")))  # fmt: skip
CASES.append(Case("stream-shots-0", lambda t: run_args(t, "--set", "stream.shots=0", stream="digits-b2n"),
                  ("stream.shots", ">= 1")))  # fmt: skip
simple("model-width-0", ["--set", "model.width=0"], "model.width", ">= 1")
simple("model-source-epochs-negative", ["--set", "model.source_epochs=-1"], "source_epochs", ">= 0")
simple("model-lr-negative", ["--set", "model.lr=-1"], "model.lr", "> 0")


# --- 4. data files: CIFAR-10-C .npy -------------------------------------------------------------------------------
@case("cifar-c-labels-garbage", "labels.npy")
def _(tmp):
    root = cifar_c_files(tmp)
    (root / "labels.npy").write_bytes(b"this is not a numpy file at all" * 10)
    return files_run(tmp, root)


@case("cifar-c-labels-truncated", "labels.npy")
def _(tmp):
    root = cifar_c_files(tmp)
    truncate(root / "labels.npy", 0.6)
    return files_run(tmp, root)


@case("cifar-c-labels-pickled-objects", "labels.npy")
def _(tmp):
    root = cifar_c_files(tmp)
    np.save(root / "labels.npy", np.array([{"a": 1}] * (5 * N), dtype=object), allow_pickle=True)
    return files_run(tmp, root)


@case("cifar-c-labels-float", "labels.npy", "integer")
def _(tmp):
    root = cifar_c_files(tmp)
    np.save(root / "labels.npy", np.tile(np.arange(N) % 10, 5).astype(np.float32) + 0.5)
    return files_run(tmp, root)


@case("cifar-c-labels-outside-classes", "labels.npy", "0..9")
def _(tmp):
    root = cifar_c_files(tmp)
    np.save(root / "labels.npy", np.tile(np.arange(N) + 5, 5).astype(np.uint8))
    return files_run(tmp, root)


@case("cifar-c-corruption-garbage", "fog.npy")
def _(tmp):
    root = cifar_c_files(tmp)
    (root / "fog.npy").write_bytes(os.urandom(4000))
    return files_run(tmp, root)


@case("cifar-c-corruption-truncated", "snow.npy")
def _(tmp):
    root = cifar_c_files(tmp)
    truncate(root / "snow.npy", 0.5)
    return files_run(tmp, root)


@case("cifar-c-corruption-wrong-shape", "pixelate.npy", "(50000, 32, 32, 3)")
def _(tmp):
    root = cifar_c_files(tmp)
    np.save(root / "pixelate.npy", np.zeros((5 * N, 16, 16, 3), np.uint8))
    return files_run(tmp, root)


@case("cifar-c-corruption-missing", "contrast.npy")
def _(tmp):
    root = cifar_c_files(tmp)
    (root / "contrast.npy").unlink()
    return files_run(tmp, root)


@case("cifar-c-root-missing", "stream.root")
def _(tmp):
    return files_run(tmp, tmp / "nowhere")


@case("cifar-c-root-empty-no-download", "empty/labels.npy", "stream.root")
def _(tmp):
    (tmp / "empty").mkdir()
    return files_run(tmp, tmp / "empty")


@case("cifar-c-holdout-too-large", "stream.holdout")
def _(tmp):
    root = cifar_c_files(tmp)
    return files_run(tmp, root, "--set", "stream.holdout=10")


CASES.append(Case("cifar-c-mode-unknown", lambda t: cifar_run(t, "--set", "stream.mode=fast"), ("stream.mode", "fast")))


# --- 5. clean CIFAR test sets (torchvision pickles, ImageFolders) ----------------------------------------------------
@case("clean-pickle-poisoned", "test_batch", "system")
def _(tmp):
    return clean_run(tmp, {b"data": Boom(tmp / "MARKER"), b"labels": [0]})


@case("clean-pickle-truncated", "test_batch")
def _(tmp):
    return clean_run(tmp, raw=pickle.dumps(cifar_test_dict(), protocol=2)[:500])


@case("clean-pickle-garbage", "test_batch")
def _(tmp):
    return clean_run(tmp, raw=b"\x00\x01garbage" * 100)


@case("clean-pickle-not-a-dict", "test_batch")
def _(tmp):
    return clean_run(tmp, [1, 2, 3])


@case("clean-pickle-missing-labels", "test_batch", "labels")
def _(tmp):
    return clean_run(tmp, {b"data": np.zeros((4, 3072), np.uint8)})


@case("clean-pickle-wrong-image-size", "test_batch")
def _(tmp):
    return clean_run(tmp, {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]})


@case("clean-pickle-labels-outside-classes", "test_batch", "0..9")
def _(tmp):
    return clean_run(tmp, cifar_test_dict(labels=[12] * 20))


@case("clean-pickle-labels-float", "test_batch", "integer")
def _(tmp):
    return clean_run(tmp, cifar_test_dict(labels=[0.5] * 20))


@case("clean-folder-truncated-jpeg", "img1.jpg")
def _(tmp):
    root = image_folder(tmp / "clean" / "test", ext=".jpg")
    truncate(root / "class03" / "img1.jpg", 0.4)
    return folder_run(tmp)


@case("clean-folder-garbage-png", "img0.png")
def _(tmp):
    root = image_folder(tmp / "clean" / "test")
    (root / "class05" / "img0.png").write_bytes(b"not a png" * 20)
    return folder_run(tmp)


@case("clean-folder-wrong-class-count", "class folders")
def _(tmp):
    image_folder(tmp / "clean" / "test", classes=3)
    return folder_run(tmp)


@case("clean-folder-wrong-size", "32")
def _(tmp):
    image_folder(tmp / "clean" / "test", size=20)
    return folder_run(tmp)


@case("ccc-cifar-folder-wrong-class-count", "3 class folders", "stream.clean_dir")
def _(tmp):
    image_folder(tmp / "clean", classes=3)
    return run_args(tmp, "--set", f"stream.clean_dir={tmp / 'clean'}", stream="ccc-cifar")


@case("ccc-cifar-folder-wrong-size", "20×20", "32×32", "stream.clean_dir")
def _(tmp):
    image_folder(tmp / "clean", size=20)
    return run_args(tmp, "--set", f"stream.clean_dir={tmp / 'clean'}", stream="ccc-cifar")


@case("clean-dir-empty", "stream.clean_dir")
def _(tmp):
    (tmp / "clean").mkdir()
    return folder_run(tmp)


# --- 6. other streams' files ----------------------------------------------------------------------------------------
@case("b2n-pickle-poisoned", "test", "system")
def _(tmp):
    d = data_dir(tmp) / "cifar-100-python"
    ok = {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3]}
    cifar_pickle(d / "train", ok)
    cifar_pickle(d / "test", {b"data": Boom(tmp / "MARKER"), b"fine_labels": [0]})
    cifar_pickle(d / "meta", {b"fine_label_names": [b"a", b"b", b"c", b"d"]})
    return [*cifar_run(tmp, stream="cifar100-b2n"), "--model", "clip-tiny"]


@case("b2n-labels-outside-classes", "train", "0..99")
def _(tmp):
    d = data_dir(tmp) / "cifar-100-python"
    ok = {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3]}
    cifar_pickle(d / "train", {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 300]})
    cifar_pickle(d / "test", ok)
    cifar_pickle(d / "meta", {b"fine_label_names": [b"a", b"b", b"c", b"d"]})
    return [*cifar_run(tmp, stream="cifar100-b2n"), "--model", "clip-tiny"]


@case("b2n-meta-truncated", "meta")
def _(tmp):
    d = data_dir(tmp) / "cifar-100-python"
    ok = {b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 3]}
    cifar_pickle(d / "train", ok)
    cifar_pickle(d / "test", ok)
    (d / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"a"] * 4}, protocol=2)[:20])
    return [*cifar_run(tmp, stream="cifar100-b2n"), "--model", "clip-tiny"]


@case("medmnist-npz-garbage", "pneumoniamnist.npz")
def _(tmp):
    (tmp / "pneumoniamnist.npz").write_bytes(b"garbage" * 100)
    return med_run(tmp, tmp / "pneumoniamnist.npz")


@case("medmnist-npz-truncated", "pneumoniamnist.npz")
def _(tmp):
    p = medmnist_npz(tmp / "pneumoniamnist.npz")
    truncate(p, 0.7)
    return med_run(tmp, p)


@case("medmnist-npz-member-damaged", "pneumoniamnist.npz")
def _(tmp):
    p = medmnist_npz(tmp / "pneumoniamnist.npz")
    buf = io.BytesIO()  # a zip whose test_images member is not a .npy
    with zipfile.ZipFile(p) as src, zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, b"junk" if name == "test_images.npy" else src.read(name))
    p.write_bytes(buf.getvalue())
    return med_run(tmp, p)


@case("medmnist-npz-missing-keys", "pneumoniamnist.npz", "val_labels")
def _(tmp):
    p = tmp / "pneumoniamnist.npz"
    np.savez(p, train_images=np.zeros((2, 28, 28), np.uint8))
    return med_run(tmp, p)


@case("medmnist-labels-negative", "pneumoniamnist.npz", "labels")
def _(tmp):
    return med_run(tmp, medmnist_npz(tmp / "pneumoniamnist.npz", test_labels=-np.ones((8, 1), np.int64)))


@case("medmnist-labels-float", "pneumoniamnist.npz", "integer")
def _(tmp):
    return med_run(tmp, medmnist_npz(tmp / "pneumoniamnist.npz", test_labels=np.full((8, 1), 0.5)))


@case("medmnist-labels-outside-classes", "pneumoniamnist.npz", "labels")
def _(tmp):
    return med_run(tmp, medmnist_npz(tmp / "pneumoniamnist.npz", train_labels=np.full((16, 1), 7, np.uint8)))


@case("imagenet-c-folder-not-wnid", "cat")
def _(tmp):
    root = tmp / "ImageNet-C"
    image_folder(root / "gaussian_noise" / "1", classes=1, ext=".JPEG")
    (root / "gaussian_noise" / "1" / "class00").rename(root / "gaussian_noise" / "1" / "cat")
    return run_args(tmp, "--set", f"stream.root={root}", "--set", "stream.samples=all", stream="imagenet-c")


@case("imagenet-c-no-severity-folders", "ImageNet-C")
def _(tmp):
    (tmp / "ImageNet-C" / "readme").mkdir(parents=True)
    return run_args(tmp, "--set", f"stream.root={tmp / 'ImageNet-C'}", "--set", "stream.samples=all",
                    stream="imagenet-c")  # fmt: skip


@case("camvid-missing-annotations", "camvid", "testannot")
def _(tmp):
    image_folder(tmp / "tmpimg", classes=1, per=2)
    (data_dir(tmp) / "camvid").mkdir()
    (tmp / "tmpimg" / "class00").rename(data_dir(tmp) / "camvid" / "test")
    return cifar_run(tmp, stream="camvid-c")


@case("camvid-folder-missing", "camvid")
def _(tmp):
    return cifar_run(tmp, stream="camvid-c")


@case("stream-without-source-for-small-cnn", "small-cnn", "--model")
def _(tmp):
    root = tmp / "ImageNet-C"
    image_folder(root / "gaussian_noise" / "1", classes=1, ext=".JPEG")
    (root / "gaussian_noise" / "1" / "class00").rename(root / "gaussian_noise" / "1" / "n01440764")
    return run_args(tmp, "--model", "small-cnn", "--set", f"stream.root={root}", "--set", "stream.samples=all",
                    stream="imagenet-c")  # fmt: skip


@case("camelyon-metadata-garbage", "metadata.csv")
def _(tmp):
    (tmp / "cam").mkdir()
    (tmp / "cam" / "metadata.csv").write_bytes(b"\xff\xfe\x00garbage\x00" * 50)
    return run_args(tmp, "--set", f"stream.root={tmp / 'cam'}", stream="camelyon17")


@case("camelyon-metadata-missing-columns", "metadata.csv", "columns")
def _(tmp):
    (tmp / "cam").mkdir()
    (tmp / "cam" / "metadata.csv").write_text("idx,a,b\n0,1,2\n")
    return run_args(tmp, "--set", f"stream.root={tmp / 'cam'}", stream="camelyon17")


@case("confounded-csv-garbage", "split.csv")
def _(tmp):
    (tmp / "split.csv").write_bytes(b"\xff\xfe\x00garbage\x00" * 50)
    return run_args(tmp, "--set", f"stream.root={tmp / 'split.csv'}", stream="confounded")


@case("confounded-labels-negative", "split.csv", "-1")
def _(tmp):
    (tmp / "split.csv").write_text("path,label,group,split\na.png,-1,g,train\nb.png,0,g,test\n")
    return run_args(tmp, "--set", f"stream.root={tmp / 'split.csv'}", stream="confounded")


simple("model-classes-mismatch", ["--model", "resnet18"], "resnet18", "1,000", "10")


# --- 7. model weights -------------------------------------------------------------------------------------------------
def weights_run(tmp: Path, path: Path) -> list[str]:
    return run_args(tmp, "--model", "resnet20-cifar10", "--set", f"model.weights={path}")


@case("weights-missing", "model.weights", "nowhere.th")
def _(tmp):
    return weights_run(tmp, tmp / "nowhere.th")


@case("weights-a-device", "model.weights=/dev/null")
def _(tmp):
    return weights_run(tmp, Path("/dev/null"))  # exists, neither a file nor a folder (the run id stats it)


@case("weights-an-empty-folder", "model.weights")
def _(tmp):
    (tmp / "wdir").mkdir()
    return weights_run(tmp, tmp / "wdir")


@case("weights-garbage", "junk.th")
def _(tmp):
    (tmp / "junk.th").write_bytes(os.urandom(2000))
    return weights_run(tmp, tmp / "junk.th")


@case("weights-wrong-architecture", "other.th", "does not fit")
def _(tmp):
    import torch

    torch.save({"conv.weight": torch.zeros(2, 3, 3, 3)}, tmp / "other.th")
    return weights_run(tmp, tmp / "other.th")


@case("weights-hostile-pickle", "evil.th")
def _(tmp):
    (tmp / "evil.th").write_bytes(pickle.dumps(Boom(tmp / "MARKER")))
    return weights_run(tmp, tmp / "evil.th")


# --- 8. leaderboard --------------------------------------------------------------------------------------------------
@case("leaderboard-runs-missing", "--runs", "nope")
def _(tmp):
    return ["leaderboard", "--runs", str(tmp / "nope"), "--out", str(tmp / "site")]


@case("leaderboard-runs-is-file", "--runs")
def _(tmp):
    (tmp / "runs").write_text("x")
    return ["leaderboard", "--runs", str(tmp / "runs"), "--out", str(tmp / "site")]


@case("leaderboard-out-under-a-file", "--out")
def _(tmp):
    (tmp / "runs").mkdir()
    (tmp / "f").write_text("x")
    return ["leaderboard", "--runs", str(tmp / "runs"), "--out", str(tmp / "f" / "site")]


# --- 9. make-c ------------------------------------------------------------------------------------------------------
def make_c(tmp: Path, src: Path, *extra: str, fmt: str = "cifar-c") -> list[str]:
    return ["make-c", "--src", str(src), "--out", str(tmp / "out"), "--format", fmt,
            "--corruptions", "brightness", *extra]  # fmt: skip


CASES.append(Case("make-c-format-unknown", lambda t: make_c(t, t, fmt="cifar"), ("--format",), argparse=True))
CASES.append(Case("make-c-src-missing", lambda t: make_c(t, t / "nowhere"), ("--src", "nowhere")))
CASES.append(Case("make-c-corruption-unknown", lambda t: make_c(t, t, "--corruptions", "fogg"), ("fogg",)))
CASES.append(Case("make-c-severity-9", lambda t: make_c(t, t, "--severities", "9"), ("--severities",)))


@case("make-c-pickle-poisoned", "test_batch", "system")
def _(tmp):
    cifar_pickle(tmp / "src" / "cifar-10-batches-py" / "test_batch", {b"data": Boom(tmp / "MARKER"), b"labels": [0]})
    return make_c(tmp, tmp / "src")


@case("make-c-pickle-truncated", "test_batch")
def _(tmp):
    p = cifar_pickle(tmp / "src" / "cifar-10-batches-py" / "test_batch", cifar_test_dict())
    truncate(p, 0.3)
    return make_c(tmp, tmp / "src")


@case("make-c-src-empty", "--src")
def _(tmp):
    (tmp / "src").mkdir()
    return make_c(tmp, tmp / "src")


@case("make-c-batch-size-0", "--batch-size")
def _(tmp):
    cifar_pickle(tmp / "src" / "cifar-10-batches-py" / "test_batch", cifar_test_dict())
    return make_c(tmp, tmp / "src", "--batch-size", "0")


@case("make-c-device-tpu", "--device", "tpu")
def _(tmp):
    cifar_pickle(tmp / "src" / "cifar-10-batches-py" / "test_batch", cifar_test_dict())
    return make_c(tmp, tmp / "src", "--device", "tpu")


@case("make-c-out-under-a-file", "--out")
def _(tmp):
    cifar_pickle(tmp / "src" / "cifar-10-batches-py" / "test_batch", cifar_test_dict())
    (tmp / "f").write_text("x")
    return [*make_c(tmp, tmp / "src")[:4], str(tmp / "f" / "out"), *make_c(tmp, tmp / "src")[5:]]


@case("make-c-imagenet-truncated-jpeg", "img0.JPEG")
def _(tmp):
    root = image_folder(tmp / "src", classes=2, per=1, ext=".JPEG", size=40)
    truncate(root / "class01" / "img0.JPEG", 0.3)
    return make_c(tmp, root, fmt="imagenet-c")


# --- 10. sweep ------------------------------------------------------------------------------------------------------
def sweep(tmp: Path, *extra: str) -> list[str]:
    return ["sweep", "--streams", "digits-c", "--limit", "8", "--out", str(tmp / "runs"), "--no-leaderboard", *extra]


CASES.append(Case("sweep-method-unknown", lambda t: sweep(t, "--methods", "tent,tnet"), ("tnet", "tent")))
CASES.append(Case("sweep-seeds-not-ints", lambda t: sweep(t, "--methods", "tent", "--seeds", "0,a"), ("--seeds",)))
CASES.append(Case("sweep-empty-methods", lambda t: sweep(t, "--methods", ","), ("--methods",)))
CASES.append(Case("sweep-processes-0", lambda t: sweep(t, "--methods", "tent", "--processes", "0"), ("--processes",)))
CASES.append(Case("sweep-bad-set", lambda t: sweep(t, "--methods", "tent", "--set", "method.steps=0"), ("steps",)))


# --- the tests --------------------------------------------------------------------------------------------------------
def test_census_size():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, run=False)] if c.xfail else []) for c in CASES],
)
def test_bad_input_exits_2_with_one_paragraph(case: Case, tmp_path: Path, capsys, one_thread):
    argv = case.build(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}; stderr: {err}"
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if case.argparse:
        assert lines[-1].startswith("python -m tta_bench") and ": error: " in lines[-1], err
    else:  # the message is one line, the last one (only progress bars may come before it)
        assert lines[-1].startswith("error: ") and sum("error" in ln for ln in lines) == 1, err
    err = lines[-1]
    for needle in case.needles:
        assert needle in err, f"{needle!r} not in: {err}"
    assert not (tmp_path / "MARKER").exists(), "a hostile pickle ran code"
    runs = tmp_path / "runs"
    assert not runs.is_dir() or not [p for p in runs.iterdir() if (p / "done").exists()]


SUBPROCESS = ["set-steps-0", "clean-pickle-poisoned"]


@pytest.mark.parametrize("name", SUBPROCESS)
def test_entry_point_exits_2(name: str, tmp_path: Path):
    """The real `python -m tta_bench` entry point: exit code 2, one line on stderr, no traceback."""
    (case,) = [c for c in CASES if c.id == name]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "tta_bench", *case.build(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert all(n in r.stderr for n in case.needles), r.stderr
    assert not (tmp_path / "MARKER").exists()


# --- the top-level handler ------------------------------------------------------------------------------------------
class _Undecodable(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        from tta_bench.kernel import UserError

        raise UserError("Cannot decode the image /data/x.JPEG (OSError: image file is truncated); replace it.")


def _command(monkeypatch, fn) -> None:
    import tta_bench.cli as cli

    monkeypatch.setattr(cli, "cmd_list", lambda args: fn())


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), FileNotFoundError(2, "No such file", "/x"), KeyError("k")])
def test_a_genuine_bug_keeps_its_traceback(exc, monkeypatch):
    def fail():
        raise exc

    _command(monkeypatch, fail)
    with pytest.raises(type(exc)):
        main(["list"])


def test_a_path_the_system_refuses_is_exit_2(monkeypatch, capsys):
    def fail():
        raise PermissionError(errno.EACCES, "Permission denied", "/ro/runs/abc")

    _command(monkeypatch, fail)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "/ro/runs/abc" in err and "--out" in err


def test_a_user_error_raised_in_a_dataloader_worker_is_one_line(monkeypatch, capsys):
    from torch.utils.data import DataLoader

    _command(monkeypatch, lambda: list(DataLoader(_Undecodable(), num_workers=1)))
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err == "error: Cannot decode the image /data/x.JPEG (OSError: image file is truncated); replace it.\n"
