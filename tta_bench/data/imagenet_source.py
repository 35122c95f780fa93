"""The ImageNet source split: clean ImageNet training images for prepare stages (EATA's Fisher, RMT's warm-up and
prototypes, EcoTTA's warm-up), read from `--set stream.source_dir=PATH` by `imagenet-c` and the natural-shift
ImageNet streams.

Layout: the standard ImageNet training ImageFolder by wnid, `<source_dir>/<wnid>/*.JPEG` (a folder holding
`train/<wnid>/` is accepted too). Every class folder must be one of the 1,000 ImageNet wnids; a subset of them is
fine (labels are the wnids' positions in sorted order, the same map as the stream's). As the peer suite
(mariodoebler/test-time-adaptation@8b2ed63, `get_source_loader(train_split=True)`): all training images by default
(`SOURCE.NUM_SAMPLES -1`, `SOURCE.PERCENTAGE 1.0`); `stream.source_size=N` draws N of them at random, seeded by the
run seed (their `random.sample`); each method takes what it needs from the run's shuffled source loader (EATA its
`fisher_size` 2,000, the peer's `SOURCE.NUM_SAMPLES 2000`; RMT `max_proto_samples`, `num_samples_warm_up` 50,000).
Transform: the standard ImageNet eval transform (shorter side 256, bilinear; centre crop 224), as the peer's
`get_transform` gives the ImageNet source loader (the model's preprocess, or Resize(256)/CenterCrop(224)): no
train-time augmentation.

The split must not share an image (`<wnid>/<file name>`) with the images the stream shows or its clean split:
pointing it at the validation folder is a UserError. Fingerprint (it enters the run id through the stream's data
fingerprint): relative names and sizes of every listed image (the full training set: 1.28 million stats, no reads),
plus the contents of the chosen images when `stream.source_size` draws a subset.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tta_bench.data.folders import ImageFiles, is_image_folder, list_image_folder, wnid_index
from tta_bench.kernel import UserError, fingerprint_files, hash_text
from tta_bench.streams import segment_seed

LAYOUT = "<source_dir>/<wnid>/*.JPEG (the ImageNet training set, e.g. ILSVRC2012 train/n01440764/*.JPEG)"


def missing_hint(stream: str) -> str:
    """How to give stream `stream` a source split (the runner's error when a method needs one)."""
    return (
        f"Point --set stream.source_dir=PATH at ImageNet training images, an ImageFolder by wnid: {LAYOUT}; "
        f"--set stream.source_size=N draws N of them (seeded; default all). Or choose a method without a prepare "
        f"stage (e.g. eta instead of eata), or a stream with a source split (e.g. digits-c)."
    )


def _label_of(root: Path):
    def label_of(name: str) -> int:
        if name not in wnid_index():
            raise UserError(
                f"stream.source_dir: class folder '{name}' in {root} is not an ImageNet wnid. The source split is "
                f"ImageNet training images in the standard layout {LAYOUT}, with folders named by the 1,000 ImageNet "
                "wnids (n01440764 ... n15075141); move other folders out, or point stream.source_dir at the train "
                "folder."
            )
        return wnid_index()[name]

    return label_of


def find_root(source_dir: str) -> Path:
    """The wnid ImageFolder that `stream.source_dir` names (or its `train/` sub-folder)."""
    root = Path(source_dir).expanduser()
    if not root.is_dir():
        raise UserError(
            f"stream.source_dir {root} is not a folder. Point it at ImageNet training images, an ImageFolder by "
            f"wnid: {LAYOUT}."
        )
    if not is_image_folder(root) and is_image_folder(root / "train"):
        return root / "train"
    return root


def source_split(
    source_dir: str, size: int | str | None, seed: int, shown: Iterable[str], stream: str, no_val: bool = False
) -> tuple[ImageFiles, dict[str, Any]]:
    """(source dataset, info) from `stream.source_dir`; `shown` are the `<wnid>/<file>` keys of every image the
    stream may show or hold out as its clean split (none may be in the source split); `no_val`: no ImageNet
    validation image (`ILSVRC2012_val_*`) either (ImageNet-C is made of them)."""
    if size in (None, "all"):
        size = None
    elif isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UserError(
            f"stream.source_size must be a whole number of source images >= 1, or all (the default), got {size!r}."
        )
    root = find_root(source_dir)
    files, labels, classes, keys, listing = _listing(root)
    val = next((k for k in keys if k.split("/")[1].startswith("ILSVRC2012_val_")), None) if no_val else None
    if val is not None:
        raise UserError(
            f"stream.source_dir {root} holds ImageNet validation images (e.g. {val}), from which ImageNet-C and the "
            f"stream's clean split are made: the source split must be disjoint from them. Point stream.source_dir at "
            f"the ImageNet training images ({LAYOUT})."
        )
    shared = set(keys).intersection(shown)
    if shared:
        raise UserError(
            f"stream.source_dir {root} holds {len(shared)} image(s) that {stream} shows or holds out as its clean "
            f"split, e.g. {sorted(shared)[0]}: the source split must be disjoint from them. Point stream.source_dir "
            f"at the ImageNet training images ({LAYOUT}), not at the validation folder."
        )
    pick = np.arange(len(files))
    if size is not None and size < len(files):
        rng = np.random.default_rng(segment_seed(seed, "imagenet-source", size))
        pick = np.sort(rng.choice(len(files), size, replace=False))
    chosen = [files[i] for i in pick]
    content = fingerprint_files(chosen, root) if size is not None else "listing"
    fp = hash_text(f"{listing}|{content}", 16)
    info = {
        "root": str(root),
        "images": len(chosen),
        "listed": len(files),
        "classes": len(classes),
        "size_option": "all" if size is None else size,
        "transform": "eval: shorter side 256 (bilinear), centre crop 224",
        "fingerprint": fp,
    }
    return ImageFiles(chosen, labels[pick]), info


_LISTED: dict[tuple, tuple] = {}  # (folder, mtimes of it and its class folders) -> its listing; the last few


def _listing(root: Path) -> tuple[list[Path], np.ndarray, list[str], list[str], str]:
    """(files, labels, class folders, `<wnid>/<file>` keys, digest of the keys and file sizes) of the source folder.

    The names are listed again only when the folder's or a class folder's mtime changed (a file added, removed or
    renamed in): a process that opens the stream many times (`reproduce`, a sweep: run ids) lists the 1.28 million
    training files once. The sizes are read every time (about 3 s for the full training set)."""
    with os.scandir(root) as it:
        stamp = tuple(sorted((e.name, e.stat().st_mtime_ns) for e in it if e.is_dir()))
    key = (str(root.resolve()), root.stat().st_mtime_ns, stamp)
    if key not in _LISTED:
        what = "stream.source_dir (ImageNet train)"
        files, labels, classes = list_image_folder(root, label_of=_label_of(root), what=what)
        while len(_LISTED) >= 4:
            _LISTED.pop(next(iter(_LISTED)))
        _LISTED[key] = (files, labels, classes, [f"{f.parent.name}/{f.name}" for f in files])
    files, labels, classes, keys = _LISTED[key]
    h = hashlib.sha256()
    for k, f in zip(keys, files):
        h.update(f"{k}\0{os.stat(f).st_size}\n".encode())
    return files, labels, classes, keys, h.hexdigest()
