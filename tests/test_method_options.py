"""Every registered adapter declares its options once (`options = {name: opt(default, meaning, range)}`), documents
each of them, and carries exactly the optimizer keys of the optimizers it can use (issue #26 item 5, issue #27).

`Adapter.__init_subclass__` derives `defaults`, `ranges` and `option_docs` from `options`; a class that sets any of
those three by hand next to (or instead of) `options` is a parallel declaration that can drift. The optimizer keys
come from `optimizer_options(...)`: an Adam-only method has no momentum/nesterov, an SGD-only one no betas, and the
`optimizer` option's choices are exactly the optimizers its defaults and presets use.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tta_bench import methods
from tta_bench.kernel import UserError
from tta_bench.methods._doc import UNDOCUMENTED, option_lines
from tta_bench.methods.base import (
    KEYS_OF_OPTIMIZER,
    OPTIMIZER_KEYS,
    Adapter,
    Opt,
    make_optimizer,
    norm_affine_params,
    opt,
    optimizer_options,
    train_only,
)

DERIVED = ("defaults", "ranges", "option_docs")


def adapter_classes(cls: type) -> list[type]:
    """`cls` and its bases strictly below Adapter, nearest first."""
    return [c for c in cls.__mro__ if isinstance(c, type) and issubclass(c, Adapter) and c is not Adapter]


@pytest.mark.parametrize("name", methods.names())
def test_options_are_declared_once(name):
    cls = methods.get(name)
    chain = adapter_classes(cls)
    declaring = [c.__name__ for c in chain if "options" in c.__dict__]
    assert declaring, f"{name}: neither {cls.__name__} nor a base below Adapter declares `options`"
    for c in chain:
        by_hand = [k for k in DERIVED if k in c.__dict__ and "options" not in c.__dict__]
        assert not by_hand, f"{name}: {c.__name__} sets {by_hand} by hand; declare `options = {{k: opt(...)}}` instead"
    assert all(isinstance(o, Opt) for o in cls.options.values())
    # The derived views are the declaration's, key for key and in order (what help(), validate() and runs read).
    assert list(cls.defaults.items()) == [(k, o.default) for k, o in cls.options.items()]
    assert cls.ranges == {k: o.range for k, o in cls.options.items() if o.range is not None}
    assert cls.option_docs == {k: o.help for k, o in cls.options.items() if o.help}


@pytest.mark.parametrize("name", methods.names())
def test_every_option_is_documented(name):
    cls = methods.get(name)
    undocumented = [line.split()[0] for line in option_lines(cls) if line.endswith(UNDOCUMENTED)]
    assert not undocumented, f"{name}: options without a meaning: {undocumented}"
    assert len(option_lines(cls)) == len(cls.defaults)


@pytest.mark.parametrize("name", methods.names())
def test_optimizer_keys_are_those_of_the_optimizers_used(name):
    cls = methods.get(name)
    have = {k for k in cls.defaults if k in OPTIMIZER_KEYS}
    named = [p["options"]["optimizer"] for p in cls.presets.values() if "optimizer" in p["options"]]
    if "optimizer" not in cls.defaults:
        # No optimizer to choose: no preset may name one, and any optimizer settings it reads (e.g. a fixed SGD of
        # prompt learning: lr, momentum, wd) are those of one optimizer.
        assert not named, f"{name}: presets name optimizers {named} but the method has no `optimizer` option"
        assert not have or any(have <= set(keys) for keys in KEYS_OF_OPTIMIZER.values()), (name, sorted(have))
        return
    choices = cls.ranges.get("optimizer")
    assert isinstance(choices, tuple) and choices, f"{name}: `optimizer` must declare its choices"
    assert all(c in KEYS_OF_OPTIMIZER for c in choices), (name, choices)
    expected = {"optimizer"} | {k for c in choices for k in KEYS_OF_OPTIMIZER[c]}
    assert have == expected, f"{name}: optimizer keys {sorted(have)}, the optimizers {choices} read {sorted(expected)}"
    used = [cls.defaults["optimizer"], *named]
    assert set(used) <= set(choices), f"{name}: defaults/presets use {sorted(set(used))}, choices are {choices}"


def test_optimizer_options_keep_only_the_keys_read():
    adam, sgd, both = optimizer_options("adam"), optimizer_options("sgd", 0.1), optimizer_options("sgd", also=("adam",))
    assert list(adam) == ["optimizer", "lr", "betas", "wd"] and adam["optimizer"].range == ("adam",)
    assert list(sgd) == ["optimizer", "lr", "momentum", "wd", "nesterov"] and sgd["lr"].default == 0.1
    assert list(both) == ["optimizer", "lr", "betas", "momentum", "wd", "nesterov"]
    assert both["optimizer"].range == ("sgd", "adam") and both["optimizer"].default == "sgd"


def test_options_next_to_a_hand_written_dict_is_refused():
    for parallel in ("defaults", "ranges", "option_docs"):
        with pytest.raises(TypeError, match=rf"declares `options` and \['{parallel}'\]"):
            type("Toy", (Adapter,), {"options": {"alpha": opt(0.5, "mixing weight")}, parallel: {"alpha": 0.5}})
    with pytest.raises(TypeError, match="opt\\(default, meaning, range\\)"):

        class Bare(Adapter):
            options = {"alpha": 0.5}  # a bare value, not opt(...)


class NormEntropy(Adapter):
    """A toy Tent: trains normalisation affine parameters with make_optimizer."""

    name = "toy_norm"
    options = {**optimizer_options("adam", lr=1e-3), "steps": opt(1, "steps per batch")}

    def configure(self) -> None:
        self.optimizer = make_optimizer(train_only(self.model, norm_affine_params(self.model)), self.hp)


def test_nothing_to_adapt_is_a_user_error_naming_the_method():
    with pytest.raises(UserError, match=r"^method 'toy_norm': the adapter has no parameter to train") as e:
        NormEntropy(nn.Linear(4, 3))
    assert not isinstance(e.value, TypeError) and "python -m tta_bench list methods -v" in str(e.value)
    # the same adapter on a model with a norm layer trains its two affine tensors
    a = NormEntropy(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)))
    assert [tuple(p.shape) for p in a.trainable_parameters()] == [(3,), (3,)]
    assert a(torch.randn(2, 4)).shape == (2, 3)
