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
"""

from __future__ import annotations

import argparse
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from tta_bench import corruptions
from tta_bench.corruptions.images import rgb_image
from tta_bench.kernel import UserError as MakeCError  # the CLI prints it as one paragraph, exit code 2
from tta_bench.kernel import read_cifar_pickle, write_with

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


def main(args: argparse.Namespace) -> int:
    """Run ``make-c``; bad input raises a ValueError (UserError) saying what was expected."""
    for name in args.corruptions:
        corruptions.describe(name)  # an unknown name: a UserError with close matches (exit code 2)
    bad = [s for s in args.severities if s not in (1, 2, 3, 4, 5)]
    if bad or not args.severities:
        raise MakeCError(f"--severities must be integers in 1..5, got {args.severities}.")
    if args.batch_size is not None and args.batch_size < 1:
        raise MakeCError(f"--batch-size must be at least 1, got {args.batch_size}.")
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
    if args.format == "imagenet-c":
        written = make_imagenet_c(
            src, out, args.corruptions, args.severities, args.seed, args.batch_size or 100, device
        )
    else:
        written = make_cifar_c(src, out, args.corruptions, args.severities, args.seed, args.batch_size or 1000, device)
    print(f"make-c: wrote {written} file(s) under {out}")
    return 0


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
            "Replace or delete it, then run make-c again (finished outputs are kept)."
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


def load_cifar_source(src: Path) -> tuple[np.ndarray, np.ndarray]:
    """Clean test images ``(N, 32, 32, 3)`` uint8 and labels ``(N,)`` from one of the CIFAR layouts."""
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (src / sub).is_dir():
            src = src / sub
    for fname, key in (("test_batch", b"labels"), ("test", b"fine_labels")):
        if (src / fname).is_file():
            images, labels = read_cifar_pickle(src / fname, key)
            return np.ascontiguousarray(images.transpose(0, 2, 3, 1)), np.asarray(labels, dtype=np.int64)
    if not any(d.is_dir() for d in src.iterdir()):
        raise MakeCError(
            f"--src {src} is not a CIFAR test set. Expected torchvision's cifar-10-batches-py folder (with the "
            "pickle `test_batch`), cifar-100-python (with `test`), or an ImageFolder of 32x32 images (one folder "
            "per class, sorted folder names = label order). Download with torchvision.datasets.CIFAR10(root, "
            "train=False, download=True) and point --src at root/cifar-10-batches-py."
        )
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
    src: Path, out: Path, names: list[str], severities: list[int], seed: int, batch_size: int, device: torch.device
) -> int:
    """Write ``<out>/<corruption>.npy`` and ``<out>/labels.npy``; returns the number of files written."""
    if sorted(severities) != [1, 2, 3, 4, 5]:
        raise MakeCError(
            f"--format cifar-c stores all five severities in each <corruption>.npy (RobustBench "
            f"slices them by position); drop --severities {' '.join(map(str, severities))}."
        )
    images, labels = load_cifar_source(src)
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
