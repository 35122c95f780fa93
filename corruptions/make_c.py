"""``python -m tta_bench make-c``: write an ImageNet-C or CIFAR-C style dataset with these corruptions.

Layouts (as published by Hendrycks & Dietterich, read by RobustBench and tta_bench's loaders):

* ``--format imagenet-c``: ``--src`` is an ImageFolder by wnid (``<wnid>/<name>.JPEG``). Each
  image is resized (short side 256, bilinear) and centre-cropped to 224 (make_imagenet_c.py's
  ``Resize(256), CenterCrop(224)``), corrupted, truncated to uint8 and saved as
  ``<out>/<corruption>/<severity>/<wnid>/<name>`` (JPEG, quality 85, optimize), keeping the name.
* ``--format cifar-c``: ``--src`` is torchvision's ``cifar-10-batches-py`` (pickle ``test_batch``),
  ``cifar-100-python`` (pickle ``test``) or an ImageFolder of 32x32 images (sorted class folders
  = label order). Writes ``<out>/<corruption>.npy``, uint8 ``(5 * N, 32, 32, 3)`` with severities
  1..5 concatenated, and ``<out>/labels.npy``, uint8 ``(5 * N,)`` (the labels tiled 5 times, as
  the published files). Name ``--out`` ``CIFAR-10-C`` / ``CIFAR-100-C`` for RobustBench's loader.

Reproducible and resumable: batch ``k`` of ``(corruption, severity)`` always holds the same
images and is corrupted with a generator seeded from ``(--seed, corruption, severity, k)``, so a
re-run (same ``--batch-size`` and device) skips complete outputs and recreates missing ones
identically. Files are written to a temporary name and renamed, so a crash never leaves a
truncated file that looks complete.

What was built is recorded before the first output in ``<out>/make-c.json`` (source fingerprint: names, sizes and
mtimes of the files read; seed, corruptions, severities, format, batch size, device type, tta_bench version). A
resumed build must agree on everything but the corruptions and severities (which it may add): with another
``--src`` or ``--seed`` it is refused in one paragraph saying what differs, since it would keep the old images beside
new labels. ``--force`` (``--overwrite``) rebuilds such an ``--out`` beside it and swaps it in when complete.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from tta_bench import corruptions
from tta_bench.corruptions.images import rgb_image
from tta_bench.kernel import UserError as MakeCError  # the CLI prints it as one paragraph, exit code 2
from tta_bench.kernel import atomic, dumps_json, read_cifar_pickle, read_json, write_atomic, write_with

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm")  # make_imagenet_c.py's list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``make-c``."""
    parser.add_argument("--src", required=True, help="clean dataset (see the layouts in corruptions/make_c.py)")
    parser.add_argument("--out", required=True, help="output folder (e.g. data/CIFAR-10-C or data/ImageNet-C)")
    parser.add_argument("--format", required=True, choices=["imagenet-c", "cifar-c"], dest="format")
    parser.add_argument(
        "--corruptions",
        nargs="+",
        default=list(corruptions.BENCHMARK),
        help="corruption names (default: the 15 benchmark corruptions)",
    )
    parser.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 100 (imagenet-c), 1000 (cifar-c)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--force",
        "--overwrite",
        action="store_true",
        help=f"rebuild --out from scratch when its {MANIFEST} records another source, seed, format, batch size, "
        "device or version (built beside it and swapped in when complete; the old set is kept until then)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``make-c``; bad input raises a ValueError (UserError) saying what was expected."""
    for name in args.corruptions:
        corruptions.describe(name)  # an unknown name: a UserError with close matches (exit code 2)
    bad = [s for s in args.severities if s not in (1, 2, 3, 4, 5)]
    if bad or not args.severities:
        raise MakeCError(f"--severities must be integers in 1..5, got {args.severities}.")
    if args.batch_size is not None and args.batch_size < 1:
        raise MakeCError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.format == "cifar-c" and sorted(args.severities) != [1, 2, 3, 4, 5]:
        raise MakeCError(
            f"--format cifar-c stores all five severities in each <corruption>.npy (RobustBench "
            f"slices them by position); drop --severities {' '.join(map(str, args.severities))}."
        )
    device = _device(args.device)
    src, out = Path(args.src), Path(args.out)
    _check_out(out)
    if not src.is_dir():
        raise MakeCError(
            f"--src {src} is not a folder. make-c reads a clean dataset: for --format imagenet-c an "
            "ImageFolder of class folders (<wnid>/<name>.JPEG, e.g. the ILSVRC2012 val set sorted into wnid "
            "folders); for --format cifar-c torchvision's cifar-10-batches-py or cifar-100-python folder "
            "(as downloaded by torchvision.datasets.CIFAR10/100) or an ImageFolder of 32x32 images. "
            "Point --src at that folder."
        )
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise MakeCError(
            f"--out {out} is --src {src} or inside it: the corrupted images would land among the clean ones (and "
            "become classes of the next listing). Pass an --out outside the clean dataset's folder."
        )
    batch_size = args.batch_size or (100 if args.format == "imagenet-c" else 1000)
    want = manifest(args, src, batch_size, device)
    force = getattr(args, "force", False)
    if force and (out.exists() and (_outputs(out) or (out / MANIFEST).exists())):
        written = atomic_rebuild(out, lambda tmp: build(args.format, src, tmp, want, batch_size, device))
    else:
        written = build(args.format, src, out, want, batch_size, device)
    print(f"make-c: wrote {written} file(s) under {out}")
    return 0


