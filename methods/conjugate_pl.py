"""`conjugate_pl`: test-time adaptation via conjugate pseudo-labels (Goyal et al., NeurIPS 2022).

Matches locuslab/tta_conjugate@52c7e05 `cifar_tta_test.py` (`meta_test_adaptive`, `OPTIM.ADAPT: conjugate`) with
its `tent.py` (`configure_model`, `collect_params`) and `conf.py` defaults; TTAB's port (LINs-lab/ttab@19cb3ce
`ttab/model_adaptation/conjugate_pl.py`) computes the same loss. Per test batch, `steps` times:

- logits y = model(x) / T (T = `temperature`), BatchNorm on the test batch's statistics (running stats dropped),
  only the normalisation layers' affine parameters trained;
- p = softmax(y); conjugate pseudo-label y* = (I + ε·diag(p) − ε·p pᵀ)⁻¹ p per sample (ε = `eps`, the poly-1
  loss coefficient the model was trained with; for a cross-entropy-trained model ε = 0 and y* = p);
- loss = mean over the batch of logsumexp(y) − Σ_c (y*_c y_c − ε y*_c (1 − p_c)) (the conjugate of the training
  loss; for ε = 0 it is the softmax entropy of y, i.e. Tent's loss on temperature-scaled logits); gradients flow
  through y* and p as in the official (nothing detached); one optimizer step.

Then the returned prediction is a new forward of the updated model on the same batch (the official evaluates
`outputs_new = model(x_curr)` after the update), unscaled by T.

Defaults: SGD lr 1e-3, momentum 0.9, Nesterov, no weight decay, 1 step, T 1.0 (`cfgs/cifar.yaml`,
`cfgs/imagenetc.yaml` and `conf.py`), ε 0 (`conf.py` `MODEL.EPS`; TTAB's `model_eps` 0.0; the yaml files set
ε 6 / 8 for the authors' poly-loss checkpoints). No presets: the official configs are those of poly-loss models
(ε 6 and 8) that this suite does not ship, with the values of the defaults otherwise.

Deviations: LayerNorm/GroupNorm affine parameters are trained too (TTAB's choice; the official collects
BatchNorm2d only, so a BatchNorm model trains the same parameters); layers other than BatchNorm stay in eval mode
(dropout off; the official `model.train()` would activate dropout, which its ResNets do not have). For ε = 0 the
identity system is not solved (y* = p exactly). TTAB returns the pre-update logits divided by T instead.
Dense (segmentation) logits are scored per pixel (the official is classification only).
"""

from __future__ import annotations

import torch

from tta_bench.methods import register
from tta_bench.methods.base import (
    Adapter,
    make_optimizer,
    norm_affine_params,
    opt,
    optimizer_options,
    train_only,
    use_batch_stats,
)


def conjugate_loss(logits: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Per-sample conjugate pseudo-label loss (N,) of (temperature-scaled) logits (N,C) for poly-1 coefficient eps.

    Dense logits (N,C,H,W) are scored per pixel: the result is (N·H·W,)."""
    logits = logits.float()
    if logits.dim() > 2:
        logits = logits.movedim(1, -1).reshape(-1, logits.shape[1])
    p = logits.softmax(1)
    if eps == 0:
        y_star = p
    else:
        eye = torch.eye(p.shape[1], device=p.device, dtype=p.dtype).expand(p.shape[0], -1, -1)
        matrix = eye + eps * torch.diag_embed(p) - eps * p.unsqueeze(2) @ p.unsqueeze(1)
        y_star = torch.linalg.solve(matrix, p.unsqueeze(2)).squeeze(2)
    return torch.logsumexp(logits, 1) - (y_star * logits - eps * y_star * (1 - p)).sum(1)


@register("conjugate_pl")
class ConjugatePL(Adapter):
    """Conjugate pseudo-label loss on normalisation affine parameters; predicts after the update."""

    options = {
        **optimizer_options("sgd", lr=1e-3, also=("adam",), nesterov=True),
        "steps": opt(1, "optimizer steps per test batch before the predicting forward"),
        "temperature": opt(1.0, "T: the loss is computed on logits / T", ">0"),
        "eps": opt(
            0.0,
            "ε of the poly-1 loss the model was trained with (0: cross-entropy, whose conjugate is the entropy)",
            ">=0",
        ),
    }

    def configure(self) -> None:
        use_batch_stats(self.model)
        params = train_only(self.model, norm_affine_params(self.model))
        self.optimizer = make_optimizer(params, self.hp)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            loss = conjugate_loss(self.model(x) / self.hp.temperature, self.hp.eps).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            return self.model(x)
