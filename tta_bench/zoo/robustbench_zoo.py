"""RobustBench's corruption model zoo through `robustbench.utils.load_model` (weights cached under
`<weights dir>/robustbench/<dataset>/<threat model>/<name>.pt`).

`robustbench` (generic: `--set model.name=... model.dataset=...`) and short names for the sources of
the standard TTA benchmarks: `wrn28-10-cifar10` (`Standard`, WRN-28-10, CIFAR-10; Tent, CoTTA),
`resnext29-augmix-cifar100` (`Hendrycks2020AugMix_ResNeXt`, CIFAR-100; CoTTA), `resnet50-robustbench`
(`Standard_R50`, torchvision's ResNet-50 V1 with input normalisation, ImageNet). RobustBench models take
inputs in [0, 1] (normalisation, where needed, is inside the model).
"""

from __future__ import annotations

import torch.nn as nn

from tta_bench.compat import import_robustbench
from tta_bench.kernel import UserError
from tta_bench.models import MODELS, ModelContext, describe, sha256_file

DATASETS = {10: "cifar10", 100: "cifar100", 1000: "imagenet"}


def load(ctx: ModelContext, name: str, dataset: str, threat_model: str = "corruptions") -> nn.Module:
    """`robustbench.utils.load_model(name, model_dir, dataset, threat_model)` with actionable errors."""
    import_robustbench()
    from robustbench.utils import load_model

    model_dir = ctx.weights_dir / "robustbench"
    path = model_dir / dataset / threat_model / f"{name}.pt"
    if dataset == "imagenet" and name.startswith("Standard"):
        place = "torchvision's resnet50-0676ba61.pth into torch hub's cache ($TORCH_HOME/hub/checkpoints)"
    else:
        place = f"{name}.pt at {path}"
    try:
        model = load_model(model_name=name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model)
    except UserError:
        raise
    except KeyError:
        raise UserError(
            f"RobustBench has no model '{name}' for {dataset}/{threat_model}; see "
            "https://robustbench.github.io (the model ids are the leaderboard's)."
        ) from None
    except Exception as e:  # noqa: BLE001 - gdown / requests / urllib errors when offline
        if path.is_file() and path.stat().st_size == 0:  # a failed download leaves an empty file behind
            path.unlink()
        raise UserError(
            f"Could not load RobustBench model '{name}' ({dataset}, {threat_model}): {type(e).__name__}: {e}. "
            f"If this machine is offline, download it elsewhere and place {place}."
        ) from None
    info = {"robustbench": name, "dataset": dataset, "threat_model": threat_model}
    if path.is_file():
        info.update(weights=str(path), sha256=sha256_file(path))
    return describe(model, **info)


def _dataset_of(spec, dataset: str | None) -> str:
    if dataset:
        return dataset
    if spec is None or spec.num_classes not in DATASETS:
        raise UserError("Set --set model.dataset=cifar10|cifar100|imagenet for this stream.")
    return DATASETS[spec.num_classes]


@MODELS.register("robustbench")
def robustbench_model(
    spec, ctx: ModelContext, *, name: str = "Standard", dataset: str | None = None, threat_model: str = "corruptions"
) -> nn.Module:
    """Any RobustBench model by id (`model.name`), dataset from the stream's class count unless `model.dataset`."""
    return load(ctx, name, _dataset_of(spec, dataset), threat_model)


def _alias(name: str, dataset: str, doc: str):
    def factory(spec, ctx: ModelContext) -> nn.Module:
        if spec is not None and spec.num_classes != {v: k for k, v in DATASETS.items()}[dataset]:
            raise UserError(f"RobustBench '{name}' is a {dataset} model; stream '{spec.name}' does not match.")
        return load(ctx, name, dataset)

    factory.__doc__ = doc
    return factory


MODELS.register("wrn28-10-cifar10")(_alias("Standard", "cifar10", "RobustBench Standard WRN-28-10, CIFAR-10."))
MODELS.register("resnext29-augmix-cifar100")(
    _alias("Hendrycks2020AugMix_ResNeXt", "cifar100", "RobustBench Hendrycks2020AugMix_ResNeXt, CIFAR-100.")
)
MODELS.register("resnet50-robustbench")(_alias("Standard_R50", "imagenet", "RobustBench Standard_R50, ImageNet."))
