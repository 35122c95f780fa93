"""One contract test over every registered adapter (`methods.names()`; adapters added later are covered).

On a tiny BatchNorm CNN (CLIP prompt learners, `requires = "clip"`, get the tiny random CLIP): output
shape (N,C); `predict` has no side effect; adapting under the caller's `torch.no_grad()` does exactly what
it does with gradients enabled; `reset()` restores every parameter and buffer bit-identically (and the
non-tensor state: the same seeded batch gives the same output again); batch size 1 either works or raises
an error with a message. Adapters with `needs_source` get `prepare()` on a small loader first.
Batch size 1 is supported by eata, eta, sar, cotta, rotta, lame, tent, norm, source on BatchNorm models
whose BN layers see more than one value per channel (spatial positions); see BS1_WORKS.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn as nn

from tta_bench import methods
from tta_bench.zoo.small_cnn import SmallCNN

# Hyper-parameters that keep the test fast (applied only where the adapter declares them).
FAST = {
    "n_aug": 2,
    "update_frequency": 8,
    "memory_size": 16,
    "fisher_size": 16,
    "epochs": 1,
    "e_margin_frac": 1.0,
    "margin_e0_frac": 1.0,
    "num_samples_warm_up": 16,
}
BS1_WORKS = {"eata", "eta", "sar", "cotta", "rotta", "lame", "tent", "norm", "source"}
N_CLASSES = 5


def tiny_cnn() -> nn.Module:
    """The suite's small BN CNN (4 conv stages in `features`, linear head) at width 4, random source state."""
    torch.manual_seed(0)
    model = SmallCNN(N_CLASSES, 3, width=4)
    with torch.no_grad():  # non-trivial source statistics and affine parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def build_model(cls) -> nn.Module:
    if getattr(cls, "requires", None) == "clip":
        pytest.importorskip("open_clip", reason="CLIP prompt learners run on clip-tiny (open_clip, [test] extra)")
        from tta_bench.models import MODELS

        spec = types.SimpleNamespace(
            class_names=[f"class {i}" for i in range(N_CLASSES)], num_classes=N_CLASSES, name="contract"
        )
        return MODELS.get("clip-tiny").factory(spec, None)
    if getattr(cls, "requires", None) == "vit":  # prompt-token methods (FOA): a tiny torchvision ViT
        from torchvision.models import VisionTransformer

        torch.manual_seed(0)
        vit = VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=N_CLASSES)
        nn.init.normal_(vit.heads.head.weight, 0, 0.5)  # torchvision zero-initialises the head
        return vit.eval()
    return tiny_cnn()


def batches(n: int = 3, bs: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(bs, 3, 32, 32, generator=g) for _ in range(n)]


