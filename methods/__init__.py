"""Test-time adapters, one file each, registered by name.

Library use::

    from tta_bench.methods import Tent
    adapted = Tent(model, lr=1e-3)      # a drop-in model: adapts on every forward
    logits = adapted(x)

    from tta_bench import methods
    adapted = methods.create("tent", model, lr=1e-3)
    methods.names()                     # every registered adapter

Adding an adapter: a new file `methods/<name>.py` with a subclass of `methods.base.Adapter` decorated
with `@register("<name>")`, and one import line below.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from tta_bench.kernel import Registry
from tta_bench.methods.base import Adapter

METHODS = Registry("method", "python -m tta_bench list methods")


def register(name: str):
    """Class decorator: register an Adapter subclass under `name` (and set `cls.name`)."""

    def deco(cls: type[Adapter]) -> type[Adapter]:
        cls.name = name
        METHODS.add(name, cls)
        return cls

    return deco


def create(name: str, model: nn.Module, **hparams: Any) -> Adapter:
    """Wrap `model` in the adapter registered as `name`, with hyper-parameter overrides."""
    return METHODS.get(name).factory(model, **hparams)


def names() -> list[str]:
    return METHODS.names()


def get(name: str) -> type[Adapter]:
    return METHODS.get(name).factory


# Registration happens on import; keep one line per adapter file.
from tta_bench.methods.adacontrast import AdaContrast  # noqa: E402
from tta_bench.methods.alpha_bn import AlphaBN  # noqa: E402
from tta_bench.methods.cmf import CMF  # noqa: E402
from tta_bench.methods.coop import CoOp  # noqa: E402
from tta_bench.methods.core import Core  # noqa: E402
from tta_bench.methods.cotta import CoTTA  # noqa: E402
from tta_bench.methods.deyo import DeYO  # noqa: E402
from tta_bench.methods.eata import EATA, ETA  # noqa: E402
from tta_bench.methods.ecotta import EcoTTA  # noqa: E402
from tta_bench.methods.lame import LAME  # noqa: E402
from tta_bench.methods.memo import MEMO  # noqa: E402
from tta_bench.methods.norm import Norm  # noqa: E402
from tta_bench.methods.ogen import OGEN  # noqa: E402
from tta_bench.methods.rdumb import RDumb  # noqa: E402
from tta_bench.methods.rmt import RMT  # noqa: E402
from tta_bench.methods.roid import ROID  # noqa: E402
from tta_bench.methods.rotta import RoTTA  # noqa: E402
from tta_bench.methods.rpl import RPL  # noqa: E402
from tta_bench.methods.santa import SANTA  # noqa: E402
from tta_bench.methods.sar import SAR  # noqa: E402
from tta_bench.methods.source import Source  # noqa: E402
from tta_bench.methods.tda import TDA  # noqa: E402
from tta_bench.methods.tent import Tent  # noqa: E402
from tta_bench.methods.tpt import TPT  # noqa: E402
from tta_bench.methods.tta_aug import TTAug  # noqa: E402
from tta_bench.methods.vte import VTE  # noqa: E402

__all__ = [
    "Adapter",
    "METHODS",
    "create",
    "get",
    "names",
    "register",
    "Source",
    "Norm",
    "Tent",
    "TTAug",
    "TPT",
    "VTE",
    "TDA",
    "EATA",
    "ETA",
    "SAR",
    "CoTTA",
    "RoTTA",
    "RPL",
    "LAME",
    "MEMO",
    "AlphaBN",
    "AdaContrast",
    "Core",
    "EcoTTA",
    "CoOp",
    "OGEN",
    "DeYO",
    "ROID",
    "RMT",
    "CMF",
    "SANTA",
    "RDumb",
]
