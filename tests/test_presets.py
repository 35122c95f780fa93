"""Per-benchmark presets: declared well, chosen by the stream's family, under `--set`, recorded, listed.

The expected values are read off the cited files (commits: DequanWang/tent e9e926a, qinenergy/cotta c212a20,
mariodoebler/test-time-adaptation 8b2ed63, mr-eggplant/EATA f739b36, mr-eggplant/SAR 20f6e24).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from tta_bench import methods, presets
from tta_bench.config import RunConfig
from tta_bench.identity import resolve
from tta_bench.kernel import UserError, check_options

TENT_CIFAR = {"optimizer": "adam", "lr": 1e-3, "betas": (0.9, 0.999), "wd": 0.0, "steps": 1}  # cfgs/tent.yaml
TENT_IMAGENET = {"optimizer": "sgd", "lr": 0.00025, "momentum": 0.9, "nesterov": True, "wd": 0.0, "steps": 1}


def opts(method: str, stream: str, **kw) -> dict:
    return resolve(RunConfig(method=method, stream=stream, **kw)).method_opts


@pytest.mark.parametrize("name", methods.names())
def test_presets_are_well_formed(name):
    """Known families, a cited source file, option names and types the adapter declares (every adapter)."""
    cls = methods.get(name)
    presets.check_presets(cls)
    for p in cls.presets.values():
        check_options("method", name, p["options"], cls.defaults)  # types coerce to the declared ones


def test_stream_families():
    assert presets.stream_family("cifar10-c") == "cifar10-c"
    assert presets.stream_family("cifar100-c") == "cifar100-c"
    for s in ("imagenet-c", "imagenet-r", "imagenet-a", "imagenet-sketch", "imagenet-v2"):
        assert presets.stream_family(s) == "imagenet-c"
    for s in ("gta5-cityscapes", "cityscapes-acdc", "camvid-c"):
        assert presets.stream_family(s) == "segmentation"
    assert presets.stream_family("digits-c") == "cifar10-c"  # small images: the CIFAR-10-C settings (#24)
    assert (
        presets.stream_family("pneumoniamnist-c") == "cifar10-c" and presets.stream_family("digits-b2n") == "imagenet-c"
    )


def test_tent_cifar_and_imagenet_presets_differ():
    """Tent: CIFAR-10-C = tent's cfgs/tent.yaml (Adam 1e-3); ImageNet-C = SGD 0.00025, momentum 0.9, Nesterov."""
    cifar, imagenet = opts("tent", "cifar10-c"), opts("tent", "imagenet-c")
    assert {k: cifar[k] for k in TENT_CIFAR} == TENT_CIFAR
    assert {k: imagenet[k] for k in TENT_IMAGENET} == TENT_IMAGENET
    assert opts("tent", "imagenet-r") == imagenet  # natural shifts are the imagenet-c family
    assert opts("tent", "gta5-cityscapes")["wd"] == 5e-4  # segmentation: the suite's segmentation/cfgs/tent.yaml


def test_official_values_of_the_other_baselines():
    assert opts("cotta", "cifar100-c")["ap"] == 0.72  # qinenergy/cotta cifar/cfgs/cifar100/cotta.yaml
    c = opts("cotta", "imagenet-c")  # imagenet/cotta.py: ap 0.1, restore 0.001, symmetric CE; cotta0.yaml: SGD 0.01
    assert (c["optimizer"], c["lr"], c["rst"], c["ap"], c["loss"], c["always_augment"]) == (
        "sgd",
        0.01,
        0.001,
        0.1,
        "sce",
        False,
    )
    e = opts("eata", "cifar10-c")  # suite cfgs/cifar10_c/eata.yaml
    assert (e["optimizer"], e["lr"], e["d_margin"], e["fisher_alpha"]) == ("adam", 1e-3, 0.4, 1.0)
    assert opts("eata", "cifar100-c")["d_margin"] == 0.1
    e = opts("eata", "imagenet-c")  # mr-eggplant/EATA main.py
    assert (e["optimizer"], e["lr"], e["momentum"], e["d_margin"], e["fisher_alpha"]) == (
        "sgd",
        0.00025,
        0.9,
        0.05,
        2000.0,
    )
    assert opts("eta", "cifar10-c")["d_margin"] == 0.4
    s = opts("sar", "cifar10-c")  # the suite's SAR: SAM over SGD (momentum 0.9) at OPTIM.LR 1e-3
    assert (s["optimizer"], s["lr"], s["momentum"]) == ("sgd", 1e-3, 0.9)
    assert opts("sar", "imagenet-c")["lr"] == 0.00025
    assert opts("alpha_bn", "imagenet-c")["source_weight"] == 0.9  # BN.ALPHA 0.1


