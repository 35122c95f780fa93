"""`eata` / `eta`: efficient anti-forgetting test-time adaptation (Niu et al., ICML 2022).

Matches mr-eggplant/EATA `eata.py` (`forward_and_adapt_eata`, `update_model_probs`, `configure_model`,
`collect_params`) and the Fisher computation in its `main.py`, step for step:
- model in train mode, BatchNorm layers on test-batch statistics (running stats dropped), only the affine
  parameters of BatchNorm/LayerNorm/GroupNorm trained (SGD, lr 0.00025, momentum 0.9 — `main.py`, ImageNet,
  batch 64). The EATA repo's `collect_params` takes BatchNorm2d only; the authors' later copy in
  mr-eggplant/SAR `eata.py` (used for their ViT-B/16 and GN results) and the suite add LayerNorm/GroupNorm,
  which is what this port does (a BN model trains the same parameters either way);
- one forward; per-sample entropy; reliable samples: entropy < E_0; redundant samples dropped when
  |cos(p̄, p_i)| >= d_margin against the moving average p̄ of the selected samples' probabilities
  (p̄ <- 0.9 p̄ + 0.1 mean, first value = mean; only once p̄ exists); loss = mean of
  entropy · exp(E_0 - entropy) over the kept samples, + fisher_alpha · Σ F (θ - θ_0)² when Fishers are
  set; backward and step only when a sample is kept; the returned logits are those of that forward
  (before the update).
- Fisher (`prepare`): the configured model on `fisher_size` clean source samples, cross-entropy against
  its own argmax, squared gradients summed over batches and divided by the number of batches, θ_0 the
  parameters at that time (`main.py`, --fisher_size 2000, --fisher_alpha 2000).

Defaults are the official ones (`main.py`, ImageNet-C; the official code has no CIFAR configuration):
E_0 = 0.4 · ln C (`e_margin_frac`, 0.4 · ln 1000 for ImageNet), d_margin 0.05, fisher_alpha 2000,
fisher_size 2000. With few classes d_margin 0.05 rejects nearly every sample as redundant after the first
batch (cos(p̄, p_i) of a confident 10-class prediction is ~0.3), so EATA behaves like `norm`; the CIFAR-10-C
setting of the common benchmark mariodoebler/test-time-adaptation (`cfgs/cifar10_c/eata.yaml`, not the
authors' code: Adam lr 1e-3, d_margin 0.4, fisher_alpha 1; CIFAR-100-C: d_margin 0.1) is the `cifar10-c` /
`cifar100-c` preset, applied by the harness on those streams (tta_bench/presets.py). `eata` declares
`needs_source` (the runner calls `prepare`); used as a library without `prepare`, it runs without the Fisher
term, i.e. as `eta` (EATA without the regulariser, registered too).
Difference: the official `reset()` keeps p̄; here `reset()` returns to the state after construction
(p̄ cleared), as the Adapter contract requires. Batch size 1 works (BN over spatial positions).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from tta_bench.methods import register
from tta_bench.methods.base import (
    NORM_TYPES,
    Adapter,
    entropy,
    make_optimizer,
    norm_affine_params,
    opt,
    optimizer_options,
    train_only,
    use_batch_stats,
)

_SUITE = "mariodoebler/test-time-adaptation:classification/cfgs"
_ADAM = {"optimizer": "adam", "lr": 1e-3, "betas": (0.9, 0.999), "wd": 0.0, "steps": 1, "e_margin_frac": 0.4}
_SGD = {
    "optimizer": "sgd",
    "lr": 0.00025,
    "momentum": 0.9,
    "nesterov": False,
    "wd": 0.0,
    "steps": 1,
    "e_margin_frac": 0.4,
}
EATA_PRESETS = {
    "cifar10-c": {"source": f"{_SUITE}/cifar10_c/eata.yaml@8b2ed63", "batch_size": 200,
                  "options": {**_ADAM, "d_margin": 0.4, "fisher_alpha": 1.0, "fisher_size": 2000}},
    "cifar100-c": {"source": f"{_SUITE}/cifar100_c/eata.yaml@8b2ed63", "batch_size": 200,
                   "options": {**_ADAM, "d_margin": 0.1, "fisher_alpha": 1.0, "fisher_size": 2000}},
    "imagenet-c": {"source": "mr-eggplant/EATA:main.py@f739b36", "batch_size": 64,
                   "options": {**_SGD, "d_margin": 0.05, "fisher_alpha": 2000.0, "fisher_size": 2000}},
}  # fmt: skip


def _eta_presets() -> dict:
    """ETA's: EATA's without the Fisher options; the suite's `eta.yaml` files hold the same values."""
    out = {}
    for fam, p in EATA_PRESETS.items():
        src = p["source"].replace("eata.yaml", "eta.yaml")
        opts = {k: v for k, v in p["options"].items() if k not in ("fisher_alpha", "fisher_size")}
        out[fam] = {**p, "source": src, "options": opts}
    return out


