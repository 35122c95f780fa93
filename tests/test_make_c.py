"""make-c: CIFAR-C files that RobustBench's own loader reads, ImageNet-C folder layout, resumability,
and one-paragraph errors for bad input."""

from __future__ import annotations

import argparse
import importlib
import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tta_bench import corruptions
from tta_bench.corruptions import make_c


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    make_c.add_arguments(parser)
    return make_c.main(parser.parse_args(list(argv)))


def fake_cifar10(root: Path, n: int, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """A ``cifar-10-batches-py/test_batch`` in torchvision's pickle format with ``n`` images."""
    rng = np.random.default_rng(seed)
    hwc = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    hwc[:, 8:24, 8:24] //= 2  # some structure, so that blurs and contrast do something
    labels = rng.integers(0, 10, size=n).tolist()
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": labels,
        b"data": hwc.transpose(0, 3, 1, 2).reshape(n, 3072),
        b"filenames": [b"%d.png" % i for i in range(n)],
    }
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    return folder, hwc, np.array(labels)


def import_robustbench():
    try:
        from tta_bench.compat import import_robustbench as imp

        return imp()
    except ImportError:  # the harness shim is not there: alias AutoAttack's package name ourselves
        sys.modules.setdefault("autoattack", importlib.import_module("pyautoattack"))
        return importlib.import_module("robustbench")


def test_cifar_c_roundtrip_with_robustbench(tmp_path: Path):
    src, clean, labels = fake_cifar10(tmp_path, 20)
    out = tmp_path / "data" / "CIFAR-10-C"
    names = ["gaussian_noise", "glass_blur"]
    assert (
        run(
            "--src",
            str(src),
            "--out",
            str(out),
            "--format",
            "cifar-c",
            "--corruptions",
            *names,
            "--device",
            "cpu",
            "--batch-size",
            "8",
        )
        == 0
    )
    lab = np.load(out / "labels.npy")
    assert lab.dtype == np.uint8 and np.array_equal(lab, np.tile(labels, 5))
    arrays = {n: np.load(out / f"{n}.npy") for n in names}
    for a in arrays.values():
        assert a.dtype == np.uint8 and a.shape == (100, 32, 32, 3)
        assert not np.array_equal(a[:20], a[80:])  # severities differ
    # severity 1 of batch 0 is exactly corrupt() with that batch's generator
    x = torch.from_numpy(clean[:8]).permute(0, 3, 1, 2).float() / 255
    gen = make_c.batch_generator(0, "glass_blur", 1, 0, torch.device("cpu"))
    assert np.array_equal(make_c.to_uint8(corruptions.corrupt(x, "glass_blur", 1, gen)), arrays["glass_blur"][:8])

    rb = import_robustbench()
    from robustbench.data import load_cifar10c

    assert rb is not None
    x_rb, y_rb = load_cifar10c(n_examples=40, severity=1, data_dir=str(tmp_path / "data"), corruptions=names)
    direct = np.concatenate([arrays[n][:20] for n in names]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    assert torch.equal(x_rb, torch.from_numpy(direct))
    assert np.array_equal(y_rb.numpy(), np.concatenate([labels, labels]))


@pytest.mark.slow
def test_cifar_c_full_size_severity_5_with_robustbench(tmp_path: Path):
    """RobustBench slices each file by a hard-coded 10000 images per severity: check severity 5."""
    src, _, labels = fake_cifar10(tmp_path, 10000)
    out = tmp_path / "data" / "CIFAR-10-C"
    run("--src", str(src), "--out", str(out), "--format", "cifar-c", "--corruptions", "contrast", "--device", "cpu")
    import_robustbench()
    from robustbench.data import load_cifar10c

    x_rb, y_rb = load_cifar10c(n_examples=10000, severity=5, data_dir=str(tmp_path / "data"), corruptions=["contrast"])
    direct = np.load(out / "contrast.npy")[40000:].transpose(0, 3, 1, 2).astype(np.float32) / 255
    assert torch.equal(x_rb, torch.from_numpy(direct)) and np.array_equal(y_rb.numpy(), labels)


def fake_imagenet(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for wnid, sizes in (("n01440764", [(300, 400), (260, 260)]), ("n01443537", [(500, 375)])):
        (root / wnid).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / wnid / f"ILSVRC2012_val_{i:08d}.JPEG", quality=95)
    return root


def test_imagenet_c_layout_and_resume(tmp_path: Path, capsys):
    src = fake_imagenet(tmp_path / "val")
    out = tmp_path / "ImageNet-C"
    args = (
        "--src",
        str(src),
        "--out",
        str(out),
        "--format",
        "imagenet-c",
        "--corruptions",
        "fog",
        "pixelate",
        "--severities",
        "1",
        "3",
        "--device",
        "cpu",
        "--batch-size",
        "2",
    )
    assert run(*args) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "make-c.json")
    expect = sorted(
        f"{c}/{s}/{w}/ILSVRC2012_val_{i:08d}.JPEG"
        for c in ("fog", "pixelate")
        for s in (1, 3)
        for w, i in (("n01440764", 0), ("n01440764", 1), ("n01443537", 0))
    )
    assert files == expect
    ref_q = tmp_path / "q85.jpg"
    Image.new("RGB", (224, 224)).save(ref_q, "JPEG", quality=85)
    with Image.open(out / expect[0]) as im, Image.open(ref_q) as q85:
        assert im.format == "JPEG" and im.size == (224, 224) and im.mode == "RGB"
        assert im.quantization == q85.quantization  # saved at quality 85
    # resumable: a second run writes nothing; a deleted file is recreated identically
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.JPEG")}
    capsys.readouterr()
    run(*args)
    assert "wrote 0 file(s)" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.JPEG")}
    victim = out / expect[-1]
    before = victim.read_bytes()
    victim.unlink()
    run(*args)
    assert "wrote 1 file(s)" in capsys.readouterr().out and victim.read_bytes() == before
    assert not list(out.rglob("*.tmp"))


