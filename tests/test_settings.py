"""TTA settings as functions over domain lists: order, resets, severity schedule, mixing, the Dirichlet
label-correlated order (stronger as gamma shrinks), rounds, and batch size 1 end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from tta_bench import RunConfig, run
from tta_bench import streams as st
from tta_bench.data.cifar import U8Images
from tta_bench.models import MODELS

DOMAINS = ["alpha", "beta", "gamma"]


def tiny_spec(n: int = 40, graded: bool = True) -> st.StreamSpec:
    """3 domains of `n` 8×8 images; domain k's pixels are k/3 + noise; labels cycle 0..3."""

    def load(domain: str, severity, limit):
        k = DOMAINS.index(domain)
        g = torch.Generator().manual_seed(k)
        x = ((k / 3 + 0.2 * torch.rand(n, 3, 8, 8, generator=g)) * 255).to(torch.uint8)
        y = torch.arange(n) % 4
        return U8Images(x[:limit], y[:limit])

    return st.StreamSpec(
        "tiny",
        DOMAINS,
        load,
        4,
        data_fingerprint=None,
        source_fingerprint=None,
        severities=(1, 2, 3, 4, 5) if graded else None,
    )


def _tiny_stream(*, data_dir, seed: int = 0) -> st.StreamSpec:
    """Test stream: 3 tiny synthetic domains."""
    return tiny_spec()


def _tiny_net(spec, ctx) -> nn.Module:
    """Test model: conv-BN-ReLU-pool-linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 4))  # fmt: skip


@pytest.fixture(scope="module")
def tiny_registered():
    """Register the test stream/model for the runner tests only (other tests may iterate the registries)."""
    st.register("settings-tiny", default_model="settings-tiny-net")(_tiny_stream)
    MODELS.add("settings-tiny-net", _tiny_net)
    yield
    st.STREAMS._entries.pop("settings-tiny")
    MODELS._entries.pop("settings-tiny-net")


def test_continual_keeps_the_domain_order_and_never_resets():
    segs = st.schedule("continual", tiny_spec(), 5)
    assert [s.domain for s in segs] == DOMAINS and not any(s.reset for s in segs)
    assert {s.severity for s in segs} == {5} and [s.parts for s in segs] == [((d, 5),) for d in DOMAINS]


def test_episodic_resets_before_every_domain():
    segs = st.schedule("episodic", tiny_spec(), 3)
    assert [s.domain for s in segs] == DOMAINS and all(s.reset for s in segs) and {s.severity for s in segs} == {3}


def test_gradual_severity_schedule_per_domain():
    segs = st.schedule("gradual", tiny_spec(), 5)
    assert len(segs) == 9 * len(DOMAINS)
    assert [s.severity for s in segs[:9]] == [1, 2, 3, 4, 5, 4, 3, 2, 1]
    assert [s.domain for s in segs[9:11]] == ["beta-1", "beta-2"] and segs[9].parts == (("beta", 1),)
    assert not any(s.reset for s in segs)
    flat = st.schedule("gradual", tiny_spec(graded=False), 5)  # natural shifts: no severities -> continual
    assert [s.domain for s in flat] == DOMAINS and {s.severity for s in flat} == {None}


def test_mixed_is_one_shuffled_segment_over_all_domains():
    spec = tiny_spec(12)
    (seg,) = st.schedule("mixed", spec, 5)
    assert seg.domain == "mixed" and seg.order == "shuffle" and [p[0] for p in seg.parts] == DOMAINS
    ds = st.segment_dataset(spec, seg, None)
    doms = torch.cat([b.domain_ids for b in st.batches(ds, seg, 5, seed=0)])
    assert sorted(doms.tolist()) == sorted([0] * 12 + [1] * 12 + [2] * 12)
    assert doms.tolist() != sorted(doms.tolist())  # interleaved, not one domain after another
    again = torch.cat([b.domain_ids for b in st.batches(ds, seg, 7, seed=0)])
    other = torch.cat([b.domain_ids for b in st.batches(ds, seg, 5, seed=1)])
    assert torch.equal(doms, again) and not torch.equal(doms, other)  # seeded by the run seed only


def test_rounds_repeat_the_schedule_with_round_index():
    segs = st.schedule("episodic", tiny_spec(), 5, rounds=3)
    assert [(s.round, s.domain) for s in segs] == [(r, d) for r in range(3) for d in DOMAINS]


def _repeat_fraction(labels: np.ndarray) -> float:
    return float(np.mean(labels[1:] == labels[:-1]))


def test_dirichlet_order_is_a_permutation_whose_label_correlation_grows_as_gamma_shrinks():
    labels = np.repeat(np.arange(10), 100)
    frac = {}
    for gamma in (0.01, 0.1, 1.0, 100.0):
        fr = []
        for seed in range(5):
            order = st.dirichlet_order(labels, gamma, np.random.default_rng(seed))
            assert np.array_equal(np.sort(order), np.arange(len(labels)))
            fr.append(_repeat_fraction(labels[order]))
        frac[gamma] = float(np.mean(fr))
    assert frac[0.01] > frac[0.1] > frac[1.0] > frac[100.0]
    # i.i.d. shuffle of 10 classes: ≈ 0.09. Measured (5 seeds): 0.55 / 0.41 / 0.15 / 0.09; the small-gamma value
    # stays near 0.5, not 1, because several classes can land in the same time slot (shuffled within).
    assert frac[0.01] > 0.4 and frac[100.0] < 0.12


def test_non_iid_setting_orders_each_domain_by_dirichlet():
    spec = tiny_spec(40)
    segs = st.schedule("non-iid", spec, 5)
    assert [s.order for s in segs] == ["dirichlet"] * 3 and [s.domain for s in segs] == DOMAINS
    ds = st.segment_dataset(spec, segs[0], None)
    ys = torch.cat([b.y for b in st.batches(ds, segs[0], 8, seed=0, gamma=0.01)]).numpy()
    rng = np.random.default_rng(st.segment_seed(0, segs[0].domain, segs[0].severity, segs[0].round))
    expected = ds.labels()[st.dirichlet_order(ds.labels(), 0.01, rng)]
    assert np.array_equal(ys, expected) and _repeat_fraction(ys) > 0  # labels cycle 0..3: sequential order has 0


def test_batch_size_one_and_limit():
    spec = tiny_spec(10)
    (seg,) = st.schedule("mixed", spec, 5)
    bs = list(st.batches(st.segment_dataset(spec, seg, 4), seg, 1))
    assert len(bs) == 12 and all(b.x.shape == (1, 3, 8, 8) for b in bs)


@pytest.mark.parametrize("setting", ["episodic", "gradual", "non-iid"])
def test_runner_batch_size_one_and_rounds(setting, runs_dir, tiny_registered):
    cfg = RunConfig(method="tent", stream="settings-tiny", setting=setting, batch_size=1, limit=3, rounds=2,
                    out=str(runs_dir), clean_eval="off")  # fmt: skip
    res = run(cfg, quiet=True)
    dom = pd.read_csv(res.folder / "domains.csv")
    per_round = 9 * len(DOMAINS) if setting == "gradual" else len(DOMAINS)
    assert len(dom) == 2 * per_round and sorted(dom["round"].unique()) == [0, 1]
    assert (dom["n"] == 3).all() and len(res.summary["round_errors"]) == 2
    batches = pd.read_csv(res.folder / "batches.csv")
    assert (batches["n"] == 1).all() and len(batches) == 2 * per_round * 3