def update_model_probs(current: torch.Tensor | None, new_probs: torch.Tensor) -> torch.Tensor | None:
    """EATA's moving average p̄ (Eqn. 4) of the kept samples' probabilities (N,C) -> (C,)."""
    with torch.no_grad():
        if new_probs.size(0) == 0:
            return current
        if current is None:
            return new_probs.mean(0)
        return 0.9 * current + (1 - 0.9) * new_probs.mean(0)


@register("eata")
class EATA(Adapter):
    """Entropy minimisation on reliable, non-redundant samples, with a Fisher anti-forgetting regulariser."""

    options = {
        **optimizer_options("sgd", lr=0.00025, also=("adam",)),
        "steps": opt(1, "optimizer steps per test batch, each a new forward that re-selects the samples"),
        "e_margin_frac": opt(
            0.4,
            "reliable samples: entropy below E_0 = e_margin_frac · ln C (C classes); E_0 also sets the weight "
            "exp(E_0 - entropy)",
            ">=0",
        ),
        "d_margin": opt(
            0.05, "non-redundant samples: |cos| between a sample's probabilities and their moving mean p̄ below d_margin"
        ),
        "fisher_alpha": opt(
            2000.0, "weight of the Fisher anti-forgetting regulariser Σ F (θ - θ_0)² (0 or no prepare: ETA)", ">=0"
        ),
        "fisher_size": opt(2000, "clean source samples used to estimate the Fisher information in prepare", ">=1"),
    }
    presets = EATA_PRESETS
    needs_source = True
    use_fisher = True

    def configure(self) -> None:
        use_batch_stats(self.model)
        self.model.train()  # the official configure_model puts the whole model in train mode
        self.params = train_only(self.model, norm_affine_params(self.model, NORM_TYPES))
        self.optimizer = make_optimizer(self.params, self.hp)
        if self.use_fisher:  # buffers, so the prepared Fishers travel with state_dict (runner cache)
            self.register_buffer("fisher_ready", torch.tensor(False))
            for i, p in enumerate(self.params):
                self.register_buffer(f"fisher_{i}", torch.zeros_like(p))
                self.register_buffer(f"fisher_anchor_{i}", p.detach().clone())

    def reset_state(self) -> None:
        self.probs: torch.Tensor | None = None
        self.num_samples_update_1 = 0  # reliable samples so far
        self.num_samples_update_2 = 0  # reliable and non-redundant samples so far

    def prepare(self, source: Iterable) -> None:
        """Fisher importance of the trained parameters on `fisher_size` clean source samples (official main.py)."""
        if not self.use_fisher:
            return
        fishers, seen, iters = [torch.zeros_like(p) for p in self.params], 0, 0
        with torch.enable_grad():
            for x, _ in source:
                if seen >= self.hp.fisher_size:
                    break
                x = x[: self.hp.fisher_size - seen].to(self.params[0].device)
                seen, iters = seen + len(x), iters + 1
                out = self.model(x)
                grads = torch.autograd.grad(F.cross_entropy(out, out.max(1)[1]), self.params)
                for f, g in zip(fishers, grads):
                    f.add_(g.detach() ** 2)
        with torch.no_grad():
            for i, (f, p) in enumerate(zip(fishers, self.params)):
                getattr(self, f"fisher_{i}").copy_(f / max(iters, 1))
                getattr(self, f"fisher_anchor_{i}").copy_(p)
            self.fisher_ready.fill_(iters > 0)

    def ewc_loss(self) -> torch.Tensor | float:
        """fisher_alpha · Σ F (θ - θ_0)² over the trained parameters (0 when no Fishers are set)."""
        if not self.use_fisher or not bool(self.fisher_ready):
            return 0.0
        loss = 0.0
        for i, p in enumerate(self.params):
            f, anchor = getattr(self, f"fisher_{i}"), getattr(self, f"fisher_anchor_{i}")
            loss = loss + self.hp.fisher_alpha * (f * (p - anchor) ** 2).sum()
        return loss

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            outputs = self.model(x)
            e_margin = self.hp.e_margin_frac * math.log(outputs.shape[1])
            ent = entropy(outputs)
            ids1 = torch.where(ent < e_margin)[0]
            ent, probs = ent[ids1], outputs[ids1].softmax(1)
            if self.probs is not None:
                cos = F.cosine_similarity(self.probs.unsqueeze(0), probs, dim=1)
                ids2 = torch.where(cos.abs() < self.hp.d_margin)[0]
                ent, probs = ent[ids2], probs[ids2]
            self.probs = update_model_probs(self.probs, probs)
            coeff = 1 / torch.exp(ent.clone().detach() - e_margin)
            loss = ent.mul(coeff).mean(0) + self.ewc_loss()
            if ent.size(0) != 0:
                loss.backward()
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.num_samples_update_1 += ids1.size(0)
            self.num_samples_update_2 += ent.size(0)
        return outputs


@register("eta")
class ETA(EATA):
    """EATA without the Fisher regulariser (the official `--algorithm eta`); needs no source data."""

    options = {k: v for k, v in EATA.options.items() if k not in ("fisher_alpha", "fisher_size")}
    presets = _eta_presets()
    needs_source = False
    use_fisher = False
