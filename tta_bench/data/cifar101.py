"""`cifar10.1`: CIFAR-10.1 (Recht et al., "Do CIFAR-10 Classifiers Generalize to CIFAR-10?", 2018), a new test set of
CIFAR-10's ten classes drawn from the same Tiny Images source: a natural distribution shift of CIFAR-10 models (one
domain, 2,000 images, 200 per class, in v6).

Layout (github.com/modestyachts/CIFAR-10.1, `datasets/`): `cifar10.1_<version>_data.npy`, uint8 (N, 32, 32, 3) NHWC,
and `cifar10.1_<version>_labels.npy`, integer (N,), CIFAR-10's label order. `stream.version`: `v6` (default, the
2,000-image set the paper recommends) or `v4` (2,021 images). The files are read from `<root>` (default
`<data dir>/CIFAR-10.1`); when absent they are downloaded from the repository's raw files (`stream.download=false`
refuses) and checked: the labels file by its SHA-256, the data file by its git blob id (the SHA-1 GitHub's tree lists
for it, computed over "blob <size>\\0" + the file's bytes), both fixed here; a mismatch names the file to delete.

Source and clean split: a clean CIFAR-10 test set (torchvision `cifar-10-batches-py/` under the data dir, or
`--set stream.clean_dir=PATH`, as `cifar10-c` reads it): its first `stream.clean_size` (500) test images are the
held-out clean sample, the training set (when the pickles hold it) or else the other test images the source split.
CIFAR-10.1's images are new photographs, never in CIFAR-10, so the clean images are never streamed. Streamed in the
files' order (class-mixed); `--limit N` takes the first N. Tested on generated stand-ins (tests/test_cifar101.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from tta_bench.data.cifar import VARIANTS, U8Images, find_clean
from tta_bench.data.folders import load_npy
from tta_bench.kernel import UserError, fingerprint_files, hash_text
from tta_bench.kernel import download as kernel_download
from tta_bench.streams import CleanSplit, StreamSpec, register

FOLDER = "CIFAR-10.1"
BASE_URL = "https://raw.githubusercontent.com/modestyachts/CIFAR-10.1/master/datasets/"
# per version: (SHA-256 of the labels file, git blob SHA-1 of the data file), from the repository at commit d9982ab
# ("Update to numpy format version 2.0"); the labels' SHA-256 computed from its blob, the data's blob id from the tree.
CHECKS = {
    "v6": (
        "ae40beda001693674edc94d925ee8268cfe68905f8f9aff800c8dcdfcd6c9448",
        "24349cc5f3fb59648d75cd8015b5a184b1f5c250",
    ),
    "v4": (
        "1f9544300ded199539b6662364ce7fe6c2e1ea9f87408f06db4b1a6184cffb18",
        "1094f59a54cf768f7b1ca5029eb4a94b8c635ebe",
    ),
}
LAYOUT = "cifar10.1_<version>_data.npy (uint8 N x 32 x 32 x 3) + cifar10.1_<version>_labels.npy (N,)"


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file: SHA-1 of `blob <size>\\0` followed by its bytes (what GitHub's tree lists)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(root: Path, version: str) -> None:
    """Download the version's missing files into `root` and check them (labels: SHA-256, data: git blob id)."""
    labels_sha256, data_blob = CHECKS[version]
    for kind in ("labels", "data"):
        name = f"cifar10.1_{version}_{kind}.npy"
        dest = root / name
        if dest.exists():
            continue
        hint = f"CIFAR-10.1 is {LAYOUT}, from github.com/modestyachts/CIFAR-10.1 (datasets/)."
        kernel_download(BASE_URL + name, dest, sha256=labels_sha256 if kind == "labels" else None,
                        what=f"CIFAR-10.1 {kind} file", hint=hint)  # fmt: skip
        if kind == "data" and git_blob_sha1(dest) != data_blob:
            got = git_blob_sha1(dest)
            dest.unlink()  # never left behind to be read as the data by the next run
            raise UserError(
                f"Checksum mismatch for {dest}: git blob id {got[:16]}..., expected {data_blob[:16]}... (the "
                f"repository's file). The download was corrupt or a different release and was deleted; run again, "
                f"or place the file from {BASE_URL + name} at {dest} by hand."
            )


