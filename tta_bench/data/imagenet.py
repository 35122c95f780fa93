"""`imagenet-c`: ImageNet-C (Hendrycks & Dietterich, ICLR 2019) from its published folders, or generated
on the fly from an ImageNet validation folder with `corruptions/`.

Published layout (Zenodo record 2235448, "ImageNet-C"; no auto-download, ~65 GB):
`<root>/<corruption>/<severity>/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG`, 224×224 (already resized 256 and
centre-cropped). By default the stream shows RobustBench's fixed 5,000-image subset, in its order (the id
list shipped in the robustbench wheel, `helper_files/imagenet_test_image_ids.txt`); `--set
stream.samples=all` uses all 50,000 (in a fixed, seed-independent shuffled order).

Generated: from an ImageFolder by wnid (`<clean_dir>/<wnid>/*.JPEG`, e.g. the ImageNet validation set);
each image is resized (shorter side 256), centre-cropped to 224 and corrupted (seeded per image, so any
visiting order gives the same pixels). The subset ids are used when the folder holds them (the real val
set), otherwise all images in a fixed shuffled order. Class index = position of the wnid in sorted order.

Source split (prepare stages: EATA's Fisher, RMT's warm-up, EcoTTA's warm-up): ImageNet training images from
`--set stream.source_dir=PATH` (`<wnid>/*.JPEG`; `stream.source_size=N` a seeded subset), disjoint from the stream
and its clean split (`tta_bench.data.imagenet_source`); without it the stream has no source split.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from tta_bench import corruptions
from tta_bench.data.decode import EncodedFiles
from tta_bench.data.folders import (
    ImageFiles,
    fixed_order,
    imagenet_wnids,
    list_image_folder,
    robustbench_helper,
    wnid_index,
)
from tta_bench.data.generated import corrupt_images
from tta_bench.data.imagenet_source import missing_hint, source_split
from tta_bench.kernel import UserError, fingerprint_files, hash_text
from tta_bench.streams import CleanSplit, StreamSpec, register, segment_seed

LAYOUT = "<root>/<corruption>/<severity 1..5>/<wnid>/<image>.JPEG"
WHERE = "https://zenodo.org/records/2235448 (Hendrycks' ImageNet-C: blur, digital, noise, weather tars)"


def subset_ids() -> list[str]:
    """RobustBench's 5,000 ImageNet validation ids `<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG`, in its order."""
    return [s for s in robustbench_helper("imagenet_test_image_ids.txt").read_text().split() if s]


def wnid_label(name: str) -> int:
    idx = wnid_index()
    if name not in idx:
        raise UserError(f"Folder '{name}' is not an ImageNet wnid; expected class folders like n01440764.")
    return idx[name]


class CorruptedFiles(EncodedFiles):
    """Images resized 256 / cropped 224, each corrupted with its own seeded generator: `(x, y)` float [0,1].

    In the loader (CPU runs) Pillow decodes (`load_batch`); on CUDA runs the harness defers the batch: the files'
    bytes (`raw`) are decoded, cropped and corrupted on the device (`finish`, `tta_bench.data.decode` and
    `tta_bench.data.generated`). Image i gets the same generator, so the same pixels, on every path of a device."""

    def __init__(self, files, labels, name: str, severity: int, seed: int) -> None:
        super().__init__(files, labels, 256, 224)
        self.name, self.severity, self.seed = name, severity, seed

    def load_batch(self, idx) -> torch.Tensor:
        return corrupt_images(self.uint8(idx), idx, self.name, self.severity, self.seed, quantize=False)

    def finish(self, data, idx, device: torch.device | None = None) -> torch.Tensor:
        x = super().finish(data, idx, device)  # decoded + eval transform on the device, float [0,1]
        return corrupt_images(x, idx, self.name, self.severity, self.seed, quantize=False)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.load_batch([i])[0], int(self.targets[i])