def build(fmt: str, src: Path, out: Path, want: dict, batch_size: int, device: torch.device) -> int:
    """Record the manifest in `out` (before any output: `want` plus what `out` already held), write the outputs
    asked for, then mark the manifest complete."""
    record = check_manifest(out, want)
    names, sevs, seed = want["corruptions"], want["severities"], want["seed"]
    if fmt == "imagenet-c":
        write_manifest(out, {**record, "complete": False})
        written = make_imagenet_c(src, out, names, sevs, seed, batch_size, device)
    else:
        loaded = load_cifar_source(src)  # a refused source leaves --out untouched
        write_manifest(out, {**record, "complete": False})
        written = make_cifar_c(src, out, names, sevs, seed, batch_size, device, loaded)
    write_manifest(out, {**record, "complete": True})
    return written


# ------------------------------------------------------------------------------------------ the manifest
# `<out>/make-c.json` records what the data set was built from and how. The outputs depend on all of IDENTITY (batch k
# of a corruption holds fixed images and its generator is seeded per batch, on the device's generator): a resumed
# build must agree on each, or it would leave old images beside new ones. Corruptions and severities may be added.
MANIFEST = "make-c.json"
IDENTITY = ("format", "source", "seed", "batch_size", "device", "tta_bench")
ADVICE = (
    "Use another --out for this data set, or pass --force (alias --overwrite) to rebuild --out with these options: "
    "the new set is built beside it and swapped in when complete (room for both is needed until then), and the old "
    "one is kept until that moment."
)


def manifest(args: argparse.Namespace, src: Path, batch_size: int, device: torch.device) -> dict:
    """What a build with these options makes: source fingerprint (names, sizes, mtimes of its files), seed,
    corruptions, severities, format, batch size, device type and the tta_bench version."""
    files = source_files(args.format, src)
    return {
        "tool": "python -m tta_bench make-c",
        "format": args.format,
        "source": {"path": str(src.resolve()), "files": len(files), "fingerprint": _fingerprint(files, src)},
        "seed": args.seed,
        "batch_size": batch_size,
        "device": device.type,
        "tta_bench": _version(),
        "corruptions": list(dict.fromkeys(args.corruptions)),
        "severities": sorted(set(args.severities)),
    }


