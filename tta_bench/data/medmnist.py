"""MedMNIST streams: `<flag>-c` (MedMNIST-C corruptions of the test split) and `pathmnist-site`.

Data: MedMNIST v2 / MedMNIST+ (Yang et al. 2023, Scientific Data 10:41), one `.npz` per dataset and
size with keys `{train,val,test}_{images,labels}`: images uint8 `(N, H, W)` (gray) or `(N, H, W, 3)`,
labels `(N, 1)`. Files are named `<flag>.npz` (28 px) or `<flag>_<size>.npz` (64/128/224 px) and are
found at `--set stream.root=PATH` (the `.npz` itself or a folder holding it) or under
`<data-dir>/medmnist/`. When absent they are downloaded from MedMNIST's Zenodo record (URL and MD5
from the `medmnist` package's INFO, `pip install medmnist`, extra `medical`) and the MD5 is checked.

`<flag>-c`: the test split through the dataset's MedMNIST-C corruption list (Di Salvo et al. 2024,
see corruptions/medical.py), one domain per corruption, severities 1-5. Source data: the train
split; held-out clean sample (forgetting): the first `clean_size` images of the val split.
Gray datasets are replicated to 3 channels (so every zoo model applies; corruptions act on RGB and
are converted back to luma, as MedMNIST-C does). Binary datasets (pneumonia, breast) use the
`binary` task: balanced error and AUC are reported besides error.

`pathmnist-site`: a natural site shift. PathMNIST's train/val patches come from NCT-CRC-HE-100K and
its test patches from CRC-VAL-HE-7K, a different clinical centre; one domain, the whole test split.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tta_bench.kernel import UserError, fingerprint_files, hash_file
from tta_bench.kernel import download as fetch
from tta_bench.streams import CleanSplit, StreamSpec, register, segment_seed

SIZES = (28, 64, 128, 224)
KEYS = tuple(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
# 2D classification datasets with a MedMNIST-C corruption list (chestmnist is multi-label: not streamed).
C_FLAGS = (
    "pathmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist",
    "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
)  # fmt: skip


class Uint8Images(Dataset):
    """`(x, y)` from uint8 images `(N, C, H, W)` (C = 1 or 3): x float `(3, H, W)` in [0, 1], y int."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        assert images.dtype == torch.uint8 and images.dim() == 4, "images must be uint8 (N, C, H, W)"
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div_(255)
        return (x.expand(3, -1, -1) if x.shape[0] == 1 else x), int(self.labels[i])

    @property
    def targets(self) -> np.ndarray:
        return self.labels.numpy()

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Images `start:stop` as float `(n, 3, H, W)` in [0, 1]."""
        x = self.images[start:stop].float() / 255
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def info(flag: str) -> dict[str, Any] | None:
    """The `medmnist` package's INFO entry for `flag` (None when the package is not installed)."""
    try:
        from medmnist import INFO
    except ImportError:
        return None
    return INFO.get(flag)


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def md5_file(path: Path) -> str:
    return hash_file(path, "md5")


def locate(flag: str, size: int, data_dir: Path | None, root: str | None, download: bool) -> Path:
    """The `.npz` of `flag` at `size`: `root` (file or folder), else `<data_dir>/medmnist/`, else downloaded."""
    if size not in SIZES:
        raise UserError(f"MedMNIST size must be one of {SIZES}, got {size} (--set stream.size=28).")
    name = file_name(flag, size)
    if root is not None:
        p = Path(root).expanduser()
        if p.is_file():
            return p
        if (p / name).is_file():
            return p / name
        raise UserError(
            f"stream.root={root} is neither a MedMNIST .npz file nor a folder containing {name}. Point it at "
            f"the file (e.g. {name}) or the folder holding it; get it from https://medmnist.com (Zenodo)."
        )
    dest = Path(data_dir or ".") / "medmnist" / name
    if dest.is_file():
        return dest
    meta = info(flag)
    if not download or meta is None:
        why = "downloads are off (stream.download=False)" if meta else "the `medmnist` package is not installed"
        raise UserError(
            f"MedMNIST file {name} not found at {dest}, and {why}. Download {name} from MedMNIST's Zenodo record "
            f"(https://zenodo.org/records/10519652) and place it there, or pass --set stream.root=/path/to/{name} "
            f"(pip install medmnist enables the automatic, MD5-checked download)."
        )
    suffix = "" if size == 28 else f"_{size}"
    url, md5 = meta[f"url{suffix}"], meta[f"MD5{suffix}"]
    try:
        fetch(url, dest, what=f"MedMNIST file {name}")  # MD5-checked below (a mismatch deletes the file)
    except UserError:
        raise UserError(
            f"MedMNIST file {name} is not at {dest} and could not be downloaded from {url} (offline?). Download it "
            f"elsewhere and place it there (or anywhere, with --set stream.root=/path/to/{name}); MD5 {md5}."
        ) from None
    got = md5_file(dest)
    if got != md5:
        dest.unlink()
        raise UserError(
            f"MD5 mismatch for {name} downloaded from {url} ({got}, expected {md5}); it was deleted, retry."
        )
    return dest