def _clean_files(clean: Path, samples: str | None) -> tuple[list[Path], np.ndarray, list[Path], str]:
    """(stream files, labels, remaining files for the clean sample, which images) from a wnid ImageFolder."""
    files, labels, _ = list_image_folder(clean, label_of=wnid_label, what="ImageNet validation ImageFolder")
    by_id = {f"{f.parent.name}/{f.name}": (f, y) for f, y in zip(files, labels)}
    ids = subset_ids()
    if samples != "all" and all(i in by_id for i in ids):
        chosen = set(ids)
        rest = [f for k, (f, _) in by_id.items() if k not in chosen]
        return [by_id[i][0] for i in ids], np.asarray([by_id[i][1] for i in ids]), rest, "robustbench-5000"
    order = fixed_order(len(files), f"imagenet-folder-{len(files)}")
    return [files[i] for i in order], labels[order], [], f"all-{len(files)}"


@register(
    "imagenet-c",
    default_model="resnet50",
    family="imagenet-c",
    clean=CleanSplit(
        "generated: stream.clean_size (500) images of stream.clean_dir that the stream does not show (the source "
        "split, for prepare stages, is ImageNet training images from stream.source_dir, disjoint from both)",
        disjoint=True,
        reason="reading the published ImageNet-C folders (no clean images), or every clean_dir image is streamed",
    ),
    source_option="source_dir",
)
def imagenet_c(
    *,
    data_dir,
    seed: int = 0,
    root: str | None = None,
    clean_dir: str | None = None,
    mode: str = "auto",
    samples: str | None = None,
    clean_size: int = 500,
    source_dir: str | None = None,
    source_size: int | str | None = None,
) -> StreamSpec:
    """ImageNet-C: published folders (5,000-image subset or all) or generated from an ImageNet val folder.

    Source split: ImageNet training images from `source_dir` (`source_size`: all, or a seeded subset of N)."""
    if samples not in (None, "all", "5000", 5000):
        raise UserError(f"stream.samples must be 5000 (RobustBench's subset; default) or all, got {samples!r}.")
    samples = "all" if samples == "all" else None
    if mode not in ("auto", "files", "generated"):
        raise UserError(f"stream.mode must be auto, files or generated; got '{mode}'.")
    data_dir = Path(data_dir)
    files_root = Path(root).expanduser() if root else data_dir / "ImageNet-C"
    clean = Path(clean_dir).expanduser() if clean_dir else data_dir / "imagenet" / "val"
    domains = list(corruptions.BENCHMARK)
    use_files = mode == "files" or (mode == "auto" and not clean_dir and files_root.is_dir())
    if use_files and not files_root.is_dir():
        raise UserError(
            f"ImageNet-C not found at {files_root}. Expected layout: {LAYOUT}. It is not downloaded automatically: "
            f"get it from {WHERE}, or point --set stream.root=PATH at it; or generate it on the fly from an ImageNet "
            "validation folder with --set stream.clean_dir=PATH (<wnid>/*.JPEG)."
        )
    if not use_files and not clean.is_dir():
        raise UserError(
            f"No ImageNet-C at {files_root} and no clean ImageNet validation folder at {clean}. Get ImageNet-C from "
            f"{WHERE} ({LAYOUT}; --set stream.root=PATH), or point --set stream.clean_dir=PATH at an ImageFolder "
            "by wnid (<wnid>/*.JPEG) to generate the corruptions on the fly."
        )
    info: dict = {"source": "files" if use_files else "generated"}
    spec_clean = None
    if use_files:
        index = _index_files(files_root, samples)
        info.update(files=str(files_root), samples=len(index[0]), data_fingerprint=_folders_fingerprint(files_root))
        shown = index[0]

        def load(domain: str, severity: int | None, limit: int | None) -> EncodedFiles:
            rel, labels = index
            d = files_root / domain / str(severity)
            if not d.is_dir():
                raise UserError(f"ImageNet-C is incomplete: {d} is missing (layout {LAYOUT}).")
            paths = [d / r for r in rel[:limit]]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise UserError(
                    f"ImageNet-C is incomplete: {len(missing)} of {len(paths)} images missing under {d}, e.g. "
                    f"{missing[0]}. Re-extract the tars from {WHERE} (layout {LAYOUT})."
                )
            return EncodedFiles(paths, labels[: len(paths)], 256, 224)  # decoded on the device on CUDA runs
    else:
        files, labels, rest, which = _clean_files(clean, samples)
        info.update(clean_dir=str(clean), samples=which, stream_size=len(files))
        info["data_fingerprint"] = fingerprint_files([*files, *rest], clean)  # every image it may read
        shown = [f"{f.parent.name}/{f.name}" for f in (*files, *rest)]
        if rest:
            pick = fixed_order(len(rest), "imagenet-clean")[:clean_size]
            spec_clean = ImageFiles([rest[i] for i in pick], [wnid_label(rest[i].parent.name) for i in pick])

        def load(domain: str, severity: int | None, limit: int | None) -> CorruptedFiles:
            s = segment_seed(seed, "imagenet-c", domain, severity)
            return CorruptedFiles(files[:limit], labels[:limit], domain, int(severity or 5), s)

    source = with_source(info, source_dir, source_size, seed, shown, "imagenet-c", no_val=True)
    return StreamSpec(
        name="imagenet-c",
        domain_names=domains,
        load=load,
        num_classes=1000,
        data_fingerprint=info.pop("data_fingerprint", None),  # set above (and extended by with_source)
        source_fingerprint=info.pop("source_fingerprint", None),  # with_source's, when stream.source_dir is set
        source=source,
        clean=spec_clean,
        class_names=list(imagenet_wnids()),
        info=info,
        source_hint=missing_hint("imagenet-c"),
    )


