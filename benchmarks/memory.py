"""Memory of one adaptation step for every registered adapter, on the EcoTTA paper's architectures.

    python -m benchmarks.memory [--models resnet50,wrn28,deeplab] [--methods tent,cotta,ecotta]
                                [--quick] [--device cpu|cuda] [--csv out.csv]

Prints `adapt_mb` (device-independent: parameters + gradients + optimizer state + extra model copies
+ bytes saved for backward, see `tta_bench.memory`) and its parts for each adapter on
- `resnet50`: torchvision ResNet-50, batch 64, 224×224 (random weights: memory does not depend on them);
- `wrn28`: RobustBench's WideResNet-28-10, batch 200, 32×32;
- `deeplab`: torchvision DeepLabV3-ResNet-50 (19 classes, output 'out'; the BN of the ASPP image-pooling
  branch, on a 1×1 map, replaced by an identity so that batch 1 works), batch 1, 512×1024, for the
  segmentation adapters `source, norm, alpha_bn, tent, ecotta, cotta`;
and `peak_device_mb` with `--device cuda`: the real peak of torch.cuda.max_memory_allocated over building the
adapter and two steps (the second with the optimizer state alive), above the input batch. `--quick` divides the
batch by 4 (ResNet-50 16, WRN 50) and halves the DeepLab resolution.

Then the ratios EcoTTA/CoTTA and EcoTTA/Tent. The EcoTTA paper (Song et al., CVPR 2023) reports 86 %
(ResNet-50) and 80 % (WRN-40) less memory than CoTTA; the script exits with status 1 when EcoTTA is not
at least 80 % below CoTTA and below Tent on a classification model at the paper's batch sizes (not with
`--quick`, where the fixed costs weigh more: WRN-28 at batch 50 is 75 % below CoTTA).

Each adapter adapts its model in place (no copy) and runs two steps; `adapt_mb` is its first (`StepMemory`).
Adapters declaring `n_aug` (test-time augmentation count, e.g.
CoTTA's 32 teacher forwards) run with `n_aug=1` unless `--full`: those forwards run without gradient,
so `adapt_mb` is unchanged, and the CPU run is 30× shorter. Adapters that cannot wrap the model (e.g.
CLIP prompt learners) are listed as skipped with the reason.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torchvision

from tta_bench import methods
from tta_bench.memory import MB, StepMemory

SEG_METHODS = ("source", "norm", "alpha_bn", "tent", "ecotta", "cotta")
COLUMNS = ("adapt_mb", "params_mb", "grads_mb", "optimizer_mb", "copies_mb", "saved_mb", "peak_device_mb")


class DenseOut(nn.Module):
    """torchvision segmentation models return {'out': ..., 'aux': ...}; adapters want the 'out' tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def wrn28() -> nn.Module:
    from tta_bench.compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    return WideResNet(depth=28, widen_factor=10)


def resnet20() -> nn.Module:
    from tta_bench.zoo.cifar_resnet import CifarResNet

    return CifarResNet(20, 10)


def deeplab() -> nn.Module:
    """DeepLabV3-ResNet-50, 19 classes. The ASPP image-pooling branch normalises a 1×1 map with BatchNorm,
    which batch-statistics adapters cannot run at batch 1; that one BN becomes an identity (256 values
    per image: no memory effect)."""
    seg = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=19)
    pooling = seg.classifier[0].convs[-1]  # ASPPPooling: pool, conv, BN, ReLU
    pooling[2] = nn.Identity()
    return DenseOut(seg)


# name -> (builder, input shape, quick input shape, adapters: None = every registered one)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple, tuple, tuple | None]] = {
    "resnet50": (torchvision.models.resnet50, (64, 3, 224, 224), (16, 3, 224, 224), None),
    "wrn28": (wrn28, (200, 3, 32, 32), (50, 3, 32, 32), None),
    "deeplab": (deeplab, (1, 3, 512, 1024), (1, 3, 256, 512), SEG_METHODS),
    "resnet20": (resnet20, (64, 3, 32, 32), (16, 3, 32, 32), None),  # small: CPU dry runs (gpu_check.sh --dry-run)
}


