"""The TTA settings, declared once: each is a function over a stream's domain list that returns its `Segment`s
(which data, in which order, whether the adapter is reset first). Pure Python (no torch, no numpy): the CLI lists
and checks settings without loading the stream machinery.

`SETTINGS` maps a setting's name to its function; the first line of the function's docstring is its description
(`python -m tta_bench list settings`). `tta_bench.config` takes its `--setting` choices from here and
`tta_bench.streams.schedule` its segments. Adding a setting = one function + one `SETTINGS` entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

GRADUAL_SEVERITIES = (1, 2, 3, 4, 5, 4, 3, 2, 1)  # CoTTA's gradual schedule, per corruption


@dataclass(frozen=True)
class Segment:
    """A stretch of the stream adapted without interruption (one domain in the continual setting)."""

    domain: str  # reported name: the domain, or "mixed"
    severity: int | None
    round: int
    reset: bool  # reset the adapter to its source state before this segment
    parts: tuple[tuple[str, int | None], ...]  # (domain, severity) datasets concatenated
    order: str = "sequential"  # sequential | shuffle | dirichlet | markov

    @property
    def key(self) -> str:
        return self.domain


def continual(domains: Sequence[str], sev: int | None, r: int, graded: bool) -> list[Segment]:
    """Domains one after another, never reset (the standard continual TTA protocol)."""
    return [Segment(d, sev, r, False, ((d, sev),)) for d in domains]


def episodic(domains: Sequence[str], sev: int | None, r: int, graded: bool) -> list[Segment]:
    """Like continual, but the adapter is reset to the source state at every domain."""
    return [Segment(d, sev, r, True, ((d, sev),)) for d in domains]


def gradual(domains: Sequence[str], sev: int | None, r: int, graded: bool) -> list[Segment]:
    """Severity 1→5→1 within each corruption (CoTTA's gradual setting); continual otherwise."""
    if not graded:
        return continual(domains, sev, r, graded)
    return [Segment(f"{d}-{s}", s, r, False, ((d, s),)) for d in domains for s in GRADUAL_SEVERITIES]


def mixed(domains: Sequence[str], sev: int | None, r: int, graded: bool) -> list[Segment]:
    """All domains shuffled together into one segment (per-domain errors still reported)."""
    return [Segment("mixed", sev, r, False, tuple((d, sev) for d in domains), "shuffle")]


def non_iid(domains: Sequence[str], sev: int | None, r: int, graded: bool) -> list[Segment]:
    """Continual, with a label-correlated order inside each domain (Dirichlet, `stream.gamma`)."""
    return [Segment(d, sev, r, False, ((d, sev),), "dirichlet") for d in domains]


def markov(domains: Sequence[str], sev: int | None, r: int, graded: bool) -> list[Segment]:
    """All domains in one stream whose domain and class follow a Markov chain (UniTTA; `stream.markov` preset).

    The chain's stay probabilities and imbalance come from `stream.markov` (unitta, continual, ptta, gli, random, or a
    UniTTA code such as n1nu) and `stream.domain_stay`/`class_stay`/`domain_imbalance`/`class_imbalance`; the order is
    drawn before batching (tta_bench.markov). Per-domain errors are still reported.
    """
    return [Segment("mixed", sev, r, False, tuple((d, sev) for d in domains), "markov")]


def realistic(domains: Sequence[str], sev: int | None, r: int, graded: bool) -> list[Segment]:
    """Compute-aware (Alfarra et al., ICML'24): the continual order, but a method k times slower than the model
    adapts only every k-th batch (the others are predicted by its current state); k measured or `stream.speed_ratio`.
    """
    return continual(domains, sev, r, graded)  # tta_bench.protocols decides which batches are adapted


SETTINGS: dict[str, Callable[[Sequence[str], int | None, int, bool], list[Segment]]] = {
    "continual": continual,
    "episodic": episodic,
    "gradual": gradual,
    "mixed": mixed,
    "non-iid": non_iid,
    "markov": markov,
    "realistic": realistic,
}


def describe(name: str) -> str:
    """The one-line description of setting `name` (its function's docstring, first sentence, joined lines)."""
    doc = (SETTINGS[name].__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())
