"""`rdumb`: ETA with a full reset to the source model every 1,000 steps (Press et al., NeurIPS 2023).

Matches the authors' oripress/CCC `models/rdumb.py` (commit 656dec3; with `models/functional.py`) and the suite
port mariodoebler/test-time-adaptation (`methods/base.py` RESET_AFTER_NUM_UPDATES, `cfgs/*/rdumb.yaml`, commit
8b2ed63): the adaptation step is EATA without the Fisher term (`eta`, methods/eata.py: reliable = entropy < E_0,
non-redundant = |cos(p̄, p)| < d_margin, loss = mean H · exp(E_0 - H)); before every step whose count of steps
so far is a positive multiple of `reset_every` (1000) the model, the optimizer and p̄ return to the source state
(the official checks `total_steps % 1000 == 0` before each forward; the suite resets after the 1000th update:
the same steps; with `steps` > 1 the check falls on batch boundaries). The step count and the sample counters run on
across periodic resets; `reset()` clears them.
Defaults: the suite's CIFAR-10-C config (`cifar10_c/rdumb.yaml`: Adam lr 1e-3, d_margin 0.4, E_0 = 0.4 ln C,
no Fisher); the imagenet-c preset is the authors' (SGD lr 0.00025, momentum 0.9, d_margin 0.05, E_0 = 0.4 ln 1000).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from tta_bench.methods import register
from tta_bench.methods.base import opt, optimizer_options
from tta_bench.methods.eata import ETA

SUITE = "mariodoebler/test-time-adaptation:classification/cfgs/{}/rdumb.yaml@8b2ed63"


@register("rdumb")
class RDumb(ETA):
    """ETA that resets itself to the source model every `reset_every` steps."""

    options = {
        **ETA.options,
        **optimizer_options("adam", lr=1e-3, also=("sgd",)),
        "d_margin": replace(ETA.options["d_margin"], default=0.4),
        "reset_every": opt(
            1000, "optimizer steps between full resets to the source state (model, optimizer, p̄)", ">=1"
        ),
    }
    presets = {
        "cifar10-c": {"source": SUITE.format("cifar10_c"), "options": {}},
        "cifar100-c": {"source": SUITE.format("cifar100_c"), "options": {}},
        "imagenet-c": {
            "source": "oripress/CCC:models/rdumb.py@656dec3",
            "options": {"optimizer": "sgd", "lr": 0.00025, "momentum": 0.9, "d_margin": 0.05},
        },
    }

    def reset_state(self) -> None:
        super().reset_state()
        self.total_steps = 0  # steps since construction / reset()
        self.since_reset = 0  # steps since the last reset of any kind
        self.num_resets = 0

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        if self.since_reset >= self.hp.reset_every:
            self.periodic_reset()
        outputs = super().adapt(x)
        self.total_steps += self.hp.steps
        self.since_reset += self.hp.steps
        return outputs

    def periodic_reset(self) -> None:
        """Model, optimizer and p̄ back to the source state; the step and sample counters run on."""
        kept = (self.total_steps, self.num_resets + 1, self.num_samples_update_1, self.num_samples_update_2)
        self.reset()
        self.total_steps, self.num_resets, self.num_samples_update_1, self.num_samples_update_2 = kept
