"""ViTs and other normalisation layers: every adapter on a tiny torchvision ViT (LayerNorm) and a GroupNorm CNN.

Adapters that train normalisation parameters train exactly the LayerNorm/GroupNorm affine parameters they should
(EXPECT); adapters built on BatchNorm statistics refuse with a UserError naming the method, the model's norm
layers and an alternative; adapters not in the table (added later) either run (output (N, C)) or raise a
UserError/TypeError with a message, never another exception. Also: SAR's top-layer selection on torchvision and
timm ViT names, and the zoo's input normalisation (torchvision enum, timm pretrained config).
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn as nn
from torchvision.models import VisionTransformer

from tta_bench import methods
from tta_bench.kernel import UserError
from tta_bench.models import ModelContext, Normalized

N_CLASSES = 10
FAST = {"n_aug": 2, "update_frequency": 8, "memory_size": 16, "fisher_size": 16, "epochs": 1, "e_margin_frac": 1.0,
        "margin_e0_frac": 1.0, "lr": 1e-2, "num_samples_warm_up": 16, "warmup_samples": 16, "queue_size": 64,
        "max_proto_samples": 32, "replay_size": 16}  # fmt: skip
# What each known adapter trains on a model without BatchNorm:
#   ln: every LayerNorm/GroupNorm weight and bias; ln-top: those outside the top layers (SAR); wb: every parameter
#   named weight/bias (CoTTA); frozen: nothing; refuse: UserError.
EXPECT = {"tent": "ln", "eata": "ln", "eta": "ln", "sar": "ln-top", "rotta": "ln", "cotta": "wb", "lame": "frozen",
          "source": "frozen", "norm": "refuse", "alpha_bn": "refuse", "core": "refuse"}  # fmt: skip


def tiny_vit() -> nn.Module:
    """torchvision VisionTransformer (32 px, patch 8, 2 layers, width 32) behind the zoo's input normalisation."""
    torch.manual_seed(0)
    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                            num_classes=N_CLASSES)  # fmt: skip
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.8, 1.2), m.bias.uniform_(-0.1, 0.1)
        net.heads.head.weight.normal_(0, 0.5)  # torchvision zero-initialises the head: make predictions differ
    return Normalized(net, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).eval()


def tiny_gn_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.GroupNorm(4, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, N_CLASSES)).eval()  # fmt: skip


def batches(n: int = 3, bs: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(bs, 3, 32, 32, generator=g) for _ in range(n)]


def source() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.rand(10, 3, 32, 32, generator=g), torch.arange(N_CLASSES)) for _ in range(2)]


def expected_names(model: nn.Module, kind: str) -> set[str]:
    """Parameter names (relative to the model) the adapter should train."""
    out = set()
    for mn, m in model.named_modules():
        for pn, _ in m.named_parameters(recurse=False):
            name = f"{mn}.{pn}" if mn else pn
            if kind == "wb" and pn in ("weight", "bias"):
                out.add(name)
            if kind in ("ln", "ln-top") and isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                if kind == "ln-top" and (mn.endswith("encoder.ln")):  # the final norm of the ViT (a top layer)
                    continue
                out.add(name)
    return out


def run_adapter(name: str, model: nn.Module):
    cls = methods.get(name)
    a = methods.create(name, model, **{k: v for k, v in FAST.items() if k in cls.defaults})
    if cls.needs_source:
        a.prepare(source())
        a.snapshot()
    before = {n: p.detach().clone() for n, p in a.model.named_parameters()}
    outs = [a(x) for x in batches()]
    return a, before, outs