@lru_cache(maxsize=4)
def read_npz(path: Path) -> dict[str, torch.Tensor]:
    """The six arrays of a MedMNIST `.npz`, images as uint8 `(N, C, H, W)`, labels int64 `(N,)`."""
    try:
        with np.load(path, allow_pickle=False) as npz:  # every member read here: a damaged one fails now, named
            data = {k: npz[k] for k in npz.files if k in KEYS}
            files = set(npz.files)
        bad = [k for k, v in data.items() if not isinstance(v, np.ndarray)]
        if bad:  # NpzFile returns a member that is not a .npy as raw bytes
            raise ValueError(f"member {bad[0]} is not a .npy array")
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's layout problem
        raise UserError(
            f"Could not read {path} as a MedMNIST .npz ({type(e).__name__}: {e}); it is truncated, damaged or not "
            "a MedMNIST file. Replace it with the original download (or delete it to download it again)."
        ) from None
    missing = [k for k in KEYS if k not in files]
    if missing:
        raise UserError(
            f"{path} is not in the MedMNIST layout: missing keys {missing} (found {sorted(files)}). Expected an .npz "
            f"with {', '.join(KEYS)}: images uint8 (N,H,W) or (N,H,W,3), labels (N,1)."
        )
    out: dict[str, torch.Tensor] = {}
    for split in ("train", "val", "test"):
        img, lab = data[f"{split}_images"], data[f"{split}_labels"]
        if img.ndim == 3:
            img = img[..., None]
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[-1] not in (1, 3) or len(lab) != len(img):
            raise UserError(
                f"{path}: {split}_images must be uint8 (N,H,W) or (N,H,W,3) with one label per image; got "
                f"{img.dtype} {img.shape} and labels {lab.shape}."
            )
        if lab.ndim == 2 and lab.shape[1] > 1:
            raise UserError(f"{path}: {split}_labels has {lab.shape[1]} columns (multi-label); only single-label "
                            f"classification datasets are streamed.")  # fmt: skip
        if lab.dtype.kind not in "iu" or (lab.size and lab.min() < 0):
            low = lab.min() if lab.size and lab.dtype.kind in "iuf" else None
            raise UserError(f"{path}: {split}_labels must be integer class ids >= 0; got dtype {lab.dtype}, "
                            f"minimum {low}. The file is damaged or not a MedMNIST file.")  # fmt: skip
        out[f"{split}_images"] = torch.from_numpy(np.ascontiguousarray(img.transpose(0, 3, 1, 2)))
        out[f"{split}_labels"] = torch.from_numpy(lab.reshape(-1).astype(np.int64))
    return out


def splits(flag: str, path: Path, clean_size: int) -> tuple[dict[str, Uint8Images], dict[str, Any]]:
    arr = read_npz(Path(path))
    ds = {s: Uint8Images(arr[f"{s}_images"], arr[f"{s}_labels"]) for s in ("train", "val", "test")}
    ds["clean"] = Uint8Images(arr["val_images"][:clean_size], arr["val_labels"][:clean_size])
    meta = info(flag) or {}
    top = max(int(arr[f"{s}_labels"].max()) for s in ("train", "val", "test"))
    n_classes = len(meta["label"]) if meta else top + 1
    channels = int(arr["test_images"].shape[1])
    if meta and (top >= n_classes or channels != meta["n_channels"]):
        raise UserError(
            f"{path} does not look like {flag}: labels up to {top} and {channels}-channel images, but {flag} has "
            f"{n_classes} classes and {meta['n_channels']}-channel images. Check the file (stream.root)."
        )
    h = hashlib.sha256(arr["train_labels"].numpy().tobytes())
    h.update(arr["train_images"].numpy().tobytes())
    facts = {
        "flag": flag,
        "file": str(path),
        "num_classes": n_classes,
        "class_names": [meta["label"][str(i)] for i in range(n_classes)] if meta else None,
        "binary": (meta.get("task") == "binary-class") if meta else n_classes == 2,
        "gray": ds["test"].images.shape[1] == 1,
        "size": int(ds["test"].images.shape[-1]),
        "fingerprint": f"{flag}-{h.hexdigest()[:16]}",
        "data_fingerprint": fingerprint_files([Path(path)], Path(path).parent),  # name, size, mtime
        "split": {s: len(ds[s]) for s in ("train", "val", "test", "clean")},
    }
    return ds, facts