def test_cifar_c_resume_skips_complete_files(tmp_path: Path, capsys):
    src, _, _ = fake_cifar10(tmp_path, 10)
    out = tmp_path / "c"
    args = ("--src", str(src), "--out", str(out), "--format", "cifar-c", "--corruptions", "fog", "--device", "cpu")
    run(*args)
    capsys.readouterr()
    run(*args)
    assert "wrote 0 file(s)" in capsys.readouterr().out


def test_bad_input_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="is not a folder"):
        run("--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--format", "cifar-c")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="cifar-10-batches-py"):
        run("--src", str(tmp_path / "flat"), "--out", str(tmp_path / "o"), "--format", "cifar-c")
    with pytest.raises(ValueError, match="ImageFolder"):
        run("--src", str(tmp_path / "flat"), "--out", str(tmp_path / "o"), "--format", "imagenet-c")
    src = fake_imagenet(tmp_path / "big")
    with pytest.raises(ValueError, match="32x32"):
        run("--src", str(src), "--out", str(tmp_path / "o"), "--format", "cifar-c")
    with pytest.raises(ValueError, match="all five severities"):
        run("--src", str(src), "--out", str(tmp_path / "o"), "--format", "cifar-c", "--severities", "3")
    with pytest.raises(ValueError, match="Did you mean"):
        run("--src", str(src), "--out", str(tmp_path / "o"), "--format", "cifar-c", "--corruptions", "fogg")


