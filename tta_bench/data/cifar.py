"""`cifar10-c`, `cifar100-c`: CIFAR-10/100-C (Hendrycks & Dietterich, ICLR 2019) from the published
`.npy` files, or generated on the fly from a clean CIFAR test set with `corruptions/`.

Published layout (Zenodo records 2535967 and 3555552): `CIFAR-10-C/<corruption>.npy`, uint8
(50000,32,32,3) = the 10,000 test images at severities 1..5 concatenated, and `labels.npy` (50000,).
Severity s is rows [(s-1)·10000, s·10000); a stream shows the first N of them (as RobustBench does).

Clean test sets: torchvision's `cifar-10-batches-py/test_batch` / `cifar-100-python/test` pickles
(original test order), or an ImageFolder of test images (`<dir>[/test]/<class>/<img>`, class folders
in label order, i.e. sorted names; shown in a fixed seed-independent shuffled order so the first N mix
the classes). Source split: the last `holdout` test images (in stream order) are never streamed; they
are split in two disjoint parts: the first `min(clean_size, holdout // 2)` are `spec.clean` (forgetting) and
the rest are `spec.source` (warm-up, Fisher, ...). When the training batches are present the training set is
the source and the first `clean_size` held-out images are the clean sample.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tta_bench import corruptions
from tta_bench.data.folders import (
    ImageFiles,
    check_labels,
    fixed_order,
    is_image_folder,
    list_image_folder,
    load_npy,
    require,
)
from tta_bench.data.generated import corrupt_images
from tta_bench.kernel import UserError, fingerprint_files, hash_text, read_cifar_pickle
from tta_bench.kernel import download as kernel_download
from tta_bench.streams import CleanSplit, StreamSpec, register, segment_seed

N_TEST = 10_000  # test images per severity in the published files (the code reads the count from labels.npy)


@dataclass(frozen=True)
class Variant:
    name: str  # stream name
    folder: str  # CIFAR-C folder name
    pickles: str  # torchvision folder name
    test_file: str
    train_files: tuple[str, ...]
    label_key: bytes
    names_file: str
    names_key: bytes
    num_classes: int
    url: str
    md5: str  # of the .tar, as published on Zenodo


VARIANTS = {
    "cifar10-c": Variant(
        "cifar10-c", "CIFAR-10-C", "cifar-10-batches-py", "test_batch",
        tuple(f"data_batch_{i}" for i in range(1, 6)), b"labels", "batches.meta", b"label_names", 10,
        "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1", "56bf5dcef84df0e2308c6dcbcbbd8499",
    ),
    "cifar100-c": Variant(
        "cifar100-c", "CIFAR-100-C", "cifar-100-python", "test", ("train",), b"fine_labels", "meta",
        b"fine_label_names", 100,
        "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar?download=1", "11f0ed0f1191edbf9fa23466ae6021d3",
    ),
}  # fmt: skip


class U8Images(Dataset):
    """(N,3,H,W) uint8 images + labels -> `(x float [0,1], y int)`; `targets` for label-aware orders."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    @property
    def targets(self) -> np.ndarray:
        return self.y.numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i].float().div(255.0), int(self.y[i])

    def raw(self, idx) -> torch.Tensor:
        """The uint8 images at positions `idx` (N,3,H,W): a stream batch is sliced, not built image by image."""
        return self.x[torch.as_tensor(idx, dtype=torch.long)]

    def finish(self, x: torch.Tensor, idx, device: torch.device | None = None) -> torch.Tensor:
        """uint8 images -> float [0,1] on `device` (CUDA runs: the uint8 batch crosses the bus, 4x fewer bytes)."""
        return (x if device is None else x.to(device, non_blocking=True)).float().div_(255.0)


