"""Names the page reads: streams, models and settings in words, the order of task families and streams, and short
entry names (the method plus only the options that differ from what the run's benchmark preset, or the method's
class defaults, would use; the full resolved options go to a tooltip).

Everything here reads config.json only (the leaderboard imports no adapter, so a method's class defaults are known
through the preset record config.json keeps: `preset.options`, `preset.overridden`).
"""

from __future__ import annotations

import json
from typing import Any

from tta_bench import rundir

# Streams and models in words (titles); anything not listed is shown by its registry name.
STREAM_NAMES = {
    "cifar10-c": "CIFAR-10-C", "cifar100-c": "CIFAR-100-C", "imagenet-c": "ImageNet-C", "imagenet-r": "ImageNet-R",
    "imagenet-a": "ImageNet-A", "imagenet-sketch": "ImageNet-Sketch", "imagenet-v2": "ImageNetV2",
    "imagenet-ds": "ImageNet (domain shift)", "ccc": "CCC (ImageNet)", "ccc-cifar": "CCC (CIFAR-10)",
    "digits-c": "Digits-C", "camelyon17": "Camelyon17", "pathmnist-site": "PathMNIST (site shift)",
    "confounded": "Confounded", "camvid-c": "CamVid-C", "cityscapes-acdc": "Cityscapes → ACDC",
    "gta5-cityscapes": "GTA5 → Cityscapes", "digits-b2n": "Digits base-to-new", "cifar100-b2n": "CIFAR-100 base-to-new",
    "imagenet-b2n": "ImageNet base-to-new", "folder-b2n": "folder base-to-new", "coloredmnist": "ColoredMNIST",
    "digits-ls": "Digits (label shift)",
}  # fmt: skip
for _flag in ("blood", "breast", "derma", "oct", "organa", "organc", "organs", "path", "pneumonia", "retina", "tissue"):
    STREAM_NAMES[f"{_flag}mnist-c"] = f"{_flag.capitalize()}MNIST-C"
STREAM_NAMES["organamnist-c"], STREAM_NAMES["organcmnist-c"] = "OrganAMNIST-C", "OrganCMNIST-C"
STREAM_NAMES["organsmnist-c"], STREAM_NAMES["octmnist-c"] = "OrganSMNIST-C", "OCTMNIST-C"

MODEL_NAMES = {
    "resnet20-cifar10": "ResNet-20", "resnet32-cifar10": "ResNet-32", "resnet44-cifar10": "ResNet-44",
    "resnet56-cifar10": "ResNet-56", "wrn28-10-cifar10": "WRN-28-10", "resnext29-augmix-cifar100": "ResNeXt-29",
    "resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50", "resnet101": "ResNet-101",
    "resnet50-robustbench": "ResNet-50 (RobustBench)", "wide-resnet50-2": "WRN-50-2", "vit-b-16": "ViT-B/16",
    "vit-b-16-timm": "ViT-B/16 (timm)", "convnext-tiny": "ConvNeXt-T", "efficientnet-b0": "EfficientNet-B0",
    "efficientnet-lite0": "EfficientNet-Lite0", "mobilenet-v2": "MobileNetV2", "small-cnn": "small CNN",
    "medical-resnet": "medical ResNet", "clip-rn50": "CLIP RN50", "clip-vit-b16": "CLIP ViT-B/16",
    "clip-vit-b32": "CLIP ViT-B/32", "clip-vit-l14": "CLIP ViT-L/14", "clip-tiny": "CLIP tiny",
    "espnet-camvid": "ESPNet", "espnet-cityscapes": "ESPNet", "segformer": "SegFormer",
    "deeplabv2-resnet101": "DeepLabV2-R101", "deeplabv3-resnet101": "DeepLabV3-R101",
    "deeplabv3-resnet50": "DeepLabV3-R50",
}  # fmt: skip

# Detail tables follow the task family, then this stream order (published tables' order: CIFAR, ImageNet, the
# long-horizon and natural shifts, small and medical streams), then the setting order below.
STREAM_ORDER = (
    "cifar10-c", "cifar100-c", "imagenet-c", "imagenet-r", "imagenet-a", "imagenet-sketch", "imagenet-v2",
    "imagenet-ds", "ccc-cifar", "ccc", "digits-c", "digits-ls", "coloredmnist", "camelyon17", "pathmnist-site",
    "confounded",
    *(f"{f}mnist-c" for f in ("pneumonia", "breast", "blood", "derma", "oct", "organa", "organc", "organs", "path",
                                "retina", "tissue")),
    "camvid-c", "cityscapes-acdc", "gta5-cityscapes", "digits-b2n", "cifar100-b2n", "imagenet-b2n", "folder-b2n",
)  # fmt: skip
SETTING_ORDER = ("continual", "episodic", "gradual", "mixed", "non-iid", "markov", "realistic")

# Task families of the overview, by the headline metric that ranks their tables (tta_bench.rundir.METRICS).
FAMILIES = {
    "mean_error": "Classification",
    "balanced_error": "Imbalanced binary classification (medical)",
    "miou": "Semantic segmentation",
    "harmonic_mean": "Base-to-new generalization (CLIP)",
    "target_acc": "Domain generalization (CLIP)",
}