def state(adapter: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in adapter.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def make(name: str) -> nn.Module:
    cls = methods.get(name)
    adapter = methods.create(name, build_model(cls), **{k: v for k, v in FAST.items() if k in cls.defaults})
    if cls.needs_source:
        g = torch.Generator().manual_seed(2)
        loader = [(torch.rand(8, 3, 32, 32, generator=g), torch.arange(8) % N_CLASSES) for _ in range(2)]
        adapter.prepare(loader)
        adapter.snapshot()
    return adapter


def run(adapter: nn.Module, xs: list[torch.Tensor], grad: bool) -> list[torch.Tensor]:
    torch.manual_seed(3)
    outs = []
    for x in xs:
        if grad:
            outs.append(adapter(x).detach())
        else:
            with torch.no_grad():
                outs.append(adapter(x))
    return outs


@pytest.mark.parametrize("name", methods.names())
def test_adapter_contract(name: str) -> None:
    adapter = make(name)
    source = state(adapter)
    xs = batches()

    # predict(x): predictions of the current state, no side effect (deterministic, state unchanged)
    p1 = adapter.predict(xs[0])
    assert p1.shape == (8, N_CLASSES)
    assert_same_state(state(adapter), source)
    assert torch.equal(adapter.predict(xs[0]), p1)

    # adapting with gradients enabled, then from the reset state under the caller's no_grad: identical
    outs = run(adapter, xs, grad=True)
    assert all(o.shape == (8, N_CLASSES) and not o.isnan().any() for o in outs)
    adapted = state(adapter)
    adapter.reset()
    assert_same_state(state(adapter), source)
    outs_ng = run(adapter, xs, grad=False)
    for o, o2 in zip(outs, outs_ng):
        assert torch.equal(o, o2)
    assert_same_state(state(adapter), adapted)
    trainable = {k for k, p in adapter.named_parameters() if p.requires_grad}
    if name in ("eata", "eta", "sar", "cotta", "rotta"):  # these train on the stream
        assert any(not torch.equal(adapted[k], source[k]) for k in trainable)

    adapter.reset()
    assert_same_state(state(adapter), source)

    # batch size 1: works, or fails with an explanatory error
    try:
        out1 = adapter(xs[0][:1])
    except Exception as e:  # noqa: BLE001 - any documented failure is acceptable if it explains itself
        assert name not in BS1_WORKS, f"{name} should support batch size 1: {e}"
        assert str(e).strip()
    else:
        assert out1.shape == (1, N_CLASSES)


# --- the caller's model is never changed ----------------------------------------------------------------------
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
PLAIN = (bool, int, float, str, tuple, type(None))


def fingerprint(model: nn.Module) -> dict:
    """Everything about `model` an adapter could change: tensors (values, dtypes, identity), requires_grad, .grad,
    buffers (None ones too), module tree and types, hooks of every kind, training mode and plain attributes."""
    out = {}
    for name, m in model.named_modules():
        out[f"{name}:type"] = type(m)
        out[f"{name}:children"] = [(n, id(c)) for n, c in m._modules.items()]
        out[f"{name}:attrs"] = {k: v for k, v in vars(m).items() if not k.startswith("_") and isinstance(v, PLAIN)}
        out[f"{name}:hooks"] = {h: [(k, id(f)) for k, f in getattr(m, h, {}).items()] for h in HOOK_DICTS}
        for k, p in m._parameters.items():
            out[f"{name}.{k}:param"] = None if p is None else (id(p), p.detach().clone(), p.requires_grad, p.grad)
        for k, b in m._buffers.items():
            out[f"{name}.{k}:buffer"] = None if b is None else (id(b), b.detach().clone(), b.requires_grad)
    return out


def assert_same_model(before: dict, after: dict) -> None:
    assert before.keys() == after.keys(), sorted(set(before) ^ set(after))
    for k, a in before.items():
        b = after[k]
        if isinstance(a, tuple) and any(torch.is_tensor(v) for v in a):
            assert len(a) == len(b) and all(
                torch.equal(u, v) and u.dtype == v.dtype if torch.is_tensor(u) else u is v or u == v
                for u, v in zip(a, b)
            ), f"{k} changed"
        else:
            assert a == b, f"{k} changed: {a!r} -> {b!r}"


def prepare_loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.rand(8, 3, 32, 32, generator=g), torch.arange(8) % N_CLASSES) for _ in range(2)]


@pytest.mark.parametrize("name", methods.names())
def test_adapter_leaves_the_callers_model_bit_identical(name: str) -> None:
    cls = methods.get(name)
    model = build_model(cls)
    before = fingerprint(model)
    hp = {k: v for k, v in FAST.items() if k in cls.defaults}
    adapter = methods.create(name, model, **hp)
    assert adapter.model is not model
    assert_same_model(before, fingerprint(model))
    if cls.needs_source:
        adapter.prepare(prepare_loader())
        adapter.snapshot()
        step = adapter.prepare_step()
        if step is not None:
            step(batches(1)[0])
    for x in batches(3):
        adapter(x)
    adapter.predict(x)
    adapter.reset()
    adapter(x)
    methods.create(name, model, **hp)(x)  # a second adapter on the same model: the same untouched source
    assert_same_model(before, fingerprint(model))
    model(x)  # the caller's model still runs as it did (no hook or swapped module left behind)
    assert_same_model(before, fingerprint(model))