def with_source(
    info: dict, source_dir: str | None, size, seed: int, shown, stream: str, no_val: bool = False
) -> ImageFiles | None:
    """The source split of `source_dir` (None when it is not set); its facts and fingerprint go into `info`, the
    latter into the data fingerprint (so the run id), which stays as before when no source split is set."""
    if not source_dir:
        return None
    source, facts = source_split(source_dir, size, seed, shown, stream, no_val)
    info["source_split"] = facts
    info["source_fingerprint"] = f"imagenet-train-{facts['fingerprint']}"
    info["data_fingerprint"] = hash_text(f"{info.get('data_fingerprint')}|{info['source_fingerprint']}", 16)
    return source


def _folders_fingerprint(root: Path) -> str:
    """Hash of every `<corruption>/<severity>/<wnid>` folder's name, mtime and entry count (75,000 stats, not the
    3.75 million files): replacing, adding or removing images (re-extracting a tar, regenerating a domain) changes
    it; an image rewritten in place without touching its folder does not (documented limitation)."""
    h = hashlib.sha256()
    for level in sorted(p for p in root.glob("*/[1-5]") if p.is_dir()):
        with os.scandir(level) as it:
            for e in sorted(it, key=lambda e: e.name):
                if e.is_dir():
                    st = e.stat()
                    h.update(f"{level.parent.name}/{level.name}/{e.name}\0{st.st_mtime_ns}\0{st.st_nlink}\n".encode())
    return h.hexdigest()[:16]


def _index_files(root: Path, samples: str | None) -> tuple[list[str], np.ndarray]:
    """Relative paths `<wnid>/<file>` streamed from every `<root>/<corruption>/<severity>` and their labels."""
    if samples != "all":
        ids = subset_ids()
        return ids, np.asarray([wnid_label(i.split("/")[0]) for i in ids], dtype=np.int64)
    # every <corruption>/<severity> folder holds the same 50,000 file names; index the first one present
    refs = [p for p in [root / corruptions.BENCHMARK[0] / "1", *sorted(root.glob("*/[1-5]"))] if p.is_dir()]
    if not refs:
        raise UserError(f"{root} does not look like ImageNet-C: no <corruption>/<severity> folders (layout {LAYOUT}).")
    ref = refs[0]
    files, labels, _ = list_image_folder(ref, label_of=wnid_label, what="ImageNet-C")
    order = fixed_order(len(files), f"imagenet-c-{len(files)}")
    return [f"{files[i].parent.name}/{files[i].name}" for i in order], labels[order]