def _fingerprint(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _version() -> str:
    try:
        return importlib.metadata.version("tta_bench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def source_files(fmt: str, src: Path) -> list[Path]:
    """The files of --src a build reads (a CIFAR pickle, or the ImageFolder's images); UserError on a bad --src."""
    if fmt == "cifar-c":
        found = _cifar_pickle(src)
        if found is not None:
            return [found[0]]
        _check_cifar_folder(src)
    return [p for _, p in list_image_folder(src)]


def _outputs(out: Path) -> list[str]:
    """Names of make-c outputs already in `out` (corruption folders or .npy files, labels.npy), sorted."""
    if not out.is_dir():
        return []
    known = set(corruptions.names())
    return sorted(
        e.name
        for e in out.iterdir()
        if e.name == "labels.npy" or (e.suffix == ".npy" and e.stem in known) or (e.is_dir() and e.name in known)
    )


def check_manifest(out: Path, want: dict) -> dict:
    """The manifest to record for a build of `want` into `out`: `want` with the corruptions and severities `out`
    already holds added. A UserError (one paragraph) when `out` holds outputs made otherwise, or of unknown origin."""
    path = out / MANIFEST
    if not path.exists():
        found = _outputs(out)
        if found:
            raise MakeCError(
                f"--out {out} already holds make-c outputs ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''}"
                f") but no {MANIFEST} recording the source and seed they were made from (an older tta_bench or "
                f"another tool), so a resumed build cannot tell whether they match this --src and --seed. {ADVICE}"
            )
        return want
    try:
        old = read_json(path, "make-c manifest")
        if not isinstance(old, dict):
            raise MakeCError(f"{path} is not a JSON object")
    except MakeCError as e:
        raise MakeCError(f"--out {out}: its manifest cannot be read ({e}). {ADVICE}") from None
    differ = [_differs(k, old.get(k), want[k]) for k in IDENTITY if old.get(k) != want[k]]
    differ = [d for d in differ if d]
    if differ:
        raise MakeCError(
            f"--out {out} holds a make-c data set built with another {'; another '.join(differ)}. Resuming would keep "
            f"its images beside new ones (and new labels): an inconsistent data set. {ADVICE}"
        )
    names = [*old.get("corruptions", []), *(c for c in want["corruptions"] if c not in old.get("corruptions", []))]
    return {**want, "corruptions": names, "severities": sorted({*old.get("severities", []), *want["severities"]})}


def _differs(key: str, old: object, new: object) -> str:
    """`key`'s recorded and new value in words."""
    if key == "source":
        o, n = (v if isinstance(v, dict) else {} for v in (old, new))
        if o.get("fingerprint") == n.get("fingerprint"):
            return ""  # the same files reached through another path
        return (
            f"source (recorded: {o.get('files')} files under {o.get('path')}, fingerprint {o.get('fingerprint')}; "
            f"now: {n.get('files')} files under {n.get('path')}, fingerprint {n.get('fingerprint')}: files added, "
            "removed or changed)"
        )
    words = {"batch_size": "--batch-size", "device": "device type (its random generators differ)",
             "tta_bench": "tta_bench version", "format": "--format", "seed": "--seed"}  # fmt: skip
    return f"{words.get(key, key)} (recorded {json.dumps(old)}, now {json.dumps(new)})"


def write_manifest(out: Path, record: dict) -> None:
    write_atomic(out / MANIFEST, dumps_json(record))


def atomic_rebuild(out: Path, build_into: Callable[[Path], int]) -> int:
    """--force: build a new data set beside `out`, carry over entries that are not make-c outputs, swap it in whole
    (the old set is deleted only then). A crash or an error leaves `out` as it was."""
    for stale in atomic.abandoned(atomic.leftovers(out.parent, out.name, "tmp")):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed rebuild
    tmp = atomic.make_temp(out.parent, out.name)
    try:
        written = build_into(tmp)
        skip = {*_outputs(out), MANIFEST, atomic.OWNER}
        for e in out.iterdir():
            if e.name not in skip and not (tmp / e.name).exists():
                (shutil.copytree if e.is_dir() else shutil.copy2)(e, tmp / e.name)
        atomic.commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def _device(name: str | None) -> torch.device:
    """The torch device named by --device (default: cuda when available, else cpu); a UserError if unusable."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise MakeCError(f"--device {name!r} is not a torch device: use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MakeCError(f"--device {name}: PyTorch sees no CUDA device here; use --device cpu.")
    return device


def _check_out(out: Path) -> None:
    """--out must be (or be creatable as) a folder this user can write."""
    for q in (out.absolute(), *out.absolute().parents):
        if q.exists():
            if not q.is_dir() or not os.access(q, os.W_OK | os.X_OK):
                raise MakeCError(f"--out {out}: {q} is not a writable folder. Pass a folder you can write to.")
            return


def _open_rgb(path: Path) -> Image.Image:
    """The image at `path` as 8-bit RGB (decoded now, each pixel mode by its meaning: `corruptions.images`); a
    truncated or damaged file, or a mode whose range is unknown, is a UserError naming it."""
    try:
        with Image.open(path) as im:
            return rgb_image(im, path)
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, OSError) and not isinstance(e, Image.UnidentifiedImageError) and e.errno is not None:
            raise
        raise MakeCError(
            f"Cannot decode the image {path} ({type(e).__name__}: {e}); it is truncated or damaged. "
            "Replace or delete it, then run make-c again with --force (the source changed, so the data set is rebuilt; "
            "the outputs so far are kept until the new set is complete)."
        ) from None


def _existing(path: Path, mmap: bool = True) -> np.ndarray | None:
    """An earlier output (to skip it when complete); None when it is damaged, so it is written again."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError, OSError):
        return None


def batch_generator(seed: int, name: str, severity: int, k: int, device: torch.device) -> torch.Generator:
    """The generator of batch ``k`` of ``(name, severity)``: independent of what was skipped."""
    g = torch.Generator(device=device)
    g.manual_seed(zlib.crc32(f"{seed}/{name}/{severity}/{k}".encode()))
    return g


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in [0, 1] -> ``(N, H, W, 3)`` uint8, truncating like the reference's
    ``np.uint8(img)`` (with 1e-3 of slack so that float32 rounding of exact levels keeps them)."""
    return torch.floor(x.clamp(0, 1) * 255 + 1e-3).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ------------------------------------------------------------------------------------------ ImageNet-C


def list_image_folder(src: Path) -> list[tuple[str, Path]]:
    """``(class, path)`` of every image in an ImageFolder, classes and files sorted."""
    items = []
    for cls in sorted(d.name for d in src.iterdir() if d.is_dir()):
        for root, _, files in sorted(os.walk(src / cls)):
            items += [(cls, Path(root) / f) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
    if not items:
        raise MakeCError(
            f"--src {src} holds no images in class sub-folders. Expected an ImageFolder: one folder per class "
            f"(the wnid for ImageNet, e.g. {src}/n01440764/ILSVRC2012_val_00000293.JPEG) with images ending in "
            f"{', '.join(IMG_EXTENSIONS)}. Point --src at the folder that contains the class folders."
        )
    return items


def _load_224(path: Path) -> np.ndarray:
    """make_imagenet_c.py's input: RGB, Resize(256) (short side, bilinear, antialiased), CenterCrop(224)."""
    from torchvision.transforms import functional as tvf

    im = _open_rgb(path)
    im = tvf.center_crop(tvf.resize(im, 256), 224)
    return np.asarray(im)


def _save_jpeg(arr: np.ndarray, path: Path) -> None:
    write_with(path, lambda f: Image.fromarray(arr).save(f, "JPEG", quality=85, optimize=True), fsync=False)


def make_imagenet_c(
    src: Path, out: Path, names: list[str], severities: list[int], seed: int, batch_size: int, device: torch.device
) -> int:
    """Write ``<out>/<corruption>/<severity>/<wnid>/<name>``; returns the number of files written."""
    items = list_image_folder(src)
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    written = 0
    with (
        ThreadPoolExecutor(max_workers=4) as pool,
        tqdm(total=len(names) * len(severities) * len(items), desc="make-c imagenet-c", unit="img") as bar,
    ):
        for name in names:
            for sev in severities:
                for k, batch in enumerate(batches):
                    dests = [out / name / str(sev) / cls / path.name for cls, path in batch]
                    todo = [i for i, d in enumerate(dests) if not d.is_file()]
                    if todo:
                        imgs = np.stack(list(pool.map(_load_224, [p for _, p in batch])))
                        x = torch.from_numpy(imgs).to(device).permute(0, 3, 1, 2).float() / 255
                        y = to_uint8(corruptions.corrupt(x, name, sev, batch_generator(seed, name, sev, k, device)))
                        list(pool.map(_save_jpeg, [y[i] for i in todo], [dests[i] for i in todo]))
                        written += len(todo)
                    bar.update(len(batch))
    return written


# ------------------------------------------------------------------------------------------ CIFAR-C


def _cifar_pickle(src: Path) -> tuple[Path, bytes] | None:
    """(pickle, label key) of a torchvision CIFAR test set under `src`, or None."""
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (src / sub).is_dir():
            src = src / sub
    for fname, key in (("test_batch", b"labels"), ("test", b"fine_labels")):
        if (src / fname).is_file():
            return src / fname, key
    return None


def _check_cifar_folder(src: Path) -> None:
    if not any(d.is_dir() for d in src.iterdir()):
        raise MakeCError(
            f"--src {src} is not a CIFAR test set. Expected torchvision's cifar-10-batches-py folder (with the "
            "pickle `test_batch`), cifar-100-python (with `test`), or an ImageFolder of 32x32 images (one folder "
            "per class, sorted folder names = label order). Download with torchvision.datasets.CIFAR10(root, "
            "train=False, download=True) and point --src at root/cifar-10-batches-py."
        )


def load_cifar_source(src: Path) -> tuple[np.ndarray, np.ndarray]:
    """Clean test images ``(N, 32, 32, 3)`` uint8 and labels ``(N,)`` from one of the CIFAR layouts."""
    found = _cifar_pickle(src)
    if found is not None:
        images, labels = read_cifar_pickle(*found)
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1)), np.asarray(labels, dtype=np.int64)
    _check_cifar_folder(src)
    items = list_image_folder(src)
    classes = sorted({cls for cls, _ in items})
    images = []
    for _, path in items:
        with _open_rgb(path) as im:
            images.append(np.asarray(im))
            if images[-1].shape != (32, 32, 3):
                raise MakeCError(
                    f"{path} is {im.size[0]}x{im.size[1]}; --format cifar-c needs 32x32 images "
                    "(resize them first, or use --format imagenet-c for large images)."
                )
    labels = np.array([classes.index(cls) for cls, _ in items], dtype=np.int64)
    return np.stack(images), labels