# Stream options that only apply to some settings (the rest apply to every run).
SETTING_OPTIONS = {
    "gamma": ("non-iid",),
    "speed_ratio": ("realistic",),
    "utility_tau": ("realistic",),
    **{k: ("markov",) for k in ("markov", "domain_stay", "class_stay", "domain_imbalance", "class_imbalance")},
}

BASELINE_ORDER = ("source", "norm")


def stream_name(stream: str) -> str:
    return STREAM_NAMES.get(stream, stream)


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def order_key(stream: str, setting: str) -> tuple[int, str, int, str]:
    """Sort key of a table within its task family: stream order, then setting order (unknown ones last, by name)."""
    s = STREAM_ORDER.index(stream) if stream in STREAM_ORDER else len(STREAM_ORDER)
    t = SETTING_ORDER.index(setting) if setting in SETTING_ORDER else len(SETTING_ORDER)
    return s, stream, t, setting


def family_key(headline_key: str) -> tuple[int, str]:
    """Sort key of a task family (the METRICS order of its headline metric)."""
    keys = [m.key for m in rundir.METRICS]
    return (keys.index(headline_key) if headline_key in keys else len(keys)), headline_key


def family_name(headline_key: str) -> str:
    return FAMILIES.get(headline_key, f"Tables ranked by {rundir.metric(headline_key).label}")


def applicable_stream_opts(setting: str, opts: dict[str, Any]) -> dict[str, Any]:
    """The stream options that apply to a run of `setting` (no `gamma` on a continual run), unset ones dropped."""
    return {
        k: v for k, v in opts.items() if v is not None and (k not in SETTING_OPTIONS or setting in SETTING_OPTIONS[k])
    }


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def overrides(cfg: dict[str, Any]) -> dict[str, Any]:
    """The run's method options that differ from its benchmark preset's (config.json `preset.overridden`; empty when
    no preset applied: the run used the class defaults except for what tells its entry apart, see `short_names`)."""
    preset = cfg.get("preset") or {}
    return dict(preset.get("overridden") or {}) if preset.get("family") else {}


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_value(x) for x in v)
    return str(v)


def options_text(opts: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in sorted(opts.items()))


def short_names(runs: Any, configs: dict[str, dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, str]]:
    """(table, model, entry) -> {"short": name, "full": the resolved options in words, "differs": what is shown}.

    The short name is the method plus, in parentheses, only the options that differ from what the run's benchmark
    would use: the preset's values (config.json `preset.overridden`) and, where a table holds several entries of
    one method, the options in which an entry differs from the one that kept its preset (or defaults), e.g.
    `tent (lr=0.01)` beside `tent`. Full resolved options: `full` (the page's tooltip). The leaderboard reads
    only config.json (it imports no adapter), so class defaults are known through the preset record only."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    if runs is None or len(runs) == 0:
        return {}
    for (table, model, entry), g in runs.groupby(["table", "model", "entry"], sort=False):
        cfgs = [configs[r] for r in g["run_id"] if r in configs]
        base: dict[str, Any] = {}
        for c in cfgs:
            base.update(overrides(c))
        c0 = cfgs[0] if cfgs else {"config": {}}
        preset = c0.get("preset") or {}
        out[(table, model, entry)] = {
            "method": str(g["method"].iat[0]),
            "opts": dict(c0["config"].get("method_opts") or {}),
            "preset_opts": dict(preset.get("options") or {}) if preset.get("family") else {},
            "base": base,
            "where": f"preset {preset['family']}" if preset.get("family") else "class defaults",
        }
    for _, keys in _group(list(out), lambda k: (k[0], k[1], out[k]["method"])).items():
        opts = [out[k]["opts"] for k in keys]
        varying = sorted({o for f in opts for o in f if len({json.dumps(x.get(o), default=str) for x in opts}) > 1})
        plain = [k for k in keys if not out[k]["base"]]
        ref = out[plain[0]]["opts"] if len(keys) > 1 and len(plain) == 1 else None
        for k in keys:
            e = out[k]
            extra = {
                o: e["opts"].get(o)
                for o in varying
                if (not _same(e["opts"].get(o), ref.get(o)) if ref is not None else
                    o not in e["preset_opts"] or not _same(e["opts"].get(o), e["preset_opts"][o]))
            }  # fmt: skip
            e["differs"] = {**e["base"], **extra}
    for _, keys in _group(list(out), lambda k: (k[0], k[1])).items():
        for _, same in _group(keys, lambda k: (out[k]["method"], options_text(out[k]["differs"]))).items():
            if len(same) > 1:  # e.g. two presets asked for: tell them apart by every option that varies
                opts = [out[k]["opts"] for k in same]
                vary = {o for f in opts for o in f if len({json.dumps(x.get(o), default=str) for x in opts}) > 1}
                for k in same:
                    out[k]["differs"] = {**out[k]["differs"], **{o: out[k]["opts"].get(o) for o in vary}}
    result = {}
    for k, e in out.items():
        d = options_text(e["differs"])
        result[k] = {
            "short": e["method"] + (f" ({d})" if d else ""),
            "full": f"{e['method']}: {options_text(e['opts']) or 'no options'} ({e['where']}"
            + (f"; differs: {d})" if d else ")"),
            "differs": d,
        }
    return result


def _group(items: list, key) -> dict:
    groups: dict = {}
    for i in items:
        groups.setdefault(key(i), []).append(i)
    return groups
