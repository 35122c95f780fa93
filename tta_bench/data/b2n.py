"""Base-to-new and domain-shift streams for CLIP prompt learners (CoCoOp / OGEN protocols).

Base-to-new (`<dataset>-b2n`): the classes are split in half by index (CoOp's `subsample_classes`: the first
ceil(C/2) are *base*, the rest *new*). `source` holds `shots` (16) training images per base class, drawn
with the run seed (the prepare stage's few-shot data); the stream has two domains, `base` and `new`, the
test images of those classes, each scored over its own classes only (`class_subsets`). summary.json gets
`base_acc`, `new_acc` and their `harmonic_mean` (%). The models see all class names.

- `digits-b2n`: the embedded sklearn digits (tta_bench/data/digits.py; names "zero".."nine"): shots from
  its source split, test images from its target split. No download.
- `cifar100-b2n`: `<data_dir>/cifar-100-python/{train,test,meta}` (torchvision's pickles; class names from
  `meta`).
- `imagenet-b2n`: `<data_dir>/imagenet/{train,val}/<wnid>/*.JPEG` (ImageFolder by wnid; names: CLIP's
  ImageNet class names when there are 1,000 wnids, else the folder names).
- `folder-b2n`: any ImageFolder dataset, `--set stream.root=PATH` with `PATH/train/<class>/` and
  `PATH/test/<class>/` (or `val/`); class names are the folder names (underscores read as spaces).

Domain shift (`imagenet-ds`): prepare on `shots` (16) images per class of `<data_dir>/imagenet/train/<wnid>/`
(labels in the 1,000-class ImageNet space), then stream ImageNet val (`imagenet/val/<wnid>/`) and the natural
shifts through the `imagenet-v2`, `imagenet-sketch`, `imagenet-a`, `imagenet-r` streams' own loaders
(tta_bench/data/natural.py: their layouts under `<data_dir>`, ImageNet-A/R scored over their 200 classes).
Summary: `source_acc` (ImageNet) and `target_acc` (mean over the shifts). `--set stream.domains=...` picks
a subset. Images from files are resized (shorter side, bicubic) and centre-cropped to `image_size`; the
natural-shift loaders use their own 256/224 resize-crop.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tta_bench.data import natural  # noqa: F401  (registers the natural-shift streams imagenet-ds reuses)
from tta_bench.data.digits import CLASS_NAMES as DIGIT_NAMES
from tta_bench.data.digits import digits_32, split
from tta_bench.data.folders import check_labels, fixed_order, image_errors, list_image_folder, rgb_image, wnid_index
from tta_bench.kernel import UserError, read_cifar_names, read_cifar_pickle
from tta_bench.streams import STREAMS, CleanSplit, StreamSpec, register

DS_DOMAINS = ("imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")


# --- bookkeeping -----------------------------------------------------------------------------------------
def base_new(num_classes: int) -> tuple[list[int], list[int]]:
    """Base = the first ceil(C/2) class ids, new = the rest."""
    m = math.ceil(num_classes / 2)
    return list(range(m)), list(range(m, num_classes))


def few_shot(labels: np.ndarray, classes: Sequence[int], shots: int, seed: int) -> np.ndarray:
    """`shots` indices per class of `classes` (all when a class has fewer), drawn with `seed`; sorted."""
    rng = np.random.default_rng(seed)
    out = [
        rng.choice(np.flatnonzero(labels == c), min(shots, int((labels == c).sum())), replace=False) for c in classes
    ]
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def b2n_summary(errors: dict[str, float]) -> dict[str, float]:
    """Base / new accuracy (%) and their harmonic mean from the domain errors."""
    b, n = 100.0 - errors["base"], 100.0 - errors["new"]
    return {"base_acc": b, "new_acc": n, "harmonic_mean": 2 * b * n / (b + n) if b + n > 0 else 0.0}


def ds_summary(errors: dict[str, float]) -> dict[str, float]:
    shifted = [100.0 - e for d, e in errors.items() if d != "imagenet"]
    out = {"target_acc": float(np.mean(shifted))} if shifted else {}
    return {**({"source_acc": 100.0 - errors["imagenet"]} if "imagenet" in errors else {}), **out}


# --- datasets --------------------------------------------------------------------------------------------
class Images(Dataset):
    """(x, y) from uint8 (N,H,W,3) arrays or image files (resized shorter side + centre crop to `size`)."""

    def __init__(self, items: np.ndarray | list[Path], labels: np.ndarray, size: int | None = None) -> None:
        self.items, self.targets, self.size = items, np.asarray(labels, dtype=np.int64), size

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, idx: np.ndarray) -> Images:
        items = self.items[idx] if isinstance(self.items, np.ndarray) else [self.items[i] for i in idx]
        return Images(items, self.targets[idx], self.size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item = self.items[i]
        if isinstance(item, np.ndarray):
            a = item
        else:
            with image_errors(item), Image.open(item) as im:
                im = rgb_image(im, item)
                if self.size:
                    s = self.size / min(im.size)
                    w, h = max(self.size, round(im.size[0] * s)), max(self.size, round(im.size[1] * s))
                    im = im.resize((w, h), Image.BICUBIC)
                    left, top = (w - self.size) // 2, (h - self.size) // 2
                    im = im.crop((left, top, left + self.size, top + self.size))
                a = np.asarray(im, dtype=np.uint8)
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0), int(self.targets[i])


def image_folder(root: Path, label_of: Callable[[str], int | None] | None = None) -> tuple[list[Path], np.ndarray]:
    """Files and labels of `root/<class>/<image>` (`folders.list_image_folder`, class folders in string order)."""
    files, labels, _ = list_image_folder(root, label_of, what=f"ImageFolder {root}", natural=False)
    return files, labels


def need(path: Path, what: str, layout: str, where: str) -> Path:
    if not path.exists():
        raise UserError(
            f"{what} not found at {path}. Expected layout: {layout}. Get it from {where} and put it there, or "
            f"point at it with --set stream.root=PATH (or --data-dir)."
        )
    return path


# --- the streams -----------------------------------------------------------------------------------------
def b2n_spec(name: str, train: Images, test: Images, names: list[str], seed: int, shots: int, info: dict) -> StreamSpec:
    """A base-to-new StreamSpec from full train/test sets over all classes."""
    base, new = base_new(len(names))
    src = few_shot(train.targets, base, shots, seed)
    rng = np.random.default_rng(0)  # a fixed (seed-free) order, so the first `limit` images mix the classes
    parts = {d: rng.permutation(np.flatnonzero(np.isin(test.targets, c))) for d, c in (("base", base), ("new", new))}

    def load(domain: str, severity: int | None, limit: int | None) -> Images:
        return test.subset(parts[domain][:limit])

    # (None first: the form these fingerprints always had, so cached prompts and run ids stay valid)
    fp = hashlib.sha256(repr((None, src.tolist())).encode()).hexdigest()[:12]
    return StreamSpec(
        name=name,
        domain_names=["base", "new"],
        load=load,
        num_classes=len(names),
        data_fingerprint=None,
        source_fingerprint=f"{name}-{fp}",
        source=train.subset(src),
        severities=None,
        class_names=names,
        info={
            **info,
            "base": base,
            "new": new,
            "shots": shots,
            "n_source": len(src),
            "n_test": {k: len(v) for k, v in parts.items()},
        },
        class_subsets={"base": base, "new": new},
        summarize=b2n_summary,
    )


# CLIP streams take the ImageNet settings (imagenet-c family): the CLIP test-time methods (TPT, TDA, VTE) publish
# ImageNet configs only, and a CLIP ViT is closer to ImageNet models than to CIFAR's small CNNs.
B2N_CLEAN = CleanSplit(
    None, reason="base-to-new prompt learning: the stream is inference only, forgetting does not apply"
)


@register("digits-b2n", default_model="clip-tiny", family="imagenet-c", clean=B2N_CLEAN)
def digits_b2n(*, data_dir=None, seed: int = 0, shots: int = 16) -> StreamSpec:
    """Embedded digits, base (zero..four) to new (five..nine); shots from the source split. No download."""
    x, y = digits_32()
    parts = split()
    u8 = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    train = Images(u8[parts["source"]], y[parts["source"]].numpy())
    test = Images(u8[parts["target"]], y[parts["target"]].numpy())
    spec = b2n_spec("digits-b2n", train, test, list(DIGIT_NAMES), seed, shots, {"source": "generated"})
    return spec


@register("cifar100-b2n", default_model="clip-vit-b16", family="imagenet-c", clean=B2N_CLEAN)
def cifar100_b2n(*, data_dir=None, seed: int = 0, shots: int = 16, root: str | None = None) -> StreamSpec:
    """CIFAR-100 base (50) to new (50) classes, torchvision's cifar-100-python pickles."""
    d = need(
        Path(root) if root else Path(data_dir) / "cifar-100-python",
        "CIFAR-100",
        "cifar-100-python/{train,test,meta} (python pickles)",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
    )
    sets = {}
    for part in ("train", "test"):
        f = need(d / part, "CIFAR-100", "cifar-100-python/{train,test,meta}", "the CIFAR site")
        x, y = read_cifar_pickle(f, b"fine_labels")
        check_labels(np.asarray(y), 100, f)
        sets[part] = Images(x.transpose(0, 2, 3, 1), np.asarray(y))
    names = [n.replace("_", " ") for n in read_cifar_names(d / "meta")]
    return b2n_spec(
        "cifar100-b2n", sets["train"], sets["test"], names, seed, shots, {"source": "files", "root": str(d)}
    )


