"""`domainnet126`: DomainNet-126 (the cleaned 126-class subset of DomainNet, Peng et al. ICCV 2019, as used by
AdaContrast, Chen et al. CVPR 2022) with the image lists of the most-used TTA suite (mariodoebler/test-time-adaptation,
`classification/datasets/domainnet126_lists/<domain>_list.txt`): four domains, clipart, painting, real and sketch.

Layout: images `<root>/<domain>/<class>/<file>.jpg` (DomainNet's cleaned archives extracted side by side; default
root `<data dir>/DomainNet-126`, the suite's folder name) and the lists (`stream.lists`, default
`<root>/domainnet126_lists`): one line per image, `<domain>/<class>/<file>.jpg <label 0..125>`, in the suite's order.
Missing lists are downloaded from the suite's repository at a fixed commit and checked by SHA-256
(`stream.download=false` refuses). As in the suite, the source domain (`stream.source_domain`, default `real`: its
checkpoints are `best_real_2020.pth`) is the training domain and the stream shows the other three in the suite's
order (clipart, painting, sketch), each in its list's order; `--limit N` takes the first N of each.

Source split and clean sample: the source domain's list, its first `stream.clean_size` (500) images held out as
the clean sample (never trained on by a prepare stage), the rest the source split; the stream never shows the source
domain, so the clean images are never streamed. Images are resized (shorter side 256) and centre-cropped to 224.
The suite's source model (a ResNet-50 trained on the source domain) is not a registered model here: the default
model is the small BN CNN, trained on the source split (`--model`, `--set model.weights=` for others). Methods run
their imagenet-c presets (the suite's domainnet126 Tent settings, SGD lr 2.5e-4, are its ImageNet-C ones).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tta_bench.data.decode import EncodedFiles
from tta_bench.kernel import UserError, fingerprint_files, hash_text
from tta_bench.kernel import download as kernel_download
from tta_bench.streams import CleanSplit, StreamSpec, register

DOMAINS = ("clipart", "painting", "real", "sketch")
NUM_CLASSES = 126
FOLDER = "DomainNet-126"
SUITE_COMMIT = "8b2ed63255d906b6b0afaefc6ae630b9ec4bdaa1"  # the lists last changed in 1a5a834
LIST_URL = (
    f"https://raw.githubusercontent.com/mariodoebler/test-time-adaptation/{SUITE_COMMIT}/classification/datasets/"
    "domainnet126_lists/{domain}_list.txt"
)
LIST_SHA256 = {
    "clipart": "39fae031d6f27ee93cb506ab4433da44d17bc1e1e449c471011c3f7b6e522d66",
    "painting": "2d43a458723ca8d0b9cbc3d4c65355cfc51b0dc2c7ff6931ecef1e156205b9e7",
    "real": "97b35851b7a01899e4b733a0e37e2f6c8eb8dcab39ad9c25dbb8b64fdb56bda5",
    "sketch": "fd8be666b627d1e3519ce04d2b3d32998497f10ec53a0468db63d9bd59a5efbe",
}
LIST_LINES = {"clipart": 18523, "painting": 30042, "real": 69622, "sketch": 24147}  # images per official list


def list_path(lists: Path, domain: str, download: bool) -> Path:
    """`<lists>/<domain>_list.txt`, downloaded (SHA-256 checked) when absent and `download`."""
    path = lists / f"{domain}_list.txt"
    if path.is_file() or not download:
        if not path.is_file():
            raise UserError(
                f"DomainNet-126: the image list {path} is missing. Put the suite's list there "
                f"({LIST_URL.format(domain=domain)}), point --set stream.lists=PATH at the folder holding the four "
                "<domain>_list.txt files, or leave stream.download on."
            )
        return path
    return kernel_download(LIST_URL.format(domain=domain), path, sha256=LIST_SHA256[domain],
                           what=f"DomainNet-126 {domain} image list")  # fmt: skip


def read_list(path: Path, root: Path, domain: str) -> tuple[list[Path], np.ndarray, dict[int, str]]:
    """The image files (under `root`), labels and class names (label -> folder) of one list; every file must exist."""
    files, labels, names = [], [], {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"Cannot read the DomainNet-126 list {path} ({e}); replace it with the suite's list.") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        rel = Path(parts[0]) if parts else Path()
        ok = len(parts) == 2 and parts[1].isdigit() and len(rel.parts) == 3 and not rel.is_absolute()
        if not ok or ".." in rel.parts or rel.parts[0] != domain or int(parts[1]) >= NUM_CLASSES:
            raise UserError(
                f"{path} line {n} is {line.strip()[:80]!r}; expected '{domain}/<class>/<file>.jpg <label 0..125>' "
                "(the suite's list format)."
            )
        files.append(root / rel)
        labels.append(int(parts[1]))
        names.setdefault(int(parts[1]), rel.parts[1])
    if not files:
        raise UserError(f"{path} lists no images; expected the suite's {domain} list.")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UserError(
            f"DomainNet-126: {len(missing)} of the {len(files)} images of {path.name} are missing under {root}, e.g. "
            f"{missing[0]}. Extract DomainNet's cleaned {domain} archive (ai.bu.edu/M3SDA) into {root}, or point "
            "--set stream.root=PATH at the folder holding clipart/, painting/, real/ and sketch/."
        )
    return files, np.asarray(labels, dtype=np.int64), names


@register(
    "domainnet126",
    default_model="small-cnn",  # trained on the source domain (the suite's ResNet-50 checkpoint is not registered)
    description="DomainNet-126: real -> clipart, painting, sketch (126 classes, the suite's image lists)",
    family="imagenet-c",  # 224-px ResNet-50 settings: the suite's domainnet126 configs match its ImageNet-C ones (tent)
    clean=CleanSplit(
        "the first stream.clean_size (500) images of the source domain's list, never streamed", disjoint=True
    ),  # fmt: skip
)
def domainnet126(*, data_dir=None, seed: int = 0, root: str | None = None, lists: str | None = None,
                 source_domain: str = "real", clean_size: int = 500, download: bool = True) -> StreamSpec:  # fmt: skip
    """DomainNet-126 from its folders and the suite's lists: the source domain trains, the other three stream."""
    if source_domain not in DOMAINS:
        raise UserError(f"stream.source_domain={source_domain!r}: choose one of {', '.join(DOMAINS)} (default real).")
    if not isinstance(clean_size, int) or isinstance(clean_size, bool) or clean_size < 1:
        raise UserError(f"stream.clean_size={clean_size!r}: give the number of held-out clean images, at least 1.")
    base = Path(root).expanduser() if root else Path(data_dir or ".") / FOLDER
    if not base.is_dir():
        raise UserError(
            f"DomainNet-126 not found at {base}. Expected <root>/<domain>/<class>/<file>.jpg for {', '.join(DOMAINS)} "
            "(DomainNet's cleaned archives, ai.bu.edu/M3SDA; not downloaded); point --set stream.root=PATH at it."
        )
    lists_dir = Path(lists).expanduser() if lists else base / "domainnet126_lists"
    targets = [d for d in DOMAINS if d != source_domain]
    read = {d: read_list(list_path(lists_dir, d, download), base, d) for d in (*targets, source_domain)}
    class_names = [f"class {i}" for i in range(NUM_CLASSES)]
    for _, _, names in read.values():
        for i, n in names.items():
            class_names[i] = n

    def load(domain: str, severity: int | None, limit: int | None) -> EncodedFiles:
        files, labels, _ = read[domain]
        return EncodedFiles(files[:limit], labels[:limit], 256, 224)

    sfiles, slabels, _ = read[source_domain]
    k = min(clean_size, len(sfiles) // 2)
    clean = EncodedFiles(sfiles[:k], slabels[:k], 256, 224)
    source = EncodedFiles(sfiles[k:], slabels[k:], 256, 224) if len(sfiles) > k else None
    list_files = [lists_dir / f"{d}_list.txt" for d in DOMAINS if d in read]
    fp = hash_text(fingerprint_files(list_files, lists_dir) + "|" + fingerprint_files(
        [f for d in read for f in read[d][0]], base))  # fmt: skip
    return StreamSpec(
        name="domainnet126",
        domain_names=targets,
        load=load,
        num_classes=NUM_CLASSES,
        data_fingerprint=fp,
        source_fingerprint=f"domainnet126-{source_domain}-{fp[:12]}-{k}",
        source=source,
        clean=clean,
        severities=None,
        class_names=class_names,
        info={
            "source": "files",
            "root": str(base),
            "lists": str(lists_dir),
            "source_domain": source_domain,
            "images": {d: len(read[d][0]) for d in read},
        },
    )