def test_set_overrides_a_preset_value():
    o = opts("tent", "imagenet-c", method_opts={"lr": 0.001})
    assert o["lr"] == 0.001 and o["optimizer"] == "sgd" and o["nesterov"] is True


def test_preset_choice():
    defaults = methods.get("tent").defaults
    assert opts("tent", "imagenet-c", preset="none") == defaults
    assert opts("tent", "digits-c") == defaults  # digits-c: cifar10-c family, whose Tent preset is the defaults
    assert opts("eata", "digits-c") == opts("eata", "cifar10-c") != methods.get("eata").defaults
    assert {k: opts("tent", "digits-c", preset="imagenet-c")[k] for k in TENT_IMAGENET} == TENT_IMAGENET
    with pytest.raises(UserError, match="imagenet-c"):
        RunConfig(method="tent", stream="digits-c", preset="imagenet_c")


def test_the_preset_acts_through_the_options_in_the_run_id():
    """`auto` and the same family named explicitly resolve to one identity, `none` to another; `preset` unhashed."""
    auto = resolve(RunConfig(method="tent", stream="imagenet-c")).identity()
    assert auto == resolve(RunConfig(method="tent", stream="imagenet-c", preset="imagenet-c")).identity()
    assert auto != resolve(RunConfig(method="tent", stream="imagenet-c", preset="none")).identity()
    assert "preset" not in auto


def test_config_json_records_the_preset(tmp_path):
    from tta_bench.runner import run

    cfg = RunConfig(
        method="tent",
        stream="digits-c",
        limit=16,
        batch_size=16,
        preset="cifar10-c",
        method_opts={"lr": 5e-4},
        clean_eval="off",
        out=str(tmp_path / "runs"),
        device="cpu",
    )
    result = run(cfg, quiet=True)
    rec = json.loads((result.folder / "config.json").read_text())["preset"]
    assert rec["requested"] == "cifar10-c" and rec["family"] == "cifar10-c" and rec["stream_family"] == "cifar10-c"
    assert rec["source"] == "DequanWang/tent:cfgs/tent.yaml@e9e926a" and rec["batch_size"] == 200
    assert rec["options"]["optimizer"] == "adam" and rec["overridden"] == {"lr": 5e-4}
    assert json.loads((result.folder / "config.json").read_text())["config"]["method_opts"]["lr"] == 5e-4


def test_list_methods_shows_presets():
    from tta_bench.report import list_entries

    text = list_entries("methods")
    assert "preset imagenet-c: optimizer=sgd, lr=0.00025, momentum=0.9, nesterov=True" in text
    assert "[DequanWang/tent:cfgs/tent.yaml@e9e926a]" in text
    assert "family: imagenet-c" in list_entries("streams")


def test_cli_preset_and_domains_options():
    import argparse

    from tta_bench.cli_options import add_run_arguments, config_kwargs

    p = argparse.ArgumentParser()
    add_run_arguments(p)
    args = p.parse_args(["--method", "tent", "--stream", "digits-c", "--preset", "none", "--domains", "fog,snow"])
    kw = config_kwargs(args)
    assert kw["preset"] == "none" and kw["stream_opts"]["domains"] == "fog,snow"
    args = p.parse_args(["--method", "tent", "--stream", "x", "--domains", "fog", "--set", "stream.domains=snow"])
    with pytest.raises(UserError, match="disagree"):
        config_kwargs(args)


# --- CoTTA's ImageNet variant (the options its imagenet-c preset sets) -------------------------------------------
def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )


def test_cotta_symmetric_loss_and_lazy_augmentation():
    """imagenet/cotta.py: loss -½ Σ p_t log p_s - ½ Σ p_s log p_t (teacher detached), augmentations only when used."""
    model, x = _tiny(), torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    hp = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "rst": 0.0, "ap": 0.0, "loss": "sce", "always_augment": False}
    a = methods.create("cotta", model, **hp)
    calls = []
    a.teacher.register_forward_hook(lambda *_: calls.append(1))
    # reference: the same configured student, one SGD step on the symmetric loss against the (equal) teacher
    ref = methods.create("cotta", model, **hp).model
    s = ref(x)
    with torch.no_grad():
        t = a.teacher(x)
    calls.clear()
    loss = (-0.5 * (t.softmax(1) * s.log_softmax(1)).sum(1) - 0.5 * (s.softmax(1) * t.log_softmax(1)).sum(1)).mean()
    grads = torch.autograd.grad(loss, [p for p in ref.parameters()])
    out = a(x)
    assert len(calls) == 1  # anchor confidence >= ap = 0: no augmented views computed
    torch.testing.assert_close(out, t)
    for (name, p), p0, g in zip(a.model.named_parameters(), ref.parameters(), grads):
        torch.testing.assert_close(p, p0 - 0.1 * g, msg=name)
    with pytest.raises(UserError, match="sce"):
        methods.create("cotta", model, loss="kl")
