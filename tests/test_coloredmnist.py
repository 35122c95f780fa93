"""The spurious-correlation stream `coloredmnist` (TTAB's ColoredMNIST on the embedded digits) and the label-shift
stream `digits-ls`: construction as specified, reproducibility by seed, bad options, and CLI runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tta_bench import rundir
from tta_bench.cli import main
from tta_bench.data import coloredmnist as cm
from tta_bench.data import digits, labelshift
from tta_bench.kernel import UserError
from tta_bench.metrics import GROUP_INFO
from tta_bench.streams import build_stream, stream_options


def _build(name: str, seed: int = 0, **opts):
    return build_stream(name, None, seed, {**stream_options(name), **opts})


def _digit_labels(ds) -> torch.Tensor:
    """The binary label the digit itself gives (0-4 -> 0, 5-9 -> 1), found from the grey image."""
    x, y = digits.digits_32()
    lookup = {hash(x[i].numpy().tobytes()): int(y[i] >= 5) for i in range(len(y))}
    return torch.tensor([lookup[hash(g.numpy().tobytes())] for g in ds.x])


def test_colour_predicts_the_label_in_the_source_and_is_reversed_in_the_stream():
    spec = _build("coloredmnist")
    test = spec.load("test", None, None)
    src, clean = spec.source, spec.clean
    assert spec.num_classes == 2 and spec.domain_names == ["test"] and spec.info[GROUP_INFO] == cm.GROUP_NAMES
    assert (len(src), len(clean), len(test)) == (997, 200, 600)
    # TTAB: colour = label flipped with probability 0.1 (source, clean) or 0.9 (stream); binomial margins ~4 sigma
    src_colour = (src.tensors[0][:, 1].flatten(1).sum(1) > 0).long()  # green channel lit: colour 1
    src_agree = float((src_colour == src.tensors[1]).double().mean())
    assert abs(src_agree - 0.9) < 0.04 and abs(cm.agreement(clean) - 0.9) < 0.09
    assert abs(cm.agreement(test) - 0.1) < 0.05
    assert spec.info["colour_label_agreement"]["test"] == pytest.approx(cm.agreement(test))
    # 25 % label noise against the digit's own class
    noise = float((torch.as_tensor(test.targets) != _digit_labels(test)).double().mean())
    assert abs(noise - 0.25) < 0.07
    # the labels handed to the meter are group ids label + 2 * colour; targets are the class labels
    g = test.tensors[1]
    assert torch.equal(g % 2, torch.as_tensor(test.targets)) and torch.equal(g // 2, test.colours)
    # the stream's majority groups are the reversed pairs (0-4 green, 5-9 red)
    counts = torch.bincount(g, minlength=4).tolist()
    assert counts[1] + counts[2] > 4 * (counts[0] + counts[3])
    # pixels: the grey digit in the red or green channel, the other channels zero
    rows = torch.arange(len(test))
    assert torch.equal(test.tensors[0][rows, test.colours], test.x[:, 0])
    assert float(test.tensors[0][rows, 1 - test.colours].abs().max()) == 0 and float(test.tensors[0][:, 2].max()) == 0
    # the model trains on class labels (0/1), not group ids
    assert set(spec.source.tensors[1].tolist()) == {0, 1}


def test_reproducible_by_data_seed_and_independent_of_the_run_seed():
    a, b, c = _build("coloredmnist"), _build("coloredmnist", seed=3), _build("coloredmnist", data_seed=1)
    ta, tb, tc = (s.load("test", None, None) for s in (a, b, c))
    assert torch.equal(ta.tensors[0], tb.tensors[0]) and torch.equal(ta.tensors[1], tb.tensors[1])
    assert (a.data_fingerprint, a.source_fingerprint) == (b.data_fingerprint, b.source_fingerprint)
    assert not torch.equal(ta.tensors[1], tc.tensors[1]) and a.data_fingerprint != c.data_fingerprint
    assert a.source_fingerprint != c.source_fingerprint  # another source split: another cached model
    assert torch.equal(ta.x, tc.x)  # the same digits, other draws
    flipped = _build("coloredmnist", test_flip=0.1).load("test", None, None)
    assert abs(cm.agreement(flipped) - 0.9) < 0.05  # the option reaches the draws
    assert torch.equal(a.load("test", None, 10).tensors[1], ta.tensors[1][:10])


@pytest.mark.parametrize(
    "name,opts,match",
    [
        ("coloredmnist", {"test_flip": 1.5}, "stream.test_flip"),
        ("coloredmnist", {"label_noise": -0.1}, "stream.label_noise"),
        ("digits-ls", {"priors": "zipf"}, "stream.priors"),
        ("digits-ls", {"steps": 0}, "stream.steps"),
        ("digits-ls", {"alpha": 0}, "stream.alpha"),
    ],
)
def test_bad_options_are_user_errors(name, opts, match):
    with pytest.raises(UserError, match=match):
        _build(name, **opts)


def test_label_shift_priors_as_stated_and_reproducible_by_seed():
    spec = _build("digits-ls", priors="step", steps=5, per_step=100, peak=0.8)
    p = np.array(spec.info["class_priors"])
    assert p.shape == (5, 10) and np.allclose(p.sum(1), 1, atol=1e-3)
    assert np.allclose(p[2, [4, 5]], 0.4) and np.allclose(np.delete(p[2], [4, 5]), 0.2 / 8, atol=1e-4)
    assert spec.domain_names == ["t00", "t01", "t02", "t03", "t04"] and spec.info[GROUP_INFO] == digits.CLASS_NAMES
    for t, name in enumerate(spec.domain_names):
        ds = spec.load(name, None, None)
        counts = np.bincount(ds.targets, minlength=10)
        assert len(ds) == 100 and counts.tolist() == spec.info["class_counts"][t]
        assert counts[[2 * t, 2 * t + 1]].sum() > 60  # the step's block holds ~80 % (binomial sd 4)
    target = {digits.digits_32()[0][i].numpy().tobytes() for i in digits.split()["target"]}
    assert all(img.numpy().tobytes() in target for img in spec.load("t00", None, None).tensors[0])
    d0, d1 = _build("digits-ls"), _build("digits-ls", seed=1)
    assert d0.info["class_priors"] == _build("digits-ls").info["class_priors"]
    assert torch.equal(d0.load("t03", None, None).tensors[1], _build("digits-ls").load("t03", None, None).tensors[1])
    assert d0.info["class_priors"] != d1.info["class_priors"] and d0.data_fingerprint != d1.data_fingerprint
    assert d0.source_fingerprint == d1.source_fingerprint  # one source model for every seed
    dirichlet = np.array(d0.info["class_counts"])
    assert dirichlet.sum(1).tolist() == [100] * 10 and dirichlet.max(1).min() > 20  # alpha 0.5: peaked steps
    uniform = np.array(_build("digits-ls", priors="uniform").info["class_priors"])
    assert np.allclose(uniform, 0.1)


def test_draw_reuses_a_class_only_after_all_its_images():
    labels = np.array([0, 0, 0, 1, 1])
    rng = np.random.default_rng(0)
    steps = labelshift.draw(labels, np.array([[1.0, 0.0], [1.0, 0.0]]), 3, rng)
    assert sorted(steps[0].tolist()) == [0, 1, 2] and sorted(steps[1].tolist()) == [0, 1, 2]


def _cli_run(out, *args: str) -> tuple[dict, dict]:
    """summary.json and config.json of the run the CLI makes (its folder: the one not there before)."""
    before = set(out.iterdir()) if out.exists() else set()
    assert main(["run", *args, "--out", str(out), "--quiet"]) == 0
    (folder,) = [p for p in out.iterdir() if rundir.is_run_id(p.name) and p not in before]
    return json.loads((folder / "summary.json").read_text()), json.loads((folder / "config.json").read_text())


def test_cli_runs_end_to_end_on_the_new_streams(tmp_path, one_thread):
    out = tmp_path / "runs"
    src, _ = _cli_run(out, "--method", "source", "--stream", "coloredmnist", "--limit", "200", "--clean-eval", "end")
    tent, cfg = _cli_run(out, "--method", "tent", "--stream", "coloredmnist", "--limit", "200")
    # the source model learned colour: far below chance on the reversed stream, fine on the source colours
    assert src["mean_error"] > 60 and src["clean_error_before"] < 30
    for s in (src, tent):
        assert s["stream"] == "coloredmnist" and s["n_samples"] == 200
        assert 0 <= s["worst_group_acc"] <= s["avg_group_acc"] <= 100
    assert src["worst_group_acc"] < 25  # the minority groups are the ones colour gets wrong
    assert "groups" in json.dumps(cfg) and "5-9/green" in json.dumps(cfg)
    ls, cfg = _cli_run(out, "--method", "norm", "--stream", "digits-ls", "--set", "stream.steps=3", "--limit", "50")
    assert ls["domain_errors"].keys() == {"t00", "t01", "t02"} and ls["n_samples"] == 150
    assert ls["worst_group_acc"] <= ls["avg_group_acc"]
    assert "class_priors" in json.dumps(cfg)