def _folder_b2n(name: str, root: Path, seed: int, shots: int, size: int, names: list[str] | None) -> StreamSpec:
    need(root / "train", name, "ROOT/train/<class>/*.jpg and ROOT/test/<class>/*.jpg (or val/)", "the dataset's site")
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    need(test_dir, name, "ROOT/train/<class>/ and ROOT/test/<class>/ (or val/)", "the dataset's site")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    names = names if names and len(names) == len(classes) else [c.replace("_", " ") for c in classes]
    train, test = (Images(*image_folder(r, index.get), size) for r in (root / "train", test_dir))
    return b2n_spec(name, train, test, names, seed, shots, {"source": "files", "root": str(root)})


@register("folder-b2n", default_model="clip-vit-b16", family="imagenet-c", clean=B2N_CLEAN)
def folder_b2n(*, data_dir=None, seed: int = 0, shots: int = 16, root: str | None = None, image_size: int = 224):
    """Any ImageFolder dataset (stream.root=PATH with train/ and test/ or val/), base to new classes."""
    if not root:
        raise UserError("folder-b2n needs --set stream.root=PATH (PATH/train/<class>/, PATH/test/<class>/).")
    return _folder_b2n("folder-b2n", Path(root), seed, shots, image_size, None)


def imagenet_names() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