class LazyCorrupted(U8Images):
    """Clean uint8 images corrupted when read, each image with its own seeded generator
    (`tta_bench.data.generated`), rounded to uint8 levels like the published files.

    `raw(idx)` / `finish(x, idx)` let the harness corrupt a batch on the run device instead (CUDA runs); any
    batching, worker count or placement gives the same images on one device."""

    def __init__(self, clean: torch.Tensor, y: torch.Tensor, name: str, severity: int, seed: int) -> None:
        super().__init__(clean, y)
        self.name, self.severity, self.seed = name, severity, seed

    def finish(self, x: torch.Tensor, idx, device: torch.device | None = None) -> torch.Tensor:
        """Clean uint8 images `x` at positions `idx` -> corrupted float [0,1], on `device` (default `x`'s)."""
        x = x if device is None else x.to(device)
        return corrupt_images(x, idx, self.name, self.severity, self.seed, quantize=True)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.finish(self.raw([i]), [i])[0], int(self.y[i])


# --- clean test / train sets ------------------------------------------------------------------------------
@dataclass
class CleanSet:
    x: torch.Tensor  # (N,3,32,32) uint8, in stream order
    y: torch.Tensor  # (N,) int64
    layout: str  # "pickles" | "folder"
    path: Path
    train: U8Images | None = None  # the training set, when the pickles include it


def _pickle_images(path: Path, v: Variant) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = read_cifar_pickle(path, v.label_key)
    check_labels(np.asarray(y), v.num_classes, path)
    return torch.from_numpy(np.array(x, dtype=np.uint8)), torch.tensor(y, dtype=torch.int64)


