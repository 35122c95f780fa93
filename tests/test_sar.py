"""SAR: step-for-step against a plain restatement of mr-eggplant/SAR (sar.py + sam.py); filter and recovery."""

from __future__ import annotations

import copy
import math

import torch
from test_eata import confident_cnn, data

from tta_bench.methods import SAR


def ent(logits: torch.Tensor) -> torch.Tensor:
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def reference_sar(model, params, xs, margin, rho=0.05, reset_constant=0.2):
    """forward_and_adapt_sar with SAM(SGD lr 0.00025, momentum 0.9); recovery = reload the source state_dict."""
    source = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(params, 0.00025, momentum=0.9)
    ema, outs, emas = None, [], []
    for x in xs:
        opt.zero_grad()
        outputs = model(x)
        e = ent(outputs)
        keep = torch.where(e < margin)
        e[keep].mean().backward()
        with torch.no_grad():  # SAM first step
            norm = torch.norm(torch.stack([p.grad.norm(p=2) for p in params]), p=2)
            old = [p.detach().clone() for p in params]
            for p in params:
                p.add_(p.grad * (rho / (norm + 1e-12)))
        opt.zero_grad()
        e2 = ent(model(x))[keep]
        loss2 = e2[torch.where(e2 < margin)].mean()
        if not math.isnan(loss2.item()):
            ema = loss2.item() if ema is None else 0.9 * ema + (1 - 0.9) * loss2.item()
        loss2.backward()
        with torch.no_grad():  # SAM second step
            for p, o in zip(params, old):
                p.copy_(o)
        opt.step()
        opt.zero_grad()
        if ema is not None and ema < reset_constant:
            model.load_state_dict(source)  # the optimizer (momentum) is not reset, as in the official code
        outs.append(outputs.detach())
        emas.append(ema)
    return outs, emas


def check_against_reference(reset_constant: float, margin_frac: float = 0.8) -> SAR:
    # margin 0.8·ln C (official default 0.4): with the tiny random CNN some samples must pass both filters
    adapter = SAR(confident_cnn(), reset_constant=reset_constant, margin_e0_frac=margin_frac)
    ref = copy.deepcopy(adapter.model)
    params = [p for p in ref.parameters() if p.requires_grad]
    xs = data(4, seed=7)
    outs, emas = reference_sar(ref, params, xs, margin_frac * math.log(5), reset_constant=reset_constant)
    for x, o, e in zip(xs, outs, emas):
        torch.testing.assert_close(adapter(x), o)
        assert (adapter.ema is None) == (e is None) and (e is None or math.isclose(adapter.ema, e))
    for p, q in zip(adapter.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    return adapter


def test_sar_matches_official() -> None:
    adapter = check_against_reference(reset_constant=0.2)
    assert adapter.ema is not None and adapter.recoveries == 0


def test_sar_model_recovery_matches_official() -> None:
    adapter = check_against_reference(reset_constant=10.0)  # e_m < 10 always: recovery after every step
    assert adapter.recoveries == 4
    assert adapter.ema is not None  # kept after recovery, as in the official SAR.forward
    assert all(torch.equal(p, adapter.source_state[f"model.{k}"]) for k, p in adapter.model.named_parameters())
    assert adapter.optimizer.state  # momentum kept by the recovery...
    adapter.reset()
    assert not adapter.optimizer.state and adapter.ema is None  # ...but not by reset()


def test_sar_reliable_filter_no_reliable_sample_no_change() -> None:
    adapter = SAR(confident_cnn(), margin_e0_frac=1e-6)
    before = [p.detach().clone() for p in adapter.trainable_parameters()]
    adapter(data(1, seed=8)[0])
    assert adapter.ema is None  # NaN loss: the moving average is not updated
    assert all(torch.equal(p, b) for p, b in zip(adapter.trainable_parameters(), before))


def test_sar_skips_top_layers() -> None:
    adapter = SAR(confident_cnn(), skip_layers=("features.3",))
    names = {n for n, p in adapter.model.named_parameters() if p.requires_grad}
    assert names and not any(n.startswith("features.3") for n in names)
    assert "features.2.1.weight" in names and "fc.weight" not in names
