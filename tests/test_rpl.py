"""RPL: step-for-step against a plain restatement of the suite's `methods/rpl.py` + `GeneralizedCrossEntropy`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from test_adapter_contract import tiny_cnn

from tta_bench.methods import RPL


def data(n: int, seed: int, bs: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, 32, 32, generator=g) for _ in range(n)]


def reference_model(model: nn.Module) -> tuple[nn.Module, list[nn.Parameter]]:
    """configure_model + collect_params of the official code, written out."""
    model = copy.deepcopy(model).eval().requires_grad_(False)
    params = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            m.requires_grad_(True)
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
            params += [p for n, p in m.named_parameters() if n in ("weight", "bias")]
    return model, params


def gce(logits: torch.Tensor, q: float = 0.8) -> torch.Tensor:
    probs = logits.softmax(1)
    targets = probs.argmax(dim=1)
    p = probs.index_select(-1, targets).diag()
    return (1.0 - p**q) / q


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_rpl_matches_official(opt: str) -> None:
    model = tiny_cnn()
    with torch.no_grad():
        model.fc.weight.mul_(3.0)  # confident enough that the loss has a real gradient
    hp = {"optimizer": "sgd", "lr": 5e-3, "momentum": 0.9, "nesterov": True} if opt == "sgd" else {}
    adapter = RPL(model, **hp)
    ref, params = reference_model(model)
    if opt == "sgd":
        ref_opt = torch.optim.SGD(params, lr=5e-3, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True)
    else:
        ref_opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    source = [p.detach().clone() for p in params]
    for x in data(4, seed=1):
        outputs = ref(x)
        loss = gce(outputs).mean(0)
        loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        torch.testing.assert_close(adapter(x), outputs.detach())
    trained = adapter.trainable_parameters()
    assert len(trained) == len(params) == 8  # 4 BN layers x (weight, bias)
    for p, q, s in zip(trained, params, source):
        torch.testing.assert_close(p, q)
        assert not torch.equal(p, s)
    assert not any(p.requires_grad for p in adapter.model.fc.parameters())


def test_rpl_trains_layernorm_affine() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 4))
    adapter = RPL(model, lr=1e-2)
    names = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert names == ["2.weight", "2.bias"]
    ref, params = reference_model(model)
    opt = torch.optim.Adam(params, lr=1e-2)
    for x in [torch.randn(8, 3, 2, 2) for _ in range(3)]:
        out = ref(x)
        gce(out).mean().backward()
        opt.step()
        opt.zero_grad()
        torch.testing.assert_close(adapter(x), out.detach())
    torch.testing.assert_close(adapter.model[2].weight, ref[2].weight)


def test_rpl_presets_cite_their_files() -> None:
    assert set(RPL.presets) == {"cifar10-c", "cifar100-c", "imagenet-c"}
    assert RPL.presets["imagenet-c"]["options"]["lr"] == 5e-4
    assert all("rpl.yaml" in p["source"] for p in RPL.presets.values())