@lru_cache(maxsize=2)
def _folder_images(root: Path, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    files, labels, classes = list_image_folder(root, what="CIFAR test ImageFolder")
    if len(classes) != n_classes:
        raise UserError(f"{root} has {len(classes)} class folders; a CIFAR test ImageFolder needs {n_classes}.")
    order = fixed_order(len(files), f"cifar-folder-{len(files)}")
    try:
        x = ImageFiles(files, labels, resize=None, crop=None).uint8(order)
    except UserError:  # an image that cannot be decoded (named)
        raise
    except ValueError:  # np.stack of differently sized images
        raise UserError(f"{root}: images of different sizes; CIFAR test images are all 32×32.") from None
    if x.shape[-2:] != (32, 32):
        raise UserError(f"{root}: images are {tuple(x.shape[-2:])}, CIFAR test images are 32×32.")
    return x, torch.from_numpy(labels[order])


def find_clean(v: Variant, candidates: list[Path], folders: bool = True) -> CleanSet | None:
    """The first clean test set found at/under `candidates`: torchvision pickles, or (`folders`) an ImageFolder."""
    for c in candidates:
        for d in (c / v.pickles, c):
            if (d / v.test_file).is_file():
                x, y = _pickle_images(d / v.test_file, v)
                train = None
                if all((d / t).is_file() for t in v.train_files):
                    parts = [_pickle_images(d / t, v) for t in v.train_files]
                    train = U8Images(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
                return CleanSet(x, y, "pickles", d, train)
        for d in (c / "test", c) if folders else ():
            if is_image_folder(d):
                x, y = _folder_images(d.resolve(), v.num_classes)
                return CleanSet(x, y, "folder", d)
    return None


# --- published files ----------------------------------------------------------------------------------------
def check_files(root: Path, v: Variant, domains: list[str]) -> np.ndarray:
    """Validate `<root>/{labels,<corruption>}.npy`; return the labels (50000,)."""
    lab = root / "labels.npy"
    if not lab.is_file():
        raise UserError(f"{root} has no labels.npy; the {v.folder} layout is {v.folder}/labels.npy + <corruption>.npy.")
    labels = load_npy(lab)
    if labels.ndim != 1 or len(labels) % 5 or not len(labels):
        raise UserError(f"{lab} has shape {labels.shape}; {v.folder}'s labels.npy is (50000,) (5 severities × 10,000).")
    check_labels(labels, v.num_classes, lab)
    for d in domains:
        f = root / f"{d}.npy"
        if not f.is_file():
            raise UserError(f"{v.folder} is incomplete: {f} is missing. Re-download {v.url} (or delete the folder).")
        a = load_npy(f)
        if a.shape != (len(labels), 32, 32, 3) or a.dtype != np.uint8:
            raise UserError(
                f"{f} has shape {a.shape} dtype {a.dtype}; {v.folder} files are uint8 (50000, 32, 32, 3) (NHWC, "
                "severities 1..5 concatenated)."
            )
    return np.asarray(labels)


def download(v: Variant, dest: Path) -> Path:
    """Download `v`'s tar into `dest`, check its MD5 (Zenodo's), extract; return `dest/<folder>`."""
    tar = kernel_download(
        v.url,
        dest / f"{v.folder}.tar",
        md5=v.md5,
        what=f"{v.folder} archive (not found at {dest / v.folder})",
        hint=(
            f"Then it is extracted into {dest}. Or point --set stream.clean_dir=PATH at a clean CIFAR test set "
            "(cifar-10-batches-py / cifar-100-python or an ImageFolder) to generate the corruptions on the fly."
        ),
    )
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    return dest / v.folder


def data_fingerprint(files_root: Path | None, domains: list[str], clean: CleanSet | None) -> str:
    """(name, size, mtime) of every file the stream reads: the published .npy files and the clean set's files."""
    parts = []
    if files_root is not None:
        npys = [files_root / "labels.npy", *(files_root / f"{d}.npy" for d in domains)]
        parts.append(fingerprint_files(npys, files_root))
    if clean is not None:
        root = Path(clean.path)
        files = root.rglob("*") if clean.layout == "folder" else root.iterdir()
        parts.append(clean.layout + ":" + fingerprint_files([p for p in files if p.is_file()], root))
    return hash_text("|".join(parts))


def stream_size(n_total: int, holdout: int) -> int:
    """Test images per domain the stream may show: all but the last `holdout` (the clean source split)."""
    if not 0 <= holdout < n_total:
        raise UserError(f"stream.holdout must be in [0, {n_total}) (the test images per severity), got {holdout}.")
    return n_total - holdout


# --- the stream ---------------------------------------------------------------------------------------------
def build(v: Variant, data_dir, seed: int, root, clean_dir, mode: str, holdout: int, clean_size: int, dl: bool):
    if mode not in ("auto", "files", "generated"):
        raise UserError(f"stream.mode must be auto, files or generated; got '{mode}'.")
    data_dir = Path(data_dir)
    domains = list(corruptions.BENCHMARK)
    files_root = Path(root).expanduser() if root else data_dir / v.folder
    if root and (files_root / v.folder).is_dir():
        files_root = files_root / v.folder
    have_files = (files_root / "labels.npy").exists()
    clean = None
    if clean_dir:
        clean = find_clean(v, [Path(clean_dir).expanduser()])
        if clean is None:
            raise UserError(
                f"stream.clean_dir={clean_dir}: no clean CIFAR test set there. Expected {v.pickles}/{v.test_file} "
                f"(torchvision layout) or an ImageFolder <dir>[/test]/<class>/<image> with {v.num_classes} classes."
            )
    elif mode == "generated" or (mode == "auto" and not have_files):
        clean = find_clean(v, [data_dir], folders=False)  # ImageFolders only when named by stream.clean_dir
    if mode == "files" or (mode == "auto" and clean is None):
        if not have_files:
            if not dl:  # the folder may exist (e.g. empty): name the file that is missing
                require(files_root / "labels.npy", v.folder, f"{v.folder}/<corruption>.npy + labels.npy", v.url)
            files_root = download(v, files_root.parent)
        source_kind = "files"
    elif clean is None:
        raise UserError(
            f"stream.mode=generated needs a clean CIFAR test set: put {v.pickles}/ under {data_dir} or point "
            "--set stream.clean_dir=PATH at one (torchvision pickles or an ImageFolder of test images)."
        )
    else:
        source_kind = "generated"
    if source_kind == "files":
        labels = check_files(files_root, v, domains)
        n_total = len(labels) // 5
        n_stream = stream_size(n_total, holdout)
        if clean is None or clean.layout != "pickles":  # held-out clean images: same test images, original order
            clean = find_clean(v, [files_root.parent, data_dir], folders=False)
            clean = clean if clean is not None and clean.layout == "pickles" else None

        def load(domain: str, severity: int | None, limit: int | None) -> U8Images:
            s, n = int(severity or 5), n_stream if limit is None else min(limit, n_stream)
            a = np.load(files_root / f"{domain}.npy", mmap_mode="r")[(s - 1) * n_total :][:n]
            x = torch.from_numpy(np.array(a)).permute(0, 3, 1, 2).contiguous()  # a copy (the file is mmapped)
            return U8Images(x, torch.from_numpy(labels[(s - 1) * n_total :][:n].astype(np.int64)))
    else:
        n_total = len(clean.y)
        n_stream = stream_size(n_total, holdout)
        cx, cy = clean.x[:n_stream], clean.y[:n_stream]

        def load(domain: str, severity: int | None, limit: int | None) -> U8Images:
            n = n_stream if limit is None else min(limit, n_stream)
            g_seed = segment_seed(seed, v.name, domain, severity)
            return LazyCorrupted(cx[:n], cy[:n], domain, int(severity or 5), g_seed)

    src = cln = None
    if clean is not None and holdout and len(clean.y) != n_total:
        clean = None  # held-out images must be the same test images as the files'
    if clean is not None and holdout:
        hx, hy = clean.x[n_stream:], clean.y[n_stream:]
        if clean.train is not None:  # the training set is the source: all held-out images may measure forgetting
            src, cln = clean.train, U8Images(hx[:clean_size], hy[:clean_size])
        else:  # disjoint: forgetting is never measured on images the source stage (warm-up, Fisher) trained on
            k = min(clean_size, len(hy) // 2)
            src, cln = U8Images(hx[k:], hy[k:]), U8Images(hx[:k], hy[:k])
    elif clean is not None and clean.train is not None:
        src = clean.train
    fp, split_name = None, None
    if src is not None:
        split_name = "train" if clean is not None and clean.train is src else "test-holdout"
        fp = hash_text(src.x[:2000].numpy().tobytes() + src.y.numpy().tobytes(), 12)
    return StreamSpec(
        name=v.name,
        domain_names=domains,
        load=load,
        num_classes=v.num_classes,
        data_fingerprint=data_fingerprint(files_root if source_kind == "files" else None, domains, clean),
        source_fingerprint=f"{v.name}-{fp}" if fp else None,
        source=src,
        clean=cln,
        info={
            "source": source_kind,
            "files": str(files_root) if source_kind == "files" else None,
            "clean_set": {"path": str(clean.path), "layout": clean.layout} if clean is not None else None,
            "holdout": holdout,
            "stream_size": n_stream,
            "source_split": split_name,
        },
    )


DEFAULTS = {"cifar10-c": "wrn28-10-cifar10", "cifar100-c": "resnext29-augmix-cifar100"}


def cifar_c(
    name: str,
    /,
    *,
    data_dir,
    seed: int = 0,
    root: str | None = None,
    clean_dir: str | None = None,
    mode: str = "auto",
    holdout: int = 1000,
    clean_size: int = 500,
    download: bool = True,
) -> StreamSpec:
    """CIFAR-10-C / CIFAR-100-C (`name`): published .npy files or generated from a clean test set."""
    return build(VARIANTS[name], data_dir, seed, root, clean_dir, mode, holdout, clean_size, download)


_DESCRIPTION = "{}: published .npy files (downloaded, MD5-checked) or generated from a clean test set"
CLEAN = CleanSplit(
    "the first stream.clean_size (500) of the last stream.holdout (1,000) clean test images, never streamed (the "
    "rest of them, or the training set when present, is the source split)",
    disjoint=True,
    reason="stream.holdout=0, or published .npy files without the clean test pickles beside them",
)
cifar10_c = register(
    "cifar10-c", DEFAULTS["cifar10-c"], _DESCRIPTION.format("CIFAR-10-C"), family="cifar10-c", clean=CLEAN
)(partial(cifar_c, "cifar10-c"))
cifar100_c = register(
    "cifar100-c", DEFAULTS["cifar100-c"], _DESCRIPTION.format("CIFAR-100-C"), family="cifar100-c", clean=CLEAN
)(partial(cifar_c, "cifar100-c"))