@pytest.mark.parametrize("name", methods.names())
def test_inplace_adapts_the_given_model(name: str) -> None:
    """`inplace=True` wraps the model itself (no copy): what the adapter changes is changed in the caller's model."""
    cls = methods.get(name)
    model = build_model(cls)
    adapter = methods.create(name, model, inplace=True, **{k: v for k, v in FAST.items() if k in cls.defaults})
    assert adapter.model is model
    if name == "tent":  # Tent trains the BN affine parameters of the given model and drops its running statistics
        w0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        for x in batches(2):
            adapter(x)
        assert w0 and any(not torch.equal(p, w0[n]) for n, p in model.named_parameters() if n in w0)
        assert all(m.running_mean is None for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_the_fingerprint_sees_each_kind_of_change() -> None:
    """The check above is not vacuous: each way an adapter could damage the caller's model is caught."""
    from tta_bench.methods.base import use_batch_stats

    changes = [
        lambda m: m.features[0][0].weight.data.add_(1e-6),
        lambda m: m.features[0][1].running_var.mul_(2),
        lambda m: use_batch_stats(m),
        lambda m: m.features[0][0].weight.requires_grad_(False),
        lambda m: m.features[0][0].register_forward_hook(lambda *a: None),
        lambda m: m.features[0][0].register_forward_pre_hook(lambda *a: None),
        lambda m: m.features[0][0].register_full_backward_hook(lambda *a: None),
        lambda m: m.features[0].__setitem__(1, nn.BatchNorm2d(4)),
        lambda m: m.train(),
        lambda m: setattr(m.features[0][1], "momentum", 0.5),
        lambda m: setattr(m.features[0][0], "weight", nn.Parameter(m.features[0][0].weight.detach().clone())),
    ]
    for i, change in enumerate(changes):
        model = tiny_cnn()
        before = fingerprint(model)
        change(model)
        with pytest.raises(AssertionError):
            assert_same_model(before, fingerprint(model))
            pytest.fail(f"change {i} not seen")


def test_the_base_calls_reset_state_after_configure() -> None:
    """A new adapter keeps its non-tensor state in `reset_state()` only: the base calls it after `configure()`, so
    the first forward finds it (a new adapter used to die with AttributeError unless configure() called it)."""
    calls = []

    class Counting(methods.Adapter):
        def configure(self) -> None:
            calls.append("configure")

        def reset_state(self) -> None:
            calls.append("reset_state")
            self.seen = 0

        def adapt(self, x: torch.Tensor) -> torch.Tensor:
            self.seen += len(x)
            return self.model(x)

    adapter = Counting(tiny_cnn())
    assert calls == ["configure", "reset_state"]
    adapter(batches(1)[0])
    assert adapter.seen == 8
    adapter.reset()
    assert adapter.seen == 0 and calls[-1] == "reset_state"


@pytest.mark.parametrize(
    ("spec", "inside", "outside", "text"),
    [
        (">=1", [1, 2.5, 10**6], [0, 0.999, float("nan"), True], ">= 1"),
        (">0", [1e-9, 3], [0, -1], "> 0"),
        (">=1e-8", [1e-8], [0.0], ">= 1e-8"),
        ("[0,1]", [0, 0.5, 1], [-0.1, 1.01], "in [0, 1]"),
        ("[0,1)", [0, 0.999], [1], "in [0, 1)"),
        ("(0,1]", [1, 0.001], [0], "in (0, 1]"),
        ("(0,1)", [0.5], [0, 1], "in (0, 1)"),
        (("adam", "sgd"), ["adam", "sgd"], ["Adam", 1], "one of 'adam', 'sgd'"),
    ],
)
def test_the_range_language(spec, inside, outside, text) -> None:
    from tta_bench.methods.base import in_range, range_text

    assert all(in_range(v, spec) for v in inside), spec
    assert not any(in_range(v, spec) for v in outside), spec
    assert range_text(spec) == text
    if not isinstance(spec, tuple):  # tuples of numbers are checked element by element
        assert in_range(tuple(inside), spec) and not in_range((*inside, outside[0]), spec)
