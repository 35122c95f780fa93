"""timm ImageNet classifiers (optional extra: `pip install 'tta-bench[timm]'`): ViTs and any timm checkpoint.

`vit-b-16-timm` is `vit_base_patch16_224.augreg_in21k_ft_in1k` (timm's `vit_base_patch16_224` when SAR and EATA
reported ViT-B/16; mr-eggplant/SAR `main.py`: `timm.create_model('vit_base_patch16_224', pretrained=True)`);
`timm` is any timm model with pretrained weights, named by `--set model.name=<timm name>`.

Input normalisation is read from timm itself (the checkpoint's `pretrained_cfg` mean/std: 0.5/0.5 for the
AugReg ViTs, ImageNet statistics for others), never hard-coded; the model takes inputs in [0, 1]. Preprocessing:
the streams' resize 256 / centre crop 224 is used, not timm's crop_pct resize (e.g. 0.9: resize 248, bicubic), so
the pixels seen differ slightly from timm's eval (the checkpoint's values are recorded in model_info.input);
fixed-size models trained at another resolution (e.g. `vit_base_patch16_384`) get the crop resized (bicubic).

Weights, in order: `--set model.weights=PATH` (a state dict: .safetensors, .pth, .bin), then
`$TTA_BENCH_WEIGHTS/timm/<name>.{safetensors,pth,bin}`, then timm's own download (Hugging Face cache,
`$HF_HOME`). Offline with none of these: a UserError naming the file to place and where to get it. Without
timm installed the models are still listed; using one is a UserError saying what to install.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from tta_bench.kernel import UserError, close_matches
from tta_bench.models import MODELS, ModelContext, Normalized, describe, load_into, load_state_file, sha256_file
from tta_bench.zoo.torchvision_zoo import ResizedInput

VIT_B16 = "vit_base_patch16_224.augreg_in21k_ft_in1k"
SUFFIXES = (".safetensors", ".pth", ".bin")


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError(
            "timm models need the optional package timm: pip install 'tta-bench[timm]' (or pip install timm)."
        ) from None
    return timm


def _state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - header/format errors: not a usable weights file
            raise UserError(
                f"Cannot read the safetensors file {path} ({e}); replace it (--set model.weights=PATH)."
            ) from None
    return load_state_file(path)


def build(name: str, weights_dir: Path, weights: str | None = None) -> tuple[nn.Module, str | None]:
    """The timm network `name` with its pretrained weights (file path or None when timm downloaded them)."""
    timm = _timm()
    try:
        net = timm.create_model(name, pretrained=False)
    except RuntimeError:  # timm: "Unknown model (...)"
        hint = close_matches(name, timm.list_models(pretrained=True))
        raise UserError(
            f"timm has no model '{name}'." + (f" Did you mean: {', '.join(hint)}?" if hint else "")
            + " Give a pretrained timm name with its tag, e.g. --set model.name=" + VIT_B16 + "."
        ) from None  # fmt: skip
    ours = Path(weights_dir) / "timm"
    candidates = [Path(weights).expanduser()] if weights else [ours / f"{name}{s}" for s in SUFFIXES]
    path = next((p for p in candidates if p.is_file()), None)
    if weights and path is None:
        raise UserError(f"Model weights file not found: {weights}. Pass an existing file with --set model.weights=.")
    if path is not None:
        load_into(net, _state(path), path)
        return net.eval(), str(path)
    try:
        return timm.create_model(name, pretrained=True).eval(), None
    except Exception as e:  # noqa: BLE001 - offline, hub errors, missing file: all say "place the file by hand"
        hub = net.pretrained_cfg.get("hf_hub_id")
        where = f"https://huggingface.co/{hub}/resolve/main/model.safetensors" if hub else net.pretrained_cfg.get("url")
        raise UserError(
            f"Could not get timm's weights for {name} ({type(e).__name__}: {str(e)[:120]}). If this machine is "
            f"offline, download {where} elsewhere and place it at {ours / (name + '.safetensors')} (or pass "
            "--set model.weights=PATH; or fill the Hugging Face cache, $HF_HOME, on a machine that is online)."
        ) from None


def _factory(default_name: str):
    def factory(spec, ctx: ModelContext, *, name: str = default_name, weights: str | None = None) -> nn.Module:
        net, path = build(name, ctx.weights_dir, weights)
        if spec is not None and spec.num_classes != net.num_classes:
            raise UserError(f"timm {name} predicts {net.num_classes} classes; stream '{spec.name}' has "
                            f"{spec.num_classes}.")  # fmt: skip
        cfg = net.pretrained_cfg
        info = {k: cfg.get(k) for k in ("mean", "std", "input_size", "crop_pct", "interpolation")}
        model = Normalized(net, cfg["mean"], cfg["std"])
        size = cfg.get("input_size", (3, 224, 224))[-1]
        if cfg.get("fixed_input_size") and size != 224:  # e.g. a ViT at 384: the streams' 224 crops resized
            model = ResizedInput(model, size)
        return describe(model, weights=path or f"hf-hub:{cfg.get('hf_hub_id')}",
                        sha256=sha256_file(Path(path)) if path else None, timm_name=name, input=info)  # fmt: skip

    return factory


MODELS.register("vit-b-16-timm", f"timm {VIT_B16} (ViT-B/16, mean/std 0.5; optional extra timm), 1,000 classes.")(
    _factory(VIT_B16)
)
MODELS.register("timm", "any pretrained timm classifier: --set model.name=<timm name> (optional extra timm).")(
    _factory(VIT_B16)
)