@pytest.mark.parametrize("model_fn", [tiny_vit, tiny_gn_cnn], ids=["vit", "groupnorm"])
@pytest.mark.parametrize("name", sorted(EXPECT))
def test_known_adapters_on_layernorm_and_groupnorm(name, model_fn):
    kind = EXPECT[name]
    model = model_fn()
    if kind == "refuse":
        with pytest.raises(UserError) as e:
            methods.create(name, model)
        msg = str(e.value)
        assert name in msg and ("LayerNorm" in msg or "GroupNorm" in msg) and "tent" in msg
        return
    a, before, outs = run_adapter(name, model)
    assert all(o.shape == (8, N_CLASSES) and torch.isfinite(o).all() for o in outs)
    opt = {id(p) for g in a.optimizer.param_groups for p in g["params"]} if a.optimizer else set()
    trainable = {n for n, p in a.model.named_parameters() if id(p) in opt}  # what the optimiser updates
    changed = {n for n, p in a.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    want = set() if kind == "frozen" else expected_names(a.model, kind)
    assert trainable == want
    if kind in ("ln", "ln-top"):
        assert changed == want  # exactly the normalisation affine parameters moved
    else:
        assert changed <= want and (changed or kind == "frozen")


@pytest.mark.parametrize("name", [n for n in methods.names() if n not in EXPECT])
def test_other_adapters_run_on_a_vit_or_refuse_clearly(name):
    """Adapters without an entry above (added later): they run on the tiny ViT, or refuse with a message."""
    try:
        _, _, outs = run_adapter(name, tiny_vit())
    except (UserError, TypeError) as e:
        assert str(e).strip(), f"{name} refused a ViT without a message"
        return
    assert all(o.shape == (8, N_CLASSES) for o in outs)


def test_sar_skips_the_official_top_layers_of_torchvision_and_timm_vits():
    """mr-eggplant/SAR collect_params skips blocks 9-11 and the final norm of ViT-B/16; same layers under our names."""
    from tta_bench.methods.sar import SAR, sar_params

    skip = tuple(SAR.defaults["skip_layers"])
    tv = Normalized(VisionTransformer(image_size=16, patch_size=8, num_layers=12, num_heads=1, hidden_dim=8,
                                      mlp_dim=8, num_classes=3), (0.5,) * 3, (0.5,) * 3)  # fmt: skip
    names = {id(p): n for n, p in tv.named_parameters()}
    kept = {names[id(p)] for p in sar_params(tv, skip)}
    layers = {n.split(".")[3] for n in kept if ".encoder_layer_" in n}
    assert layers == {f"encoder_layer_{i}" for i in range(9)} and not any("encoder.ln." in n for n in kept)
    timm = pytest.importorskip("timm")
    net = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=8, embed_dim=8, depth=12,
                                                           num_heads=1, num_classes=3)  # fmt: skip
    official = set()  # the official rule on the bare timm model (names without the zoo's wrapper)
    for nm, m in net.named_modules():
        if any(s in nm for s in ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")) or nm in ["norm"]:
            continue
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
            official |= {f"{nm}.{n}" for n, _ in m.named_parameters() if n in ("weight", "bias")}
    wrapped = Normalized(net, (0.5,) * 3, (0.5,) * 3)
    names = {id(p): n for n, p in wrapped.named_parameters()}
    assert {names[id(p)].removeprefix("model.") for p in sar_params(wrapped, skip)} == official


# --- the zoo: input normalisation as each checkpoint was trained ---------------------------------------------------
def test_torchvision_vit_uses_its_weights_normalisation_and_size(monkeypatch, tmp_path):
    """vit-b-16: mean/std from the weight enum's transforms (ImageNet stats for V1 and SWAG); SWAG E2E runs at 384."""
    import torchvision.models as tvm

    from tta_bench.zoo import torchvision_zoo as tz

    def tiny(arch, weights=None, image_size=224):  # a tiny ViT in place of ViT-B/16 (same code path, no download)
        return VisionTransformer(image_size=image_size, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8,
                                 mlp_dim=8)  # fmt: skip

    monkeypatch.setattr(tz.tvm, "get_model", tiny)
    monkeypatch.setattr(tz, "state_dict_for", lambda w, d: (tiny("vit", None, w.meta["min_size"][0]).state_dict(),
                                                            tmp_path / "w.pth"))  # fmt: skip
    monkeypatch.setattr(tz, "sha256_file", lambda p: "0" * 64)
    spec = types.SimpleNamespace(num_classes=1000, name="imagenet-c")
    ctx = ModelContext(tmp_path, tmp_path, torch.device("cpu"))
    from tta_bench.models import MODELS

    factory = MODELS.get("vit-b-16").factory
    for tag, size in (("IMAGENET1K_V1", 224), ("IMAGENET1K_SWAG_E2E_V1", 384)):
        model = factory(spec, ctx, weights_tag=tag)
        t = tvm.ViT_B_16_Weights[tag].transforms()
        norm = next(m for m in model.modules() if isinstance(m, Normalized))
        assert norm.mean.flatten().tolist() == pytest.approx(t.mean) and t.mean == [0.485, 0.456, 0.406]
        assert norm.std.flatten().tolist() == pytest.approx(t.std)
        assert model(torch.rand(2, 3, 224, 224)).shape == (2, 1000)  # a stream's 224 crop, resized when trained at 384
        assert model.tta_info["input"]["size"] == size


def test_timm_vit_reads_mean_std_from_timm(tmp_path):
    timm = pytest.importorskip("timm")
    from tta_bench.models import MODELS

    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    net = timm.create_model(name, pretrained=False)
    torch.save(net.state_dict(), tmp_path / "vit_tiny.pth")
    spec = types.SimpleNamespace(num_classes=1000, name="imagenet-c")
    ctx = ModelContext(tmp_path, tmp_path, torch.device("cpu"))
    model = MODELS.get("timm").factory(spec, ctx, name=name, weights=str(tmp_path / "vit_tiny.pth"))
    assert model.mean.flatten().tolist() == list(net.pretrained_cfg["mean"]) == [0.5, 0.5, 0.5]
    assert model.std.flatten().tolist() == [0.5, 0.5, 0.5]
    assert model.tta_info["timm_name"] == name
    with torch.no_grad():
        torch.testing.assert_close(model(torch.full((1, 3, 224, 224), 0.5)), net.eval()(torch.zeros(1, 3, 224, 224)))


def test_timm_offline_error_names_the_file(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from tta_bench.models import MODELS

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("network unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    spec = types.SimpleNamespace(num_classes=1000, name="imagenet-c")
    ctx = ModelContext(tmp_path, tmp_path, torch.device("cpu"))
    with pytest.raises(UserError, match=r"timm/vit_tiny_patch16_224\.augreg_in21k_ft_in1k\.safetensors"):
        MODELS.get("timm").factory(spec, ctx, name="vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    with pytest.raises(UserError, match="vit_tiny_patch16_224"):
        MODELS.get("timm").factory(spec, ctx, name="vit_tiny_patch16_2244")


@pytest.mark.real
@pytest.mark.slow
def test_harness_runs_sar_on_a_timm_vit_with_the_imagenet_preset(shared_data, tmp_path):
    """End to end: imagenet-c generated from the shared ImageNet sample, a timm ViT (random weights from a file),
    SAR's imagenet-c preset applied and recorded, the ViT's 0.5 normalisation recorded, a two-domain subset."""
    timm = pytest.importorskip("timm")
    import json

    from tta_bench.config import RunConfig
    from tta_bench.runner import run

    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    torch.save(timm.create_model(name, pretrained=False).state_dict(), tmp_path / "vit.pth")
    cfg = RunConfig(method="sar", stream="imagenet-c", model="timm", limit=4, batch_size=4, device="cpu",
                    model_opts={"name": name, "weights": str(tmp_path / "vit.pth")}, out=str(tmp_path / "runs"),
                    stream_opts={"clean_dir": str(shared_data / "imagenet-sample" / "images"),
                                 "domains": "fog,gaussian_noise"})  # fmt: skip
    result = run(cfg, quiet=True)
    config = json.loads((result.folder / "config.json").read_text())
    assert config["preset"]["family"] == "imagenet-c"
    assert config["preset"]["source"] == "mr-eggplant/SAR:main.py@20f6e24"
    assert config["config"]["method_opts"]["lr"] == 0.00025
    assert config["model_info"]["input"]["mean"] == [0.5, 0.5, 0.5]
    assert [d["domain"] for d in config["domain_order"]] == ["fog", "gaussian_noise"]
    assert result.summary["n_samples"] == 8
