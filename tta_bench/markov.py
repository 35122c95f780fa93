"""Markov-chain sample orders (the `markov` setting): the UniTTA parameterisation of test streams.

UniTTA (Du et al., "UniTTA: Unified Benchmark and Versatile Framework Towards Realistic Test-Time Adaptation",
arXiv 2407.20080; official code LeapLabTHU/UniTTA at c41bce75f9e2c91872d19f7db58f66ff992edb95,
`core/data/unittasampler.py`, `sh/run.sh`) draws a test stream from a Markov chain whose states are
(domain, class) pairs. Domain and class move independently: the joint transition matrix is the Kronecker product
``P = P_domain ⊗ P_class``, each with a *stay probability* on the diagonal and the rest spread evenly:

    P_a[i, i] = s_i,   P_a[i, j] = (1 - s_i) / (N_a - 1)   (j != i, N_a states of attribute a)

A stay probability of 1/N_a makes the rows uniform (i.i.d. samples), 1 keeps a state until its samples run out
(block order), values in between give correlated streams. UniTTA's benchmark names a setting by four characters,
class correlation, class imbalance, domain correlation, domain imbalance: correlation ``i`` (i.i.d., 1/N), ``n``
(non-i.i.d.: 0.95 for classes, 0.85 for domains), ``1`` (block order); imbalance ``1`` (balanced) or ``u``
(imbalanced: factor 10 for classes, 5 for domains). Imbalance makes the head states stickier: with factor ρ the
i-th of N states stays with ``1 - (1 - s) ρ^(i/(N-1))`` (state 0 keeps s), so the chain's stationary distribution
falls geometrically from head to tail by ρ; where that is impossible (``(1 - s) ρ > 1 - 1/N``, or s = 1) UniTTA
keeps s for every state and imposes the imbalance by quotas.

Here the order is a permutation of (a subset of) the stream's samples, fixed before batching (so it does not depend
on the batch size) and reproducible from the run seed. Differences from the official sampler, stated: UniTTA draws
with replacement until one state reaches `max_state_samples`; here every sample is used at most once and the chain
ends when every state is exhausted (an exhausted state is removed from the chain, the rows renormalised, as UniTTA
does for states past their upper bound). Imbalance also keeps ``floor(n · ρ_d^(-i/(D-1)) · ρ_c^(-j/(C-1)))`` (at
least 1) of the n samples of state (domain i, class j), as UniTTA's quotas and GLI-TTA's long-tailed subsets do.
When the chain's row has no mass left (a stay probability of 1 and its state exhausted), it moves on to the next
domain (in the stream's order) that still has samples, to a class drawn uniformly among that domain's remaining ones
(UniTTA's `transition_list` step for a correlation of 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tta_bench.kernel import UserError

IID = "iid"  # a stay probability of 1/N: uniform rows, i.i.d. samples
# UniTTA's sh/run.sh values of the four-character codes, per attribute
CORRELATION = {"class": {"i": IID, "n": 0.95, "1": 1.0}, "domain": {"i": IID, "n": 0.85, "1": 1.0}}
IMBALANCE = {"class": {"1": 1.0, "u": 10.0}, "domain": {"1": 1.0, "u": 5.0}}
# Named presets: the protocols of UniTTA's configs/protocol/*.yaml as chains (code: class cor, class imb, domain cor,
# domain imb). continual: domains one after another, samples i.i.d. inside; ptta: the same with a label-correlated
# order (UniTTA's "temporal" Dirichlet sampler, here a sticky class chain); gli: PTTA on a long-tailed class
# distribution (GLI-TTA, imbalance 10); random: i.i.d. over all domains and classes; unitta: correlated domains and
# classes (UniTTA's `n1n1` setting).
PRESETS: dict[str, str] = {"unitta": "n1n1", "continual": "i111", "ptta": "n111", "gli": "nu11", "random": "i1i1"}
DEFAULT_PRESET = "unitta"
OPTIONS = ("markov", "domain_stay", "class_stay", "domain_imbalance", "class_imbalance")  # stream options


@dataclass(frozen=True)
class Chain:
    """The parameters of a Markov-chain order: stay probabilities (a number in [0, 1] or "iid" = 1/N) and
    imbalance factors (>= 1) of domains and classes."""

    domain_stay: float | str
    class_stay: float | str
    domain_imbalance: float = 1.0
    class_imbalance: float = 1.0


def parse_code(code: str) -> Chain:
    """A UniTTA four-character setting code (e.g. ``n1nu``) -> Chain; UserError for a malformed one."""
    ok = len(code) == 4 and code[0] in "in1" and code[1] in "1u" and code[2] in "in1" and code[3] in "1u"
    if not ok:
        raise UserError(
            f"stream.markov={code!r} is neither a preset ({', '.join(PRESETS)}) nor a UniTTA code of four characters: "
            "class correlation (i, n, 1), class imbalance (1, u), domain correlation (i, n, 1), domain imbalance "
            "(1, u), e.g. --set stream.markov=n1nu."
        )  # fmt: skip
    return Chain(CORRELATION["domain"][code[2]], CORRELATION["class"][code[0]], IMBALANCE["domain"][code[3]],
                 IMBALANCE["class"][code[1]])  # fmt: skip


def chain_from_options(opts: Mapping[str, Any] | None) -> Chain:
    """The chain of resolved stream options: the `markov` preset or code (default "unitta"), each of
    `domain_stay`, `class_stay`, `domain_imbalance`, `class_imbalance` that is set overriding it."""
    opts = opts or {}
    name = opts.get("markov") or DEFAULT_PRESET
    if not isinstance(name, str):
        raise UserError(f"stream.markov must be a preset name ({', '.join(PRESETS)}) or a UniTTA code, got {name!r}.")
    chain = parse_code(PRESETS.get(name, name))
    over = {k: opts[k] for k in OPTIONS[1:] if opts.get(k) is not None}
    chain = Chain(**{**chain.__dict__, **over})
    check_chain(chain)
    return chain


def check_chain(chain: Chain) -> None:
    """UserError for a stay probability outside [0, 1] (or not "iid") or an imbalance factor below 1."""
    for key in ("domain_stay", "class_stay"):
        v = getattr(chain, key)
        if v == IID:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise UserError(f"stream.{key} is the chain's probability of staying in the same state: a number in "
                            f"[0, 1] or 'iid' (1/N), got {v!r} (e.g. --set stream.{key}=0.9).")  # fmt: skip
    for key in ("domain_imbalance", "class_imbalance"):
        v = getattr(chain, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v < math.inf:
            raise UserError(f"stream.{key} is the head-to-tail ratio of the stream's {key.split('_')[0]} frequencies: "
                            f"a finite number >= 1 (1: balanced), got {v!r} (e.g. --set stream.{key}=10).")  # fmt: skip


def stay_probabilities(stay: float | str, imbalance: float, n: int) -> np.ndarray:
    """(n,) probability of each state to stay (UniTTA's `get_cor_factors`, see the module docstring)."""
    if n == 1:
        return np.ones(1)
    s = 1.0 / n if stay == IID else float(stay)
    if imbalance > 1 and s < 1 and (1 - s) * imbalance <= 1 - 1 / n:
        return 1 - (1 - s) * imbalance ** (np.arange(n) / (n - 1))
    return np.full(n, s)


def transition_matrix(stay: float | str, imbalance: float, n: int) -> np.ndarray:
    """(n, n) transition matrix of one attribute: diagonal `stay_probabilities`, the rest of each row spread evenly."""
    s = stay_probabilities(stay, imbalance, n)
    if n == 1:
        return np.ones((1, 1))
    p = np.repeat(((1 - s) / (n - 1))[:, None], n, axis=1)
    np.fill_diagonal(p, s)
    return p


def head_ratios(imbalance: float, n: int) -> np.ndarray:
    """(n,) relative frequency of each state under an imbalance factor: 1 for the head, 1/imbalance for the tail."""
    return np.ones(n) if n == 1 else float(imbalance) ** (-np.arange(n) / (n - 1))


def markov_order(labels: np.ndarray, domains: np.ndarray, chain: Chain, rng: np.random.Generator) -> np.ndarray:
    """Positions of the samples in the order a walk of `chain` visits them.

    `labels` (N,) class ids, `domains` (N,) domain positions 0..D-1 in the stream's order (domain 0 is the head and
    where the walk starts). Returns (M,) int64 distinct positions, M = N without imbalance."""
    labels, domains = np.asarray(labels), np.asarray(domains)
    if labels.ndim != 1 or len(labels) != len(domains):
        raise UserError(
            "--setting markov orders samples by their class, and this stream's labels are not one class id per sample "
            f"(label array of shape {labels.shape}, e.g. segmentation maps): use --setting mixed or continual."
        )
    classes, cls = np.unique(labels, return_inverse=True)
    n_dom, n_cls = int(domains.max()) + 1 if len(domains) else 0, len(classes)
    if n_dom == 0:
        return np.zeros(0, dtype=np.int64)
    keep = np.outer(head_ratios(chain.domain_imbalance, n_dom), head_ratios(chain.class_imbalance, n_cls))
    pools: list[list[list[int]]] = [[[] for _ in range(n_cls)] for _ in range(n_dom)]
    for d in range(n_dom):
        for c in range(n_cls):
            idx = rng.permutation(np.flatnonzero((domains == d) & (cls == c)))
            if len(idx):
                pools[d][c] = idx[: max(1, int(len(idx) * keep[d, c] + 1e-9))].tolist()
    total = sum(len(p) for row in pools for p in row)
    # the classes each domain still has, with each class's position in its list (O(1) removal by swapping)
    avail = [[c for c in range(n_cls) if pools[d][c]] for d in range(n_dom)]
    where = [{c: i for i, c in enumerate(a)} for a in avail]
    sd = stay_probabilities(chain.domain_stay, chain.domain_imbalance, n_dom)
    sc = stay_probabilities(chain.class_stay, chain.class_imbalance, n_cls)
    off_d = (1 - sd) / max(n_dom - 1, 1)
    off_c = (1 - sc) / max(n_cls - 1, 1)
    u = rng.random((total, 3))
    d = next(k for k in range(n_dom) if avail[k])
    c = avail[d][int(u[0, 2] * len(avail[d]))]
    out = np.empty(total, dtype=np.int64)
    for t in range(total):
        out[t] = pools[d][c].pop()
        if not pools[d][c]:  # exhausted: out of the chain
            i, last = where[d].pop(c), avail[d].pop()
            if last != c:
                avail[d][i], where[d][last] = last, i
        if t + 1 == total:
            break
        # joint row of (d, c) restricted to the states left: P_d[d, e] * sum over classes k left in e of P_c[c, k]
        mass = []
        for e in range(n_dom):
            has_c = 1 if c in where[e] else 0
            m = off_c[c] * (len(avail[e]) - has_c) + sc[c] * has_c
            mass.append((sd[d] if e == d else off_d[d]) * m)
        norm = sum(mass)
        if norm <= 0:  # no mass left in this row: the next domain with samples, a class uniformly
            e = next(k % n_dom for k in range(d, d + n_dom) if avail[k % n_dom])
            d, c = e, avail[e][int(u[t + 1, 2] * len(avail[e]))]
            continue
        r, e = u[t + 1, 0] * norm, 0
        while e < n_dom - 1 and (r >= mass[e] or mass[e] == 0):
            r -= mass[e]
            e += 1
        while mass[e] == 0:  # float rounding ran past the last state with mass
            e -= 1
        has_c = c in where[e]
        m = len(avail[e])
        stay_w = sc[c] if has_c else 0.0
        move_w = off_c[c] * (m - has_c)
        if has_c and u[t + 1, 1] * (stay_w + move_w) < stay_w:
            d = e
            continue
        j = int(u[t + 1, 2] * (m - has_c))  # uniformly among the other classes left in e
        if has_c and j >= where[e][c]:
            j += 1
        d, c = e, avail[e][min(j, m - 1)]
    return out


def transitions(states: np.ndarray, n: int) -> np.ndarray:
    """(n, n) empirical transition frequencies (rows sum to 1, or 0 for unvisited states) of a state sequence."""
    counts = np.zeros((n, n))
    np.add.at(counts, (states[:-1], states[1:]), 1)
    rows = counts.sum(1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
