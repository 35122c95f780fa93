"""The `markov` setting (UniTTA's Markov-chain streams over domains and classes, tta_bench/markov.py): reproducible by
seed, fixed before batching, empirical transitions that match the chain's matrix, and the documented structure of
each named preset (continual = domain blocks, random = i.i.d., ...)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from tta_bench import markov as mk
from tta_bench import settings
from tta_bench import streams as st
from tta_bench.cli import main
from tta_bench.config import RunConfig
from tta_bench.identity import resolve
from tta_bench.kernel import UserError


def grid(n_dom: int, n_cls: int, per_state: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and domain positions of a stream with `per_state` samples of every (domain, class)."""
    labels = np.tile(np.repeat(np.arange(n_cls), per_state), n_dom)
    return labels, np.repeat(np.arange(n_dom), n_cls * per_state)


def walk(chain: mk.Chain, n_dom: int, n_cls: int, per_state: int, seed: int = 0):
    labels, doms = grid(n_dom, n_cls, per_state)
    order = mk.markov_order(labels, doms, chain, np.random.default_rng(seed))
    return order, doms[order], labels[order]


def stay_rate(seq: np.ndarray) -> float:
    return float(np.mean(seq[1:] == seq[:-1]))


def test_same_seed_same_order_and_every_sample_once():
    chain = mk.chain_from_options({"markov": "unitta"})
    a, _, _ = walk(chain, 3, 5, 40, seed=7)
    b, _, _ = walk(chain, 3, 5, 40, seed=7)
    c, _, _ = walk(chain, 3, 5, 40, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sorted(a.tolist()) == list(range(3 * 5 * 40))  # a permutation: every sample exactly once


def test_empirical_transitions_match_the_matrix_on_a_long_chain():
    chain = mk.Chain(domain_stay=0.7, class_stay=0.4)
    _, d, c = walk(chain, 3, 4, 5000)  # 60,000 steps
    half = len(d) // 2  # before states start running dry (margins: about 5 standard deviations of a frequency)
    for seq, n, stay in ((d, 3, 0.7), (c, 4, 0.4)):
        expected = mk.transition_matrix(stay, 1.0, n)
        got = mk.transitions(seq[:half], n)
        assert np.abs(got - expected).max() < 0.03, (got, expected)
    # the joint chain is the Kronecker product of the two
    joint = mk.transitions((d * 4 + c)[:half], 12)
    kron = np.kron(mk.transition_matrix(0.7, 1.0, 3), mk.transition_matrix(0.4, 1.0, 4))
    assert np.abs(joint - kron).max() < 0.045


def test_continual_preset_is_block_order_with_iid_classes():
    order, d, c = walk(mk.chain_from_options({"markov": "continual"}), 4, 5, 200)
    assert d.tolist() == sorted(d.tolist())  # domain 0 whole, then 1, ...
    assert np.unique(d).tolist() == [0, 1, 2, 3]
    assert abs(stay_rate(c) - 1 / 5) < 0.03  # classes i.i.d. within a block


def test_random_preset_is_iid():
    _, d, c = walk(mk.chain_from_options({"markov": "random"}), 3, 4, 2000)
    assert abs(stay_rate(d) - 1 / 3) < 0.02 and abs(stay_rate(c) - 1 / 4) < 0.02
    # uniform rows (about 2,000 steps per row: 5 standard deviations of a frequency ~ 0.03)
    assert np.abs(mk.transitions(d * 4 + c, 12) - 1 / 12).max() < 0.035


def test_ptta_gli_and_unitta_presets():
    _, d, c = walk(mk.chain_from_options({"markov": "ptta"}), 3, 10, 300)
    assert d.tolist() == sorted(d.tolist()) and stay_rate(c) > 0.9  # domain blocks, sticky classes
    _, d, c = walk(mk.chain_from_options({"markov": "gli"}), 2, 10, 500)
    counts = np.bincount(c, minlength=10)
    assert d.tolist() == sorted(d.tolist())
    assert all(np.diff(counts) < 0) and 9.5 < counts[0] / counts[-1] < 10.5  # long-tailed, factor 10
    _, d, c = walk(mk.chain_from_options({"markov": "unitta"}), 4, 10, 500)
    assert abs(stay_rate(d) - 0.85) < 0.02 and abs(stay_rate(c) - 0.95) < 0.02
    assert np.abs(np.diff(d)).max() > 0 and d.tolist() != sorted(d.tolist())  # domains revisited


def test_unitta_codes_and_overrides():
    assert mk.parse_code("n1nu") == mk.Chain(0.85, 0.95, 5.0, 1.0)
    assert mk.parse_code("iu1u") == mk.Chain(1.0, mk.IID, 5.0, 10.0)
    chain = mk.chain_from_options({"markov": "ptta", "class_stay": 0.5, "domain_imbalance": 3})
    assert chain == mk.Chain(1.0, 0.5, 3, 1.0)
    with pytest.raises(UserError, match="stream.markov"):
        mk.chain_from_options({"markov": "sticky"})
    with pytest.raises(UserError, match="stream.domain_stay"):
        mk.chain_from_options({"domain_stay": 1.5})
    with pytest.raises(UserError, match="stream.class_imbalance"):
        mk.chain_from_options({"class_imbalance": 0.5})
    with pytest.raises(UserError, match="one class id per sample"):  # e.g. segmentation label maps
        mk.markov_order(np.zeros((4, 2, 2)), np.zeros(4, dtype=int), mk.Chain(0.5, 0.5), np.random.default_rng(0))


@pytest.mark.parametrize("stay,imb,n", [(0.95, 10.0, 10), (0.85, 5.0, 15), (0.7, 2.0, 3)])
def test_imbalanced_stay_probabilities_give_the_head_to_tail_ratio(stay, imb, n):
    p = mk.transition_matrix(stay, imb, n)
    assert np.allclose(p.sum(1), 1) and p[0, 0] == pytest.approx(stay)
    w, v = np.linalg.eig(p.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    assert pi[0] / pi[-1] == pytest.approx(imb)  # stationary frequencies fall from head to tail by the factor
    assert np.allclose(pi / pi[0], mk.head_ratios(imb, n))


def test_imbalance_the_chain_cannot_carry_keeps_the_stay_probability():
    # (1 - s) * imb > 1 - 1/n: UniTTA keeps s for every state (the quotas impose the imbalance)
    assert mk.stay_probabilities(0.6, 2.0, 3).tolist() == [0.6, 0.6, 0.6]
    assert mk.stay_probabilities(mk.IID, 5.0, 4).tolist() == [0.25] * 4


def tagged(n_dom: int, n_cls: int, per_state: int) -> st._Tagged:
    parts = []
    for d in range(n_dom):
        y = torch.arange(n_cls).repeat_interleave(per_state)
        x = (torch.arange(len(y), dtype=torch.float32) + 1000 * d).view(-1, 1, 1, 1)  # each sample's own value
        parts.append((TensorDataset(x, y), d))
    return st._Tagged(parts)


def test_sample_sequence_does_not_depend_on_the_batch_size():
    ds = tagged(3, 4, 12)
    seg = settings.SETTINGS["markov"](["a", "b", "c"], None, 0, False)[0]
    assert seg.order == "markov" and seg.domain == "mixed" and len(seg.parts) == 3
    opts = {"markov": "unitta"}
    seqs = []
    for bs in (1, 7, 16, 144):
        bs_batches = list(st.batches(ds, seg, bs, seed=3, options=opts))
        assert max(len(b.y) for b in bs_batches) == min(bs, 144)
        seqs.append([torch.cat([b.x.flatten() for b in bs_batches]), torch.cat([b.domain_ids for b in bs_batches])])
    for x, dom in seqs[1:]:
        assert torch.equal(x, seqs[0][0]) and torch.equal(dom, seqs[0][1])
    assert sorted(seqs[0][0].tolist()) == sorted(ds[list(range(len(ds)))][0].flatten().tolist())
    other = torch.cat([b.x.flatten() for b in st.batches(ds, seg, 16, seed=4, options=opts)])
    assert not torch.equal(other, seqs[0][0])  # the run seed draws the chain


def test_markov_options_only_with_the_markov_setting_and_run_ids_of_other_runs_unchanged(tmp_path):
    with pytest.raises(UserError, match="--setting markov"):
        resolve(RunConfig(method="source", stream="digits-c", stream_opts={"markov": "random"}, out=str(tmp_path)))
    with pytest.raises(UserError, match="stream.markov"):
        resolve(RunConfig(method="source", stream="digits-c", setting="markov", stream_opts={"markov": "x"},
                          out=str(tmp_path)))  # fmt: skip
    opts = resolve(RunConfig(method="source", stream="digits-c", out=str(tmp_path))).stream_opts
    assert not set(st.UNSET_NOT_HASHED) & set(opts)  # unset: not in the hashed identity
    opts = resolve(RunConfig(method="source", stream="digits-c", setting="markov", out=str(tmp_path),
                             stream_opts={"markov": "gli"})).stream_opts  # fmt: skip
    assert opts["markov"] == "gli"


def test_markov_runs_through_the_cli_with_per_domain_errors(tmp_path, one_thread):
    out = tmp_path / "runs"
    argv = ["run", "--method", "norm", "--stream", "digits-c", "--setting", "markov", "--set", "stream.markov=ptta",
            "--domains", "fog,contrast", "--limit", "24", "--batch-size", "16", "--clean-eval", "off", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["setting"] == "markov" and summary["n_samples"] == 48
    assert set(summary["domain_errors"]) == {"fog", "contrast"}
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["stream_opts"]["markov"] == "ptta"
