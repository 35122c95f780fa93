"""Parity with the peer suite mariodoebler/test-time-adaptation, from its recorded outputs (no peer code needed).

tests/data/parity_peer_<commit>.json holds what `python -m benchmarks.parity --peer <checkout> --record` measured on
the peer's own classes: per shared method and step, its predictions and logits (4 decimals) on ResNet-20 with the
real CIFAR-10 weights, the 20 lossless CIFAR-10 test PNGs and their mirrors under one noise corruption per batch
(one seeded generator per image). Each test recomputes OUR side from the same recipe and compares.

Tolerances hold across CPUs and thread counts: the recording was bit-identical to ours on the recording machine for
most methods, but another CPU (AVX2 vs AVX-512) or thread count sums convolutions in another order, and a few
adaptation steps (Adam normalises small gradients) grow that 1e-6 into up to ~1e-3 on the logits. A wrong update
rule moves them by far more: the negative control shows Tent with a 3x learning rate is caught.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import parity

pytestmark = pytest.mark.real

RECORD = Path(__file__).resolve().parent / "data" / "parity_peer_8b2ed63.json"
DATA = json.loads(RECORD.read_text())
MAX_LOGIT_DIFF = 0.05  # logits here span ~±10; a 3x learning rate in Tent moves them by > 0.3 in 4 steps
MIN_AGREE = 97.5  # % of predictions equal to the peer's (one near-tie per batch of 40 may flip)
# The slowest to recompute (one test point at a time, 33 forwards each, MEMO also a backward): the first 8 images of
# the first batch in the default suite (their views and outputs do not depend on the images after them), every batch
# under -m slow.
PER_POINT = {"memo", "tta_aug"}


@pytest.fixture(scope="module")
def inputs(shared_data):
    for need in (parity.WEIGHTS, parity.PNG20, parity.JPEG):
        if not need.exists():
            pytest.skip(f"{need} is absent: the recorded peer outputs were made on it")
    seed = DATA["recipe"]["seed"]
    model, what = parity.build_model(seed)
    batches, recipe = parity.make_batches(seed, DATA["recipe"]["severity"])
    source, recipe["source"] = parity.source_batches(seed)
    return model, what, batches, recipe, source


def test_the_inputs_are_the_recorded_ones(inputs):
    """Same weights, images, corruptions and seeds as the recording (input sum to 4 decimals: the same bits)."""
    _, what, batches, recipe, _ = inputs
    assert what == DATA["model"]
    assert recipe == DATA["recipe"], "the inputs' recipe changed: re-record with benchmarks.parity --record"
    assert DATA["peer_commit"].startswith(RECORD.stem.rsplit("_", 1)[1])
    assert RECORD.stat().st_size < 1_000_000


def check(name: str, inputs, n_batches: int, n_images: int | None = None, **override) -> tuple[float, float]:
    """(predictions agreeing with the peer's %, max |logit difference|) of our side over the first n batches (the
    first n_images of each, when given)."""
    model, _, batches, _, source = inputs
    batches = [(x[:n_images], y[:n_images]) for x, y in batches[:n_batches]]
    spec = parity.SPECS[name]
    saved = dict(spec.options)
    spec.options.update(override)
    try:
        ours, _, _ = parity.run_ours(name, model, batches, source, DATA["recipe"]["seed"])
    finally:
        spec.options.clear()
        spec.options.update(saved)
    steps = DATA["methods"][name]["steps"][:n_batches]
    peer = [torch.tensor(s["logits"][:n_images]) for s in steps]
    preds = [torch.tensor(s["pred"][:n_images]) for s in steps]
    agree = torch.cat([o.argmax(1) == p for o, p in zip(ours, preds)]).float().mean() * 100
    return agree.item(), max((o - p).abs().max().item() for o, p in zip(ours, peer))


@pytest.mark.parametrize("name", sorted(DATA["methods"]))
def test_ours_matches_the_recorded_peer(name, inputs, one_thread):
    quick = name in PER_POINT
    agree, diff = check(name, inputs, 1 if quick else len(DATA["methods"][name]["steps"]), 8 if quick else None)
    assert agree >= MIN_AGREE, f"{name}: {agree:.1f} % of predictions agree with the peer's"
    assert diff <= MAX_LOGIT_DIFF, f"{name}: logits differ from the peer's by up to {diff:.3g}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PER_POINT & set(DATA["methods"])))
def test_ours_matches_the_recorded_peer_all_batches(name, inputs, one_thread):
    agree, diff = check(name, inputs, len(DATA["methods"][name]["steps"]))
    assert agree >= MIN_AGREE and diff <= MAX_LOGIT_DIFF, (name, agree, diff)


def test_a_different_rule_is_caught(inputs, one_thread):
    """Negative control: Tent with 3x the learning rate is outside the tolerance (the test can fail)."""
    _, diff = check("tent", inputs, len(DATA["methods"]["tent"]["steps"]), lr=3e-3)
    assert diff > 4 * MAX_LOGIT_DIFF


def test_every_shared_method_is_recorded():
    """Each method of benchmarks.parity.SPECS is in the record with every step, except where the peer stopped early
    on a known bug of its own (RoTTA: the steps before its first update), which the record states."""
    assert set(DATA["methods"]) == set(parity.SPECS)
    for name, entry in DATA["methods"].items():
        assert entry["parity"]["agree"] >= MIN_AGREE, (name, entry["parity"])
        n = len(entry["steps"])
        assert (
            n == len(DATA["recipe"]["corruptions"]) or parity.SPECS[name].known_issue in entry["parity"]["peer_stopped"]
        )
