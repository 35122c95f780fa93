"""ESPNet and the segmentation zoo: checkpoint compatibility, dense (N,C,H,W) outputs, inference modes, and the
adapters on dense outputs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from tta_bench import methods
from tta_bench.memory import measure
from tta_bench.models import MODELS, ModelContext
from tta_bench.zoo.espnet import STATS, ESPNet, ESPNetInput
from tta_bench.zoo.segmentation_zoo import DeepLabV2, DenseInference, _multi_level, deeplabv3

CAMVID = SimpleNamespace(num_classes=11)
CITY = SimpleNamespace(num_classes=19)


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny convolutions: one intra-op thread is faster, and far faster on a shared, loaded CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def ctx(weights_dir: Path) -> ModelContext:
    return ModelContext(Path(weights_dir), Path(weights_dir) / "cache", torch.device("cpu"))


def test_architecture_matches_the_released_checkpoints_layout():
    # Facts of sacmehta/ESPNet's decoder checkpoints (189 tensors each): the CamVid one (12 outputs) concatenates
    # the 19-channel level-1 features before the last CBR, the Cityscapes one (20 outputs) the 16-channel ones.
    keep = lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # noqa: E731 (not saved)
    cam = keep(ESPNet(12, skip_image=True).state_dict())
    city = keep(ESPNet(20, skip_image=False).state_dict())
    assert len(cam) == len(city) == 189
    assert cam["conv.conv.weight"].shape == (12, 31, 3, 3) and city["conv.conv.weight"].shape == (20, 36, 3, 3)
    assert cam["encoder.level3_0.c1.conv.weight"].shape == (25, 131, 3, 3)
    assert cam["combine_l2_l3.1.d1.conv.weight"].shape == (4, 2, 3, 3)
    assert city["encoder.level3.7.bn.act.weight"].shape == (128,) and "encoder.level3.8.c1.conv.weight" not in city


def test_output_is_dense_at_any_size():
    torch.manual_seed(0)
    m = ESPNetInput(ESPNet(12, skip_image=True), *STATS["camvid"]).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 3, 37, 53))
    assert out.shape == (2, 11, 37, 53) and torch.isfinite(out).all()


def test_input_transform_is_bgr_scaled_like_the_training_code():
    seen = {}

    class Probe(nn.Module):
        def forward(self, z):
            seen["z"] = z
            return torch.zeros(z.shape[0], 12, *z.shape[-2:])

    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    m = ESPNetInput(Probe(), mean, std)
    x = torch.rand(1, 3, 8, 8)
    m(x)
    bgr255 = x.flip(1) * 255
    want = ((bgr255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)) / 255
    assert torch.allclose(seen["z"], want, atol=1e-6)


def test_missing_weights_is_a_user_error(tmp_path):
    from tta_bench.kernel import UserError

    with pytest.raises(UserError, match="espnet_p_2_q_8_camvid.pth"):
        MODELS.get("espnet-camvid").factory(CAMVID, ctx(tmp_path))
    with pytest.raises(UserError, match="model.weights"):
        MODELS.get("deeplabv2-resnet101").factory(CITY, ctx(tmp_path))


def test_slide_and_resize_inference():
    torch.manual_seed(0)
    net = nn.Conv2d(3, 5, 1)  # translation-equivariant: sliding windows must reproduce the whole-image logits
    x = torch.rand(1, 3, 20, 30)
    whole = DenseInference(net, "whole")(x)
    slide = DenseInference(net, "slide", crop=[8, 12], stride=[5, 7])(x)
    assert slide.shape == whole.shape and torch.allclose(slide, whole, atol=1e-5)
    resized = DenseInference(net, "resize", size=10)(x)
    assert resized.shape == (1, 5, 20, 30)


def test_deeplab_models_dense_logits():
    m = deeplabv3("resnet50", num_classes=19).eval()  # the plain function benchmarks/memory.py can use
    with torch.no_grad():
        assert m(torch.rand(1, 3, 40, 56)).shape == (1, 19, 40, 56)
    # batch 1 with test-batch statistics: the image-pooling BN (1×1 input) keeps its source statistics
    assert methods.create("norm", m)(torch.rand(1, 3, 40, 56)).shape == (1, 19, 40, 56)
    net = DeepLabV2(19).eval()
    assert [c.dilation for c in net.layer5.conv2d_list] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert net.layer2[0].conv1.stride == (2, 2) and net.layer4[0].conv2.dilation == (4, 4)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 41, 41)).shape == (1, 19, 6, 6)  # output stride 8
    sd = {"layer5.conv2d_list.0.weight": 1, "layer6.conv2d_list.0.weight": 2, "conv1.weight": 3}
    assert _multi_level(sd) == {"layer5.conv2d_list.0.weight": 2, "conv1.weight": 3}


DENSE_ADAPTERS = [
    "source",
    "norm",
    "alpha_bn",
    "tent",
    "ecotta",
    "cotta",
]


class TinySeg(nn.Module):
    """A small ResNet-named dense model (stages `layer1..3`), for adapters that partition residual stages."""

    def __init__(self, classes: int = 11) -> None:
        super().__init__()
        block = lambda i, o, s: nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
        self.layer1 = nn.Sequential(block(3, 8, 2), block(8, 8, 1))
        self.layer2 = nn.Sequential(block(8, 16, 2), block(16, 16, 1))
        self.layer3 = nn.Sequential(block(16, 16, 1))
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.layer3(self.layer2(self.layer1(x))))
        return nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", DENSE_ADAPTERS)
def test_adapters_on_dense_outputs(name):
    if name not in methods.names():
        pytest.skip(f"adapter {name} not registered yet")
    torch.manual_seed(0)
    if name == "ecotta":  # EcoTTA partitions layerN/features stages; ESPNet's blocks live in ModuleLists
        model = TinySeg().eval()
    else:
        model = ESPNetInput(ESPNet(12, skip_image=True), *STATS["camvid"]).eval()
    adapter = methods.create(name, model)
    x = torch.rand(2, 3, 24, 32)
    if adapter.needs_source:  # a warm-up on dense labels with ignore pixels
        y = torch.randint(0, 11, (2, 24, 32))
        y[:, :4] = 255
        adapter.prepare([(x, y)])
        adapter.snapshot()
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    out = adapter(x)
    assert out.shape == (2, 11, 24, 32) and torch.isfinite(out).all()
    out2 = adapter(x)
    assert out2.shape == out.shape
    if name in ("tent", "ecotta", "cotta"):  # they train parameters: the second prediction differs
        assert not torch.allclose(out, out2)
    adapter.reset()
    for k, v in adapter.state_dict().items():
        assert torch.equal(v, before[k]), k
    mem = measure(adapter, x)
    assert mem["adapt_mb"] > 0


@pytest.mark.real
@pytest.mark.parametrize("name,classes", [("espnet-camvid", 11), ("espnet-cityscapes", 19)])
def test_real_checkpoints_load_strict(shared_data, name, classes):
    spec = SimpleNamespace(num_classes=classes)
    m = MODELS.get(name).factory(spec, ctx(shared_data / "models"))  # default path: <weights dir>/espnet/<file>
    assert m.tta_info["sha256"] and m.tta_info["weights"].endswith(".pth")
    with torch.no_grad():
        out = m.eval()(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, classes, 64, 96)


@pytest.mark.real
def test_real_camvid_checkpoint_segments(shared_data):
    """4 real CamVid test images: the released model must segment them (mIoU far above chance)."""
    from tta_bench.data.segmentation import camvid
    from tta_bench.metrics import SegmentationMeter

    m = MODELS.get("espnet-camvid").factory(CAMVID, ctx(shared_data / "models")).eval()
    ds = camvid(shared_data / "camvid", "test", limit=4)
    x = torch.stack([ds[i][0] for i in range(4)])
    y = torch.stack([ds[i][1] for i in range(4)])
    meter = SegmentationMeter(1, "cpu", 11)
    with torch.no_grad():
        meter.update(m(x), y, torch.zeros(4, dtype=torch.long))
    s = meter.summary()
    assert s["pixel_acc"] > 80 and s["miou"] > 45, s
    assert np.isfinite(s["ece"])