def test_cli_exit_code_2_on_bad_src(tmp_path: Path):
    cli = pytest.importorskip("tta_bench.cli")
    assert (
        cli.main(["make-c", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--format", "imagenet-c"])
        == 2
    )


# --- the manifest: what make-c built, checked on resume (#25) -------------------------------------------------------
def _cifar_args(src: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return ("--src", str(src), "--out", str(out), "--format", "cifar-c", "--corruptions", "contrast",
            "--device", "cpu", *extra)  # fmt: skip


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_manifest_records_the_build_before_the_outputs(tmp_path: Path, monkeypatch):
    src, _, _ = fake_cifar10(tmp_path / "a", 8)
    out = tmp_path / "c"
    seen = {}
    real = make_c.make_cifar_c

    def spy(*a, **k):
        seen["manifest"] = json.loads((out / make_c.MANIFEST).read_text())  # already there when outputs start
        return real(*a, **k)

    monkeypatch.setattr(make_c, "make_cifar_c", spy)
    assert run(*_cifar_args(src, out, "--seed", "3")) == 0
    assert seen["manifest"]["complete"] is False
    m = json.loads((out / make_c.MANIFEST).read_text())
    assert m["complete"] is True and m["seed"] == 3 and m["format"] == "cifar-c" and m["device"] == "cpu"
    assert m["corruptions"] == ["contrast"] and m["severities"] == [1, 2, 3, 4, 5] and m["batch_size"] == 1000
    assert m["source"]["files"] == 1 and len(m["source"]["fingerprint"]) == 16 and m["tta_bench"]


@pytest.mark.parametrize("change", ["src", "seed", "batch-size"])
def test_resume_with_another_source_or_seed_is_refused(change, tmp_path: Path, capsys):
    src, _, _ = fake_cifar10(tmp_path / "a", 8)
    other, _, _ = fake_cifar10(tmp_path / "b", 8, seed=1)
    out = tmp_path / "c"
    assert run(*_cifar_args(src, out)) == 0
    before = _snapshot(out)
    argv = {
        "src": _cifar_args(other, out),
        "seed": _cifar_args(src, out, "--seed", "1"),
        "batch-size": _cifar_args(src, out, "--batch-size", "4"),
    }[change]
    cli = pytest.importorskip("tta_bench.cli")
    capsys.readouterr()
    assert cli.main(["make-c", *argv]) == 2
    err = capsys.readouterr().err
    words = {"src": "another source (recorded: 1 files under", "seed": "another --seed (recorded 0, now 1)",
             "batch-size": "another --batch-size (recorded 1000, now 4)"}[change]  # fmt: skip
    assert words in err and "--force" in err and "another --out" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(out) == before  # nothing written, the old set whole


def test_force_rebuilds_aside_and_swaps_in(tmp_path: Path, monkeypatch, capsys):
    src, _, _ = fake_cifar10(tmp_path / "a", 8)
    other, _, other_labels = fake_cifar10(tmp_path / "b", 8, seed=1)
    out, fresh = tmp_path / "c", tmp_path / "fresh"
    run(*_cifar_args(src, out))
    (out / "README.txt").write_text("my notes")  # not a make-c output: carried over
    before = _snapshot(out)

    def killed(*a, **k):
        raise KeyboardInterrupt  # the rebuild dies midway: the old set stays whole, no temporary folder left

    with monkeypatch.context() as mp:
        mp.setattr(make_c, "make_cifar_c", killed)
        with pytest.raises(KeyboardInterrupt):
            run(*_cifar_args(other, out, "--force"))
    assert _snapshot(out) == before and not list(tmp_path.glob(".c.*"))
    assert run(*_cifar_args(other, out, "--overwrite")) == 0
    run(*_cifar_args(other, fresh))
    after, want = _snapshot(out), _snapshot(fresh)
    assert after["README.txt"] == b"my notes"
    assert after["contrast.npy"] == want["contrast.npy"] != before["contrast.npy"]
    assert np.array_equal(np.load(out / "labels.npy"), np.tile(other_labels, 5))
    m = json.loads((out / make_c.MANIFEST).read_text())
    assert m["source"]["path"] == str(other.resolve()) and m["complete"] is True
    capsys.readouterr()
    assert run(*_cifar_args(other, out)) == 0 and "wrote 0 file(s)" in capsys.readouterr().out  # resumable again


def test_outputs_without_a_manifest_or_a_damaged_one_are_refused(tmp_path: Path):
    src, _, _ = fake_cifar10(tmp_path / "a", 8)
    out = tmp_path / "c"
    run(*_cifar_args(src, out))
    (out / make_c.MANIFEST).unlink()  # as made by an older tta_bench
    with pytest.raises(ValueError, match=r"holds make-c outputs \(contrast.npy, labels.npy\) but no make-c.json"):
        run(*_cifar_args(src, out))
    (out / make_c.MANIFEST).write_text('{"seed": 0,')
    with pytest.raises(ValueError, match="its manifest cannot be read"):
        run(*_cifar_args(src, out))
    assert run(*_cifar_args(src, out, "--force")) == 0
    assert json.loads((out / make_c.MANIFEST).read_text())["complete"] is True


def test_adding_corruptions_or_moving_the_source_is_a_resume(tmp_path: Path, capsys):
    src = fake_imagenet(tmp_path / "val")
    out = tmp_path / "ImageNet-C"
    base = ("--out", str(out), "--format", "imagenet-c", "--device", "cpu", "--batch-size", "2")
    run("--src", str(src), *base, "--corruptions", "fog", "--severities", "1")
    moved = tmp_path / "elsewhere" / "val"
    shutil.copytree(src, moved)  # the same files (names, sizes, mtimes) under another path
    capsys.readouterr()
    assert run("--src", str(moved), *base, "--corruptions", "fog", "pixelate", "--severities", "1", "3") == 0
    assert "wrote 9 file(s)" in capsys.readouterr().out  # fog@3, pixelate@1, pixelate@3: 3 images each
    m = json.loads((out / make_c.MANIFEST).read_text())
    assert m["corruptions"] == ["fog", "pixelate"] and m["severities"] == [1, 3]
    shutil.copy(moved / "n01440764" / "ILSVRC2012_val_00000000.JPEG", moved / "n01440764" / "extra.JPEG")
    with pytest.raises(ValueError, match="files added, removed or changed"):
        run("--src", str(moved), *base, "--corruptions", "fog", "--severities", "1")


def test_out_inside_src_is_refused(tmp_path: Path):
    src = fake_imagenet(tmp_path / "val")
    for out in (src, src / "corrupted"):
        with pytest.raises(ValueError, match="is --src .* or inside it"):
            run("--src", str(src), "--out", str(out), "--format", "imagenet-c", "--corruptions", "fog")
    assert sorted(p.name for p in src.iterdir()) == ["n01440764", "n01443537"]