def read(root: Path, version: str) -> tuple[np.ndarray, np.ndarray]:
    """The (N,32,32,3) uint8 images and (N,) int64 labels of the version's files under `root`, checked."""
    data_path, labels_path = (root / f"cifar10.1_{version}_{k}.npy" for k in ("data", "labels"))
    for p in (data_path, labels_path):
        if not p.is_file():
            raise UserError(
                f"CIFAR-10.1: {p} not found. Expected {LAYOUT} under {root}; point --set stream.root=PATH at the "
                "folder holding them, or leave stream.download on to fetch them."
            )
    x, y = load_npy(data_path, mmap=False), load_npy(labels_path, mmap=False)
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8:
        raise UserError(f"{data_path} has shape {x.shape} dtype {x.dtype}; expected uint8 (N, 32, 32, 3) (NHWC).")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{labels_path} has shape {y.shape} dtype {y.dtype}; expected {len(x)} integer labels.")
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise UserError(f"{labels_path} holds labels outside 0..9 (CIFAR-10's ten classes): not CIFAR-10.1 labels.")
    return x, y.astype(np.int64)


@register(
    "cifar10.1",
    default_model="wrn28-10-cifar10",  # as cifar10-c: CIFAR-10 models meet a natural shift
    description="CIFAR-10.1 (Recht et al. 2018): a new CIFAR-10 test set, natural shift (.npy, checked download)",
    family="cifar10-c",
    clean=CleanSplit(
        "the first stream.clean_size (500) images of a clean CIFAR-10 test set (cifar-10-batches-py or "
        "stream.clean_dir), never in CIFAR-10.1",
        disjoint=True,
        reason="no clean CIFAR-10 test set under the data dir or at stream.clean_dir",
    ),
)
def cifar101(*, data_dir=None, seed: int = 0, root: str | None = None, version: str = "v6",
             clean_dir: str | None = None, clean_size: int = 500, download: bool = True) -> StreamSpec:  # fmt: skip
    """CIFAR-10.1 (`version` v6 or v4) from its published .npy files, one domain."""
    if version not in CHECKS:
        raise UserError(f"stream.version={version!r}: CIFAR-10.1 has versions {', '.join(CHECKS)} (default v6).")
    if not isinstance(clean_size, int) or clean_size < 1:
        raise UserError(f"stream.clean_size={clean_size!r}: give the number of held-out clean images, at least 1.")
    data_dir = Path(data_dir or ".")
    folder = Path(root).expanduser() if root else data_dir / FOLDER
    have = all((folder / f"cifar10.1_{version}_{k}.npy").exists() for k in ("data", "labels"))
    if not have and download:
        fetch(folder, version)
    x, y = read(folder, version)
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(y)

    clean_set = find_clean(VARIANTS["cifar10-c"], [Path(clean_dir).expanduser()] if clean_dir else [data_dir],
                           folders=bool(clean_dir))  # fmt: skip
    if clean_dir and clean_set is None:
        raise UserError(
            f"stream.clean_dir={clean_dir}: no clean CIFAR-10 test set there (cifar-10-batches-py/test_batch or an "
            "ImageFolder <dir>[/test]/<class>/<image> with 10 classes)."
        )
    src = cln = None
    if clean_set is not None:
        k = min(clean_size, len(clean_set.y) // 2) if clean_set.train is None else min(clean_size, len(clean_set.y))
        cln = U8Images(clean_set.x[:k], clean_set.y[:k])
        src = clean_set.train if clean_set.train is not None else U8Images(clean_set.x[k:], clean_set.y[k:])

    def load(domain: str, severity: int | None, limit: int | None) -> U8Images:
        n = len(labels) if limit is None else min(limit, len(labels))
        return U8Images(images[:n], labels[:n])

    files = [folder / f"cifar10.1_{version}_{k}.npy" for k in ("data", "labels")]
    fp = fingerprint_files(files, folder)
    src_fp = hash_text(src.x[:2000].numpy().tobytes() + src.y.numpy().tobytes(), 12) if src is not None else None
    return StreamSpec(
        name="cifar10.1",
        domain_names=[f"cifar10.1-{version}"],
        load=load,
        num_classes=10,
        data_fingerprint=fp,
        source_fingerprint=f"cifar10-c-{src_fp}" if src_fp else None,
        source=src,
        clean=cln,
        severities=None,
        info={
            "source": "files",
            "files": str(folder),
            "version": version,
            "images": len(labels),
            "clean_set": {"path": str(clean_set.path), "layout": clean_set.layout} if clean_set else None,
        },
    )
