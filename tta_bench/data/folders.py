"""Shared on-disk layout helpers: ImageFolder listings, image decoding, checks with actionable errors.

An ImageFolder is `<root>/<class>/<image>` (class folders sorted by name give the labels, unless a
`label_of(folder name)` mapping is given, e.g. ImageNet wnids -> class index). Listing order is fixed
(sorted class folders, sorted file names); streams that show "the first N" of a class-sorted folder
apply `fixed_order` (a permutation independent of the run seed), so the first N mix all classes.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tta_bench.corruptions.images import rgb_image
from tta_bench.kernel import UserError

IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def require(path: Path, what: str, layout: str, where: str, option: str = "stream.root") -> Path:
    """`path` if it exists, else a UserError stating the expected layout, where to get it, how to point at it."""
    if not Path(path).exists():
        raise UserError(
            f"{what} not found at {path}. Expected layout: {layout}. Get it from {where}, then put it there "
            f"or point at it with --set {option}=PATH (or --data-dir)."
        )
    return Path(path)


def is_image_folder(root: Path) -> bool:
    """True when `root` holds class sub-folders that contain image files (a name that is not UTF-8 or a symlink
    loop among them is a UserError naming it: `folder_entries`)."""
    root = Path(root)
    if not root.is_dir():
        return False
    for d in sorted(p for p in folder_entries(root, "ImageFolder") if p.is_dir()):
        if any(f.suffix.lower() in IMG_EXTS for f in folder_entries(d, "ImageFolder")):
            return True
    return False


def folder_entries(folder: Path, what: str) -> list[Path]:
    """The entries of `folder` (one level, not followed further), each checked: a name that is not valid UTF-8 (it
    could not be recorded in config.json or hashed into the run id), a symbolic link that loops, or an image-named
    link that leads nowhere is a UserError naming the entry, `what` (e.g. "ccc clean ImageFolder") and the fix."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError as e:
        raise UserError(
            f"{what}: cannot list {_shown(folder)} ({e.strerror}). Pass a folder this user can read."
        ) from None
    for p in entries:
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(
                f"{what}: {_shown(p)} has a name that is not valid UTF-8 (shown escaped), which the run's records "
                "cannot hold. Rename it in UTF-8 (e.g. `convmv -f latin1 -t utf8 -r --notest FOLDER`) or move it out."
            ) from None
        if p.is_symlink():
            try:
                p.stat()
            except OSError as e:
                if e.errno == errno.ELOOP or p.suffix.lower() in IMG_EXTS:
                    why = "a symbolic link that loops" if e.errno == errno.ELOOP else "a symbolic link to nothing"
                    raise UserError(
                        f"{what}: {_shown(p)} is {why} ({e.strerror}). Fix or remove the link, or move it out of "
                        f"{_shown(folder)}."
                    ) from None
    return entries


def _shown(path: Path) -> str:
    """`path` for a message, undecodable bytes escaped (\\xff)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def list_image_folder(
    root: Path, label_of: Callable[[str], int | None] | None = None, what: str = "ImageFolder", natural: bool = True
) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, labels, class folder names) of an ImageFolder, sorted by class folder then file name.

    Without `label_of`, labels are positions of the folder names in sorted order (numeric names, e.g.
    ImageNetV2's `0..999`, sort numerically; `natural=False`: plain string order). `label_of(name)` may return
    None to skip a folder. The one image-folder lister of the suite's streams.
    """
    root = Path(root)
    key = _natural if natural else None
    entries = folder_entries(root, what) if root.is_dir() else []
    classes = sorted((p.name for p in entries if p.is_dir()), key=key)
    if not classes:
        raise UserError(f"{what}: {root} has no class sub-folders; expected {root}/<class>/<image>.jpg.")
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        y = i if label_of is None else label_of(c)
        if y is None:
            continue
        imgs = sorted(f for f in folder_entries(root / c, what) if f.suffix.lower() in IMG_EXTS)
        files += imgs
        labels += [y] * len(imgs)
    if not files:
        raise UserError(f"{what}: no images (*.jpg, *.jpeg, *.png) in the class folders of {root}.")
    return files, np.asarray(labels, dtype=np.int64), classes


def _natural(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def fixed_order(n: int, tag: str) -> np.ndarray:
    """A permutation of range(n) fixed by `tag` (never by the run seed): the stream order of a folder."""
    seed = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).permutation(n)


