"""tta_aug: against a plain restatement of the suite's TTAug.forward with its AlphaBatchNorm (alpha 0.1)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from test_adapter_contract import tiny_cnn
from test_memo import fixed_views

from tta_bench.methods import TTAug


class SuiteAlphaBN(nn.Module):
    """The suite's AlphaBatchNorm: batch statistics from a momentum-1 BN, mixed (1 - a) source + a batch."""

    def __init__(self, layer: nn.BatchNorm2d, alpha: float) -> None:
        super().__init__()
        self.layer, self.alpha = layer.eval(), alpha
        self.norm = nn.BatchNorm2d(layer.num_features, affine=False, momentum=1.0)

    def forward(self, x):
        self.norm(x)
        mean = (1 - self.alpha) * self.layer.running_mean + self.alpha * self.norm.running_mean
        var = (1 - self.alpha) * self.layer.running_var + self.alpha * self.norm.running_var
        return F.batch_norm(x, mean, var, self.layer.weight, self.layer.bias, False, 0, self.layer.eps)


def suite_model(model: nn.Module, alpha: float = 0.1) -> nn.Module:
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, SuiteAlphaBN(child, alpha))
    return model


def test_tta_aug_matches_suite() -> None:
    model = tiny_cnn()
    adapter = TTAug(model)
    adapter.views = fixed_views
    ref = suite_model(model)
    g = torch.Generator().manual_seed(6)
    xs = torch.rand(3, 3, 32, 32, generator=g)
    want = []
    with torch.no_grad():
        for x in xs:
            want.append(ref(torch.cat([x[None], fixed_views(x)])).mean(0, keepdim=True))
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    torch.testing.assert_close(adapter(xs), torch.cat(want))
    assert all(torch.equal(v, before[k]) for k, v in adapter.state_dict().items())  # nothing trained
    assert adapter.trainable_parameters() == []
    assert not torch.allclose(adapter(xs), model(xs))


def test_tta_aug_real_views_change_predictions_and_predict_is_deterministic() -> None:
    adapter = TTAug(tiny_cnn(), n_aug=4)
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(1)
    a = adapter(x)
    torch.manual_seed(1)
    torch.testing.assert_close(adapter(x), a)
    assert torch.equal(adapter.predict(x), adapter.predict(x))
    assert not torch.allclose(a, tiny_cnn()(x))