def corrupt_split(test: Uint8Images, flag: str, name: str, severity: int, gray: bool, seed: int, limit: int | None,
                  stream: str, chunk: int = 256) -> Uint8Images:  # fmt: skip
    """The first `limit` test images through MedMNIST-C corruption `name`, stored as uint8 (exact: quantised)."""
    from tta_bench.corruptions.medical import medmnist_c

    n = len(test) if limit is None else min(limit, len(test))
    g = torch.Generator().manual_seed(segment_seed(seed, stream, name, severity))
    parts = []
    for a in range(0, n, chunk):
        xc = medmnist_c(test.batch(a, min(n, a + chunk)), flag, name, severity, g, gray=gray)
        parts.append(torch.round((xc[:, :1] if gray else xc) * 255).to(torch.uint8))
    return Uint8Images(torch.cat(parts), test.labels[:n])


def _spec(name: str, facts: dict, ds: dict, **kw: Any) -> StreamSpec:
    return StreamSpec(
        name=name,
        num_classes=facts["num_classes"],
        data_fingerprint=facts["data_fingerprint"],
        source_fingerprint=facts["fingerprint"],
        task="binary" if facts["binary"] else "classification",
        source=ds["train"],
        clean=ds["clean"],
        class_names=facts["class_names"],
        info={"source": "files", **{k: v for k, v in facts.items() if k != "data_fingerprint"}},
        **kw,
    )


MEDMNIST_CLEAN = CleanSplit(
    "the first stream.clean_size (1,000) images of the val split (the stream shows the test split, the source "
    "model trains on the train split)",
    disjoint=True,
)


def _register_c(flag: str) -> None:
    stream = f"{flag}-c"

    @register(
        stream,
        default_model="medical-resnet",
        description=f"MedMNIST-C corruptions of {flag}'s test split",
        family="cifar10-c",  # 28-224 px images, a small BN ResNet trained on the source: small-image settings
        clean=MEDMNIST_CLEAN,
    )
    def factory(*, data_dir=None, seed: int = 0, root: str | None = None, size: int = 28, download: bool = True,
                clean_size: int = 1000) -> StreamSpec:  # fmt: skip
        from tta_bench.corruptions.medical import MEDMNIST_C

        ds, facts = splits(flag, locate(flag, size, data_dir, root, download), clean_size)
        cache: dict[tuple, Uint8Images] = {}

        def load(domain: str, severity: int | None, limit: int | None) -> Uint8Images:
            key = (domain, severity, limit)
            if key not in cache:
                cache[key] = corrupt_split(ds["test"], flag, domain, int(severity or 5), facts["gray"], seed, limit,
                                           stream)  # fmt: skip
            return cache[key]

        return _spec(stream, facts, ds, domain_names=list(MEDMNIST_C[flag]), load=load)


for _flag in C_FLAGS:
    _register_c(_flag)


@register(
    "pathmnist-site",
    default_model="medical-resnet",
    description="PathMNIST: train centre -> test centre",
    family="cifar10-c",
    clean=MEDMNIST_CLEAN,
)
def pathmnist_site(*, data_dir=None, seed: int = 0, root: str | None = None, size: int = 28, download: bool = True,
                   clean_size: int = 1000) -> StreamSpec:  # fmt: skip
    """Natural site shift: NCT-CRC-HE-100K (train) -> CRC-VAL-HE-7K (test, another clinical centre)."""
    ds, facts = splits("pathmnist", locate("pathmnist", size, data_dir, root, download), clean_size)

    def load(domain: str, severity: int | None, limit: int | None) -> Uint8Images:
        t = ds["test"]
        return t if limit is None else Uint8Images(t.images[:limit], t.labels[:limit])

    return _spec("pathmnist-site", facts, ds, domain_names=["test-centre"], load=load, severities=None)