def resize_crop(img: Image.Image, resize: int = 256, crop: int = 224) -> Image.Image:
    """Shorter side -> `resize` (bilinear), then a centred `crop`×`crop` (the standard ImageNet eval transform)."""
    w, h = img.size
    s = resize / min(w, h)
    nw, nh = max(crop, round(w * s)), max(crop, round(h * s))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - crop) // 2, (nh - crop) // 2
    return img.crop((left, top, left + crop, top + crop))


def read_u8(path: Path, resize: int | None = None, crop: int | None = None) -> np.ndarray:
    """Decode an image file to (H,W,3) uint8 RGB (`rgb_image`); with `crop`, resize+centre-crop unless already
    crop×crop."""
    with image_errors(path), Image.open(path) as im:
        im = rgb_image(im, path)
        if crop is not None and im.size != (crop, crop):
            im = resize_crop(im, resize or crop, crop)
        return np.array(im, dtype=np.uint8)  # a writable copy


def image_array(path: Path, mode: str | None = "RGB") -> np.ndarray:
    """Decode an image file to an array (`mode` None keeps the stored mode, e.g. a label map's palette ids; "RGB" is
    `rgb_image`'s conversion)."""
    with image_errors(path), Image.open(path) as im:
        if mode == "RGB":
            return np.array(rgb_image(im, path), dtype=np.uint8)
        return np.array(im.convert(mode) if mode else im)


@contextmanager
def image_errors(path: Path) -> Iterator[None]:
    """A truncated, damaged or non-image file read inside this block is a UserError naming it (Pillow's own
    errors name no file, or only a temporary one)."""
    try:
        yield
    except UserError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, OSError) and not isinstance(e, Image.UnidentifiedImageError) and e.errno is not None:
            raise  # a real I/O error (permissions, missing file): the CLI reports it with its path
        raise UserError(
            f"Cannot decode the image {path} ({type(e).__name__}: {e}); it is truncated, damaged or not an image. "
            "Replace it with the original file (or delete it)."
        ) from None


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """A `.npy` array (memory-mapped by default), never unpickling objects; a truncated, damaged or non-NumPy
    file is a UserError naming it."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise UserError(
            f"Cannot read {path} as a NumPy .npy array ({e}); it is truncated, damaged or not a .npy file. "
            "Replace it with the original download."
        ) from None


def check_labels(labels: np.ndarray, num_classes: int, where: Path | str) -> None:
    """UserError unless `labels` are integer class ids in 0..num_classes-1 (a float or out-of-range label would
    be scored silently against the wrong class)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" and labels.dtype != bool:
        raise UserError(
            f"{where}: labels have dtype {labels.dtype}; class labels must be integer ids 0..{num_classes - 1}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(
            f"{where}: labels range over {labels.min()}..{labels.max()}, but this dataset has {num_classes} classes "
            f"(ids 0..{num_classes - 1}); the file belongs to another dataset or is damaged."
        )


class ImageFiles(Dataset):
    """Images from files -> `(x, y)`: x (3,H,W) float in [0,1], y int. `crop` None keeps the decoded size."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], resize: int | None = 256, crop: int | None = 224):
        self.files = list(files)
        self.targets = np.asarray(labels, dtype=np.int64)
        self.resize, self.crop = resize, crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        a = read_u8(self.files[i], self.resize, self.crop)
        return torch.from_numpy(a).permute(2, 0, 1).float().div_(255.0), int(self.targets[i])

    def uint8(self, idx: Sequence[int] | None = None) -> torch.Tensor:
        """The images at `idx` (default all) as one (N,3,H,W) uint8 tensor (all must share one size)."""
        idx = range(len(self)) if idx is None else idx
        a = np.stack([read_u8(self.files[int(i)], self.resize, self.crop) for i in idx])
        return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def robustbench_helper(name: str) -> Path:
    """A file from robustbench's `helper_files/` folder, found without importing robustbench."""
    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"robustbench is not installed; it ships {name}. Run `pip install robustbench==1.1.1`.")
    return Path(list(spec.submodule_search_locations)[0]) / "helper_files" / name


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet wnids in class-index order (sorted; as in robustbench's class map)."""
    m = json.loads(robustbench_helper("imagenet_class_to_id_map.json").read_text())
    return tuple(sorted(m, key=m.__getitem__))


@lru_cache(maxsize=1)
def wnid_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}