@register("imagenet-b2n", default_model="clip-vit-b16", family="imagenet-c", clean=B2N_CLEAN)
def imagenet_b2n(*, data_dir=None, seed: int = 0, shots: int = 16, root: str | None = None, image_size: int = 224):
    """ImageNet base (500) to new (500) classes; <data_dir>/imagenet/{train,val}/<wnid>/."""
    r = Path(root) if root else Path(data_dir) / "imagenet"
    return _folder_b2n("imagenet-b2n", r, seed, shots, image_size, imagenet_names())


@register("imagenet-ds", default_model="clip-vit-b16", family="imagenet-c", clean=B2N_CLEAN)
def imagenet_ds(
    *,
    data_dir=None,
    seed: int = 0,
    shots: int = 16,
    root: str | None = None,
    image_size: int = 224,
    domains: str = ",".join(DS_DOMAINS),
) -> StreamSpec:
    """Domain shift: prepare on 16-shot ImageNet, stream ImageNet val, -V2, -Sketch, -A, -R."""
    inet = Path(root) if root else Path(data_dir) / "imagenet"
    layout, where = "imagenet/{train,val}/<wnid>/*.JPEG", "https://image-net.org (ILSVRC2012)"
    train = Images(*image_folder(need(inet / "train", "ImageNet train", layout, where), wnid_index().get), image_size)
    src = few_shot(train.targets, np.unique(train.targets).tolist(), shots, seed)
    loads: dict[str, Callable] = {}
    subsets: dict[str, list[int]] = {}
    for d in domains.split(","):
        if d == "imagenet":
            val = Images(*image_folder(need(inet / "val", "ImageNet val", layout, where), wnid_index().get), image_size)
            order = fixed_order(len(val), f"imagenet-ds-val-{len(val)}")
            loads[d] = lambda dom, sev, limit, val=val, order=order: val.subset(order[:limit])
        elif d in DS_DOMAINS:  # the natural-shift streams' own loaders (tta_bench/data/natural.py)
            shift = STREAMS.get(d).factory(data_dir=data_dir, seed=seed)
            loads[d] = shift.load
            subsets.update(shift.class_subsets)
        else:
            raise UserError(
                f"imagenet-ds: unknown domain '{d}' in stream.domains; choose from {', '.join(DS_DOMAINS)}."
            )
    fp = hashlib.sha256(np.asarray(train.targets[src]).tobytes() + repr(src.tolist()).encode()).hexdigest()[:12]
    return StreamSpec(
        name="imagenet-ds",
        domain_names=list(loads),
        load=lambda domain, severity, limit: loads[domain](domain, severity, limit),
        num_classes=1000,
        data_fingerprint=None,
        source_fingerprint=f"imagenet-ds-{fp}",
        source=train.subset(src),
        severities=None,
        class_names=imagenet_names(),
        class_subsets=subsets,
        summarize=ds_summary,
        info={
            "source": "files",
            "root": str(inet),
            "shots": shots,
            "n_source": len(src),
        },
    )