def measure_one(name: str, build: Callable[[], nn.Module], x: torch.Tensor, full: bool) -> dict:
    """Adapter `name` on a fresh `build()` model (adapted in place, no copy): `adapt_mb` and its parts from its first
    step (`StepMemory`), and on CUDA `peak_device_mb`: the real peak of `torch.cuda.max_memory_allocated` over
    building the adapter and two steps (the second has the optimizer state alive), above the input batch."""
    torch.manual_seed(0)
    cls = methods.get(name)
    opts = {"n_aug": 1} if "n_aug" in cls.defaults and not full else {}
    t0 = time.perf_counter()
    cuda = x.is_cuda
    adapter = None
    try:
        if cuda:
            torch.cuda.synchronize(x.device)
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
        adapter = cls(build().to(x.device), inplace=True, **opts)
        built_peak = torch.cuda.max_memory_allocated(x.device) if cuda else 0
        with StepMemory(adapter, x) as mem:
            adapter(x)
        adapter(x)
        result = dict(mem.result)
        if cuda:
            torch.cuda.synchronize(x.device)
            result["peak_device_mb"] = (max(built_peak, torch.cuda.max_memory_allocated(x.device)) - base) / MB
    except Exception as e:  # an adapter that cannot wrap this model: reported, not fatal
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"}
    finally:
        del adapter
        if cuda:
            torch.cuda.empty_cache()
    return {**result, "seconds": time.perf_counter() - t0, "opts": opts}


def ratios(rows: dict[str, dict], column: str = "adapt_mb") -> dict[str, float | None]:
    eco = rows.get("ecotta", {}).get(column)

    def r(other: str) -> float | None:
        o = rows.get(other, {}).get(column)
        return eco / o if eco and o else None

    return {"ecotta/cotta": r("cotta"), "ecotta/tent": r("tent")}


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:10.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet50,wrn28", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--methods", default="", help="comma list of adapters (default: every registered one)")
    ap.add_argument("--quick", action="store_true", help="smaller batches (1/4) and DeepLab at 256×512")
    ap.add_argument("--full", action="store_true", help="keep every adapter's default n_aug")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (peak_device_mb needs cuda)")
    ap.add_argument("--csv", default="", help="also write the table to this CSV file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    chosen = [m for m in args.methods.split(",") if m] or methods.names()
    failed, table = False, []
    for model_name in [m for m in args.models.split(",") if m]:
        if model_name not in MODELS:
            ap.error(f"unknown model {model_name!r}; choose from {', '.join(MODELS)}")
        build, shape, quick_shape, allowed = MODELS[model_name]
        x = torch.rand(quick_shape if args.quick else shape, device=device)
        print(f"\n{model_name}  input {tuple(x.shape)}  device {device}")
        print(f"{'method':<10}" + "".join(f"{c:>15}" for c in COLUMNS) + f"{'seconds':>9}")
        rows: dict[str, dict] = {}
        for name in chosen:
            if allowed is not None and name not in allowed:
                continue
            rows[name] = row = measure_one(name, build, x, args.full)
            table.append({"model": model_name, "method": name, "batch": x.shape[0], **row})
            if "error" in row:
                print(f"{name:<10}  skipped: {row['error']}")
            else:
                note = f"  {row['opts']}" if row["opts"] else ""
                print(f"{name:<10}" + "".join(f"{fmt(row[c]):>15}" for c in COLUMNS) + f"{row['seconds']:9.1f}{note}")
            sys.stdout.flush()
        rat = ratios(rows)
        print("  ".join(f"{k} = {v:.3f} ({(1 - v) * 100:.0f} % less)" for k, v in rat.items() if v is not None))
        peak = ratios(rows, "peak_device_mb")
        if any(v is not None for v in peak.values()):
            print("peak GPU memory: " + "  ".join(f"{k} = {v:.3f} ({(1 - v) * 100:.0f} % less)"
                                                  for k, v in peak.items() if v is not None))  # fmt: skip
        if model_name != "deeplab" and None not in rat.values():
            if args.quick:  # fixed costs (weights, optimizer state) weigh more at 1/4 of the batch
                print("  (--quick: batch below the paper's; the 80 % check applies to the full sizes only)")
            elif rat["ecotta/cotta"] > 0.2 or rat["ecotta/tent"] >= 1.0:
                print(f"CHECK FAILED on {model_name}: EcoTTA must be ≥80 % below CoTTA and below Tent.")
                failed = True
            elif peak["ecotta/cotta"] is not None and peak["ecotta/cotta"] > 0.2:
                print(f"CHECK FAILED on {model_name}: EcoTTA's peak GPU memory must be ≥80 % below CoTTA's.")
                failed = True
    if args.csv:
        keys = ["model", "method", "batch", *COLUMNS, "seconds", "error"]
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(table)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