def make_cifar_c(
    src: Path, out: Path, names: list[str], severities: list[int], seed: int, batch_size: int, device: torch.device,
    loaded: tuple[np.ndarray, np.ndarray] | None = None,
) -> int:  # fmt: skip
    """Write ``<out>/<corruption>.npy`` and ``<out>/labels.npy`` (`loaded`: `load_cifar_source(src)` if done
    already); returns the number of files written."""
    if sorted(severities) != [1, 2, 3, 4, 5]:
        raise MakeCError(
            f"--format cifar-c stores all five severities in each <corruption>.npy (RobustBench "
            f"slices them by position); drop --severities {' '.join(map(str, severities))}."
        )
    images, labels = loaded if loaded is not None else load_cifar_source(src)
    n = len(images)
    written = 0
    lab = np.tile(labels, 5).astype(np.uint8)
    lab_path = out / "labels.npy"
    if not (lab_path.is_file() and np.array_equal(_existing(lab_path, mmap=False), lab)):
        write_with(lab_path, lambda f: np.save(f, lab))
        written += 1
    for name in tqdm(names, desc="make-c cifar-c", unit="corruption"):
        path = out / f"{name}.npy"
        if path.is_file() and getattr(_existing(path), "shape", None) == (5 * n, 32, 32, 3):
            continue
        result = np.empty((5 * n, 32, 32, 3), np.uint8)
        for sev in range(1, 6):
            for k, start in enumerate(range(0, n, batch_size)):
                x = torch.from_numpy(images[start : start + batch_size]).to(device).permute(0, 3, 1, 2).float() / 255
                y = corruptions.corrupt(x, name, sev, batch_generator(seed, name, sev, k, device))
                result[(sev - 1) * n + start : (sev - 1) * n + start + len(x)] = to_uint8(y)
        write_with(path, lambda f, r=result: np.save(f, r))
        written += 1
    return written
