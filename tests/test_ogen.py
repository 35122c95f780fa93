"""OGEN (methods/ogen.py) on the tiny random CLIP: generator, kNN keys, gradients, teacher, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

from test_coop import NAMES, source  # noqa: E402  (tests/ is on sys.path)

from tta_bench.config import RunConfig  # noqa: E402
from tta_bench.methods import OGEN  # noqa: E402
from tta_bench.methods.ogen import FeatureGenerator, window_size  # noqa: E402
from tta_bench.models import ModelContext  # noqa: E402
from tta_bench.runner import run  # noqa: E402
from tta_bench.zoo.clip_zoo import clip_tiny  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    ctx = ModelContext(Path("/nonexistent"), Path("/nonexistent"), torch.device("cpu"))
    return clip_tiny(SimpleNamespace(name="t", class_names=NAMES), ctx)


def fitted(model, **hp) -> tuple[OGEN, torch.Tensor, torch.Tensor]:
    a = OGEN(model, **hp)
    data = source(classes=(0, 1, 2, 3))
    with torch.no_grad():  # the adapter's frozen copy (the caller's model is left as given)
        feats = torch.cat([a.model.encode_image(x) for x, _ in data])
    labels = torch.cat([y for _, y in data])
    a.known_mask[:4] = True
    a.fit_statistics(feats, labels)
    return a, feats, labels


def test_generator_shapes():
    g = FeatureGenerator(64, heads=4)
    q, k, v = torch.randn(5, 1, 64), torch.randn(5, 3, 64), torch.randn(5, 3, 64)
    out = g(q, k, v)
    assert out.shape == (5, 64)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    assert g(torch.randn(5, 3, 64), torch.randn(5, 1, 64), torch.randn(5, 1, 64)).shape == (15, 64)


def test_keys_are_k_nearest_known_classes(tiny):
    a, feats, labels = fitted(tiny, k=2)
    means = torch.stack([F.normalize(feats[labels == c].mean(0), dim=0) for c in range(4)])
    sim = means @ means.t()
    for c in range(4):
        order = [j for j in sim[c].argsort(descending=True).tolist() if j != c]
        assert set(a.neighbors[c].tolist()) == set(order[:2])
    assert (a.neighbors[4:] == -1).all()  # unknown classes have no statistics
    w = a.prompt(a.model)
    y = torch.tensor([0, 3, 1])
    pred, nb, values = a.synthesize(w, y)
    assert pred.shape == (3, tiny.embed_dim) and torch.equal(nb, a.neighbors[y])
    assert values.shape == (3, 2, tiny.embed_dim)
    lo, hi = a.feat_mean[nb], a.feat_mean[nb] + a.feat_std[nb]
    assert ((values >= lo - 1e-6) & (values <= hi + 1e-6)).all()  # mean + U(0,1) * std


def test_synthesized_loss_reaches_prompt_and_generator(tiny):
    a, feats, labels = fitted(tiny)
    known = a.known_classes()
    w = torch.zeros(len(NAMES), tiny.embed_dim).index_put((known,), a.prompt(a.model, known))
    pred, _, _ = a.synthesize(w, labels)
    loss = F.cross_entropy(a.model.logits(pred, w[known]), labels)  # synthesised features only
    loss.backward()
    assert a.prompt.ctx.grad is not None and a.prompt.ctx.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in a.generator.mlp.parameters())
    assert a.generator.attn.in_proj_weight.grad.abs().sum() > 0
    a.zero_grad()
    a.step_loss(feats, labels, epoch=a.hp.epochs - 1).backward()  # full loss incl. the new-class term
    assert a.prompt.ctx.grad.abs().sum() > 0


def test_teacher_is_mean_of_recent_states_and_encoders_frozen(tiny):
    assert [window_size(t, 4, 2) for t in (1, 2, 3, 4)] == [2, 3, 3, 4]
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    a = OGEN(tiny, epochs=4, window=2, lr=0.02, warmup_epochs=0)
    a.prepare(source(classes=(0, 1, 2, 3)))
    recent = a.history[-window_size(4, 4, 2) :]
    assert len(recent) == 4
    teacher = dict(a.teacher.named_parameters())
    for name in recent[0]:
        assert torch.allclose(teacher[name], torch.stack([s[name] for s in recent]).mean(0)), name
    assert not torch.allclose(teacher["prompt.ctx"], a.prompt.ctx)  # an average, not the last state
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert a.known_mask.sum() == 4


@pytest.mark.parametrize("method", ["coop", "ogen"])
def test_digits_b2n_end_to_end(method, runs_dir):
    cfg = RunConfig(method=method, stream="digits-b2n", method_opts={"epochs": 2}, out=str(runs_dir), limit=100)
    res = run(cfg, quiet=True)
    s = json.loads((res.folder / "summary.json").read_text())
    assert s["model"] == "clip-tiny"
    assert s["base_acc"] == pytest.approx(100 - s["domain_errors"]["base"])
    assert s["new_acc"] == pytest.approx(100 - s["domain_errors"]["new"])
    b, n = s["base_acc"], s["new_acc"]
    assert s["harmonic_mean"] == pytest.approx(2 * b * n / (b + n))
    assert s["prepare_s"] > 0 and s["prepare_adapt_mb"] > 0
    conf = json.loads((res.folder / "config.json").read_text())
    assert conf["prepare"]["cached"] is False and conf["samples_per_domain"] == {"0/base": 100, "0/new": 100}
    again = run(RunConfig(**{**cfg.__dict__, "seed": 0}), force=True, quiet=True)  # prepare comes from the cache
    assert json.loads((again.folder / "config.json").read_text())["prepare"]["cached"] is True
    assert again.summary["harmonic_mean"] == pytest.approx(s["harmonic_mean"])
