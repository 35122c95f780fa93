"""Natural-shift ImageNet test sets, each one domain in its published folder layout (no auto-download).

- `imagenet-r` (Hendrycks et al., "The Many Faces of Robustness", ICCV 2021): `imagenet-r/<wnid>/*.jpg`,
  30,000 renditions of 200 classes; https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar
- `imagenet-a` (Hendrycks et al., "Natural Adversarial Examples", CVPR 2021): `imagenet-a/<wnid>/*.jpg`,
  7,500 images of 200 classes; https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar
- `imagenet-sketch` (Wang et al., NeurIPS 2019): `sketch/<wnid>/*.JPEG`, 50,889 sketches of all 1,000
  classes; https://github.com/HaohanWang/ImageNet-Sketch (Kaggle / Hugging Face mirrors)
- `imagenet-v2` (Recht et al., ICML 2019): `imagenetv2-matched-frequency-format-val/<class index>/*.jpeg`,
  10,000 images, folder names are class indices 0..999; https://github.com/modestyachts/ImageNetV2

Labels stay in the 1,000-class ImageNet space; ImageNet-R/A are scored over their 200 classes
(`StreamSpec.class_subsets`: the other logits are masked, as in the papers' evaluation code). Images are
resized (shorter side 256) and centre-cropped to 224, and streamed in a fixed, seed-independent
shuffled order, so `--limit N` takes a class-mixed sample.

Source split (prepare stages: EATA, RMT, EcoTTA): ImageNet training images from `--set stream.source_dir=PATH`
(`<wnid>/*.JPEG`, all 1,000 classes; `stream.source_size=N` a seeded subset; `tta_bench.data.imagenet_source`). The
peer suite keeps only ImageNet-R's/-A's 200 classes of it, whose logits its model alone outputs; here the adapters see
all 1,000 logits (the 200-class mask applies to the metrics only), so the source split keeps all classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tta_bench.data.decode import EncodedFiles
from tta_bench.data.folders import fixed_order, imagenet_wnids, list_image_folder, wnid_index
from tta_bench.data.imagenet import with_source
from tta_bench.data.imagenet_source import missing_hint
from tta_bench.kernel import UserError, fingerprint_files
from tta_bench.streams import CleanSplit, StreamSpec, register

IMAGENET_R = """
n01443537 n01484850 n01494475 n01498041 n01514859 n01518878 n01531178 n01534433 n01614925 n01616318 n01630670 n01632777
n01644373 n01677366 n01694178 n01748264 n01770393 n01774750 n01784675 n01806143 n01820546 n01833805 n01843383 n01847000
n01855672 n01860187 n01882714 n01910747 n01944390 n01983481 n01986214 n02007558 n02009912 n02051845 n02056570 n02066245
n02071294 n02077923 n02085620 n02086240 n02088094 n02088238 n02088364 n02088466 n02091032 n02091134 n02092339 n02094433
n02096585 n02097298 n02098286 n02099601 n02099712 n02102318 n02106030 n02106166 n02106550 n02106662 n02108089 n02108915
n02109525 n02110185 n02110341 n02110958 n02112018 n02112137 n02113023 n02113624 n02113799 n02114367 n02117135 n02119022
n02123045 n02128385 n02128757 n02129165 n02129604 n02130308 n02134084 n02138441 n02165456 n02190166 n02206856 n02219486
n02226429 n02233338 n02236044 n02268443 n02279972 n02317335 n02325366 n02346627 n02356798 n02363005 n02364673 n02391049
n02395406 n02398521 n02410509 n02423022 n02437616 n02445715 n02447366 n02480495 n02480855 n02481823 n02483362 n02486410
n02510455 n02526121 n02607072 n02655020 n02672831 n02701002 n02749479 n02769748 n02793495 n02797295 n02802426 n02808440
n02814860 n02823750 n02841315 n02843684 n02883205 n02906734 n02909870 n02939185 n02948072 n02950826 n02951358 n02966193
n02980441 n02992529 n03124170 n03272010 n03345487 n03372029 n03424325 n03452741 n03467068 n03481172 n03494278 n03495258
n03498962 n03594945 n03602883 n03630383 n03649909 n03676483 n03710193 n03773504 n03775071 n03888257 n03930630 n03947888
n04086273 n04118538 n04133789 n04141076 n04146614 n04147183 n04192698 n04254680 n04266014 n04275548 n04310018 n04325704
n04347754 n04389033 n04409515 n04465501 n04487394 n04522168 n04536866 n04552348 n04591713 n07614500 n07693725 n07695742
n07697313 n07697537 n07714571 n07714990 n07718472 n07720875 n07734744 n07742313 n07745940 n07749582 n07753275 n07753592
n07768694 n07873807 n07880968 n07920052 n09472597 n09835506 n10565667 n12267677
""".split()
IMAGENET_A = """
n01498041 n01531178 n01534433 n01558993 n01580077 n01614925 n01616318 n01631663 n01641577 n01669191 n01677366 n01687978
n01694178 n01698640 n01735189 n01770081 n01770393 n01774750 n01784675 n01819313 n01820546 n01833805 n01843383 n01847000
n01855672 n01882714 n01910747 n01914609 n01924916 n01944390 n01985128 n01986214 n02007558 n02009912 n02037110 n02051845
n02077923 n02085620 n02099601 n02106550 n02106662 n02110958 n02119022 n02123394 n02127052 n02129165 n02133161 n02137549
n02165456 n02174001 n02177972 n02190166 n02206856 n02219486 n02226429 n02231487 n02233338 n02236044 n02259212 n02268443
n02279972 n02280649 n02281787 n02317335 n02325366 n02346627 n02356798 n02361337 n02410509 n02445715 n02454379 n02486410
n02492035 n02504458 n02655020 n02669723 n02672831 n02676566 n02690373 n02701002 n02730930 n02777292 n02782093 n02787622
n02793495 n02797295 n02802426 n02814860 n02815834 n02837789 n02879718 n02883205 n02895154 n02906734 n02948072 n02951358
n02980441 n02992211 n02999410 n03014705 n03026506 n03124043 n03125729 n03187595 n03196217 n03223299 n03250847 n03255030
n03291819 n03325584 n03355925 n03384352 n03388043 n03417042 n03443371 n03444034 n03445924 n03452741 n03483316 n03584829
n03590841 n03594945 n03617480 n03666591 n03670208 n03717622 n03720891 n03721384 n03724870 n03775071 n03788195 n03804744
n03837869 n03840681 n03854065 n03888257 n03891332 n03935335 n03982430 n04019541 n04033901 n04039381 n04067472 n04086273
n04099969 n04118538 n04131690 n04133789 n04141076 n04146614 n04147183 n04179913 n04208210 n04235860 n04252077 n04252225
n04254120 n04270147 n04275548 n04310018 n04317175 n04344873 n04347754 n04355338 n04366367 n04376876 n04389033 n04399382
n04442312 n04456115 n04482393 n04507155 n04509417 n04532670 n04540053 n04554684 n04562935 n04591713 n04606251 n07583066
n07695742 n07697313 n07697537 n07714990 n07718472 n07720875 n07734744 n07749582 n07753592 n07760859 n07768694 n07831146
n09229709 n09246464 n09472597 n09835506 n11879895 n12057211 n12144580 n12267677
""".split()


def _wnid_label(allowed: set[str] | None, stream: str) -> Callable[[str], int]:
    def label_of(name: str) -> int:
        if name not in wnid_index() or (allowed is not None and name not in allowed):
            extra = f" of its {len(allowed)} classes" if allowed is not None else ""
            raise UserError(
                f"{stream}: class folder '{name}' is not one{extra} (expected ImageNet wnids like n01443537). "
                "Is stream.root pointing at the right folder?"
            )
        return wnid_index()[name]

    return label_of


def _index_label(name: str) -> int:
    if not name.isdigit() or not 0 <= int(name) < 1000:
        raise UserError(
            f"imagenet-v2: class folder '{name}' is not a class index 0..999 (layout "
            "imagenetv2-<variant>-format-val/<index>/<image>.jpeg)."
        )
    return int(name)


def folder_stream(
    name: str, data_dir, root: str | None, folder: str, label_of: Callable[[str], int], where: str, subset=None,
    source: tuple[str | None, int | str | None, int] = (None, None, 0),
) -> StreamSpec:  # fmt: skip
    """One natural-shift test set in its folder; `source` = (stream.source_dir, stream.source_size, seed)."""
    path = Path(root).expanduser() if root else Path(data_dir) / folder
    if not path.is_dir():
        raise UserError(
            f"{name} not found at {path}. Expected layout: {folder}/<class>/<image>. It is not downloaded "
            f"automatically: get it from {where} and extract it there, or point --set stream.root=PATH at it."
        )
    files, labels, classes = list_image_folder(path, label_of=label_of, what=name)
    order = fixed_order(len(files), f"{name}-{len(files)}")
    files, labels = [files[i] for i in order], labels[order]

    def load(domain: str, severity: int | None, limit: int | None) -> EncodedFiles:
        return EncodedFiles(files[:limit], labels[:limit], 256, 224)  # decoded on the device on CUDA runs

    info = {
        "source": "files",
        "root": str(path),
        "images": len(files),
        "class_folders": len(classes),
        "data_fingerprint": fingerprint_files(files, path),
    }
    src = with_source(info, source[0], source[1], source[2], [f"{f.parent.name}/{f.name}" for f in files], name)
    return StreamSpec(
        name=name,
        domain_names=[name],
        load=load,
        num_classes=1000,
        data_fingerprint=info.pop("data_fingerprint"),  # set above (and extended by with_source)
        source_fingerprint=info.pop("source_fingerprint", None),  # with_source's, when stream.source_dir is set
        severities=None,
        class_names=list(imagenet_wnids()),
        class_subsets={name: sorted(wnid_index()[w] for w in subset)} if subset else {},
        source=src,
        info=info,
        source_hint=missing_hint(name),
    )


NATURAL_CLEAN = CleanSplit(
    None,
    reason="a natural-shift test set comes without clean source-domain images; the source split for prepare stages is "
    "ImageNet training images from stream.source_dir",
)


@dataclass(frozen=True)
class NaturalSet:
    """One natural-shift test set: its folder under the data directory, where to get it, its label rule."""

    folder: str
    where: str
    description: str
    subset: list[str] | None = None  # the wnids it is scored over (None: all 1,000 classes)
    index_labels: bool = False  # folders are class indices 0..999 (ImageNetV2), not wnids


NATURAL_SETS = {
    "imagenet-r": NaturalSet(
        "imagenet-r",
        "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
        "ImageNet-R: 30,000 renditions (art, cartoons, ...) of 200 classes; scored over those 200.",
        IMAGENET_R,
    ),
    "imagenet-a": NaturalSet(
        "imagenet-a",
        "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
        "ImageNet-A: 7,500 natural adversarial examples of 200 classes; scored over those 200.",
        IMAGENET_A,
    ),
    "imagenet-sketch": NaturalSet(
        "sketch",
        "https://github.com/HaohanWang/ImageNet-Sketch",
        "ImageNet-Sketch: 50,889 black-and-white sketches of the 1,000 ImageNet classes.",
    ),
    "imagenet-v2": NaturalSet(
        "imagenetv2-matched-frequency-format-val",
        "https://github.com/modestyachts/ImageNetV2 (imagenetv2-matched-frequency.tar.gz)",
        "ImageNetV2 matched-frequency: 10,000 new test images; folders are class indices 0..999.",
        index_labels=True,
    ),
}


def _register_natural(name: str, ns: NaturalSet) -> Callable[..., StreamSpec]:
    """Register the stream of natural set `name` (every natural set takes the same options) and return its factory."""

    @register(name, default_model="resnet50", family="imagenet-c", clean=NATURAL_CLEAN, source_option="source_dir",
              description=ns.description)  # fmt: skip
    def factory(
        *,
        data_dir,
        seed: int = 0,
        root: str | None = None,
        source_dir: str | None = None,
        source_size: int | str | None = None,
    ) -> StreamSpec:
        label_of = _index_label if ns.index_labels else _wnid_label(set(ns.subset) if ns.subset else None, name)
        return folder_stream(
            name, data_dir, root, ns.folder, label_of, ns.where, ns.subset, (source_dir, source_size, seed)
        )

    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = ns.description
    return factory


imagenet_r, imagenet_a, imagenet_sketch, imagenet_v2 = (_register_natural(n, ns) for n, ns in NATURAL_SETS.items())
