"""`lame`: Laplacian adjusted maximum-likelihood estimation (Boudiaf et al., CVPR 2022).

Matches fiveai/LAME `src/adaptation/lame.py` (`LAME.run_step`, `laplacian_optimization`,
`entropy_energy`, `kNN_affinity`, `rbf_affinity`, `linear_affinity`) with the defaults of
`src/config/defaults.py` + `configs/method/best/LAME/overall_best.yaml` (affinity 'rbf', knn 5, sigma 1.0
(unused by rbf), force_symmetry False, bound_lambda 1, at most 100 iterations):
- output-only: the model stays in eval mode and no parameter or buffer changes;
- p = softmax(logits), unary = -log(p + 1e-10); features = the input of the classifier layer
  (`feature_layer`, default: the last nn.Linear), L2-normalised; kernel from the affinity (rbf: σ = mean
  distance to the knn-th nearest point, self included; kNN: 1 for the knn nearest others);
  Y <- softmax(-unary + λ K Y) from Y = softmax(-unary) until the entropy energy changes by at most
  1e-8 relatively (checked from the third iteration).
- the official output is the probability matrix Y. The harness reads logits, so `output="log_probs"`
  (default) returns log Y (softmax(log Y) = Y: same predictions and calibration); `output="probs"`
  returns Y itself.
Presets: LAME's one configuration (`overall_best.yaml`, for every benchmark) with the suite's batch sizes
(mariodoebler/test-time-adaptation `cfgs/*/lame.yaml`: 200 on CIFAR, 64 on ImageNet). Any normalisation layer
works (nothing is trained; the features are the classifier's input, e.g. a ViT's class token).
Batch size 1: there is no neighbour; the model's probabilities are returned (the official rbf affinity
gives NaN there).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tta_bench.kernel import UserError, close_matches
from tta_bench.methods import register
from tta_bench.methods.base import Adapter, opt


def affinity(feats: torch.Tensor, kind: str, knn: int) -> torch.Tensor:
    """(N,N) affinity of L2-normalised features (N,d): 'rbf', 'knn' or 'linear' (official classes)."""
    n = feats.size(0)
    kind = kind.lower()
    if kind == "linear":
        return feats @ feats.t()
    dist = torch.norm(feats.unsqueeze(0) - feats.unsqueeze(1), dim=-1, p=2)
    if kind == "rbf":
        sigma = dist.topk(k=min(knn, n), dim=-1, largest=False).values[:, -1].mean()
        return torch.exp(-(dist**2) / (2 * sigma**2))
    if kind == "knn":
        idx = dist.topk(min(knn + 1, n), -1, largest=False).indices[:, 1:]
        return torch.zeros(n, n, device=feats.device).scatter_(-1, idx, 1.0)
    raise UserError(f"lame affinity must be 'rbf', 'knn' or 'linear', got {kind!r} (--set method.affinity=rbf).")


def entropy_energy(y: torch.Tensor, unary: torch.Tensor, pairwise: torch.Tensor, bound_lambda: float) -> torch.Tensor:
    return (unary * y - bound_lambda * pairwise * y + y * torch.log(y.clip(1e-20))).sum()


def laplacian_optimization(unary: torch.Tensor, kernel: torch.Tensor, bound_lambda: float = 1.0, max_steps: int = 100):
    """LAME's bound optimisation: (N,C) unaries and (N,N) kernel -> (N,C) assignment probabilities Y."""
    old_e = float("inf")
    y = (-unary).softmax(-1)
    for i in range(max_steps):
        pairwise = bound_lambda * kernel.matmul(y)
        y = (-unary + pairwise).softmax(-1)
        e = entropy_energy(y, unary, pairwise, bound_lambda).item()
        if i > 1 and abs(e - old_e) <= 1e-8 * abs(old_e):
            break
        old_e = e
    return y


@register("lame")
class LAME(Adapter):
    """Laplacian regularised correction of the model's probabilities; never updates the model."""

    options = {
        "affinity": opt(
            "rbf", "affinity kernel between the batch's features: rbf, knn or linear", ("rbf", "knn", "linear")
        ),
        "knn": opt(
            5,
            "knn affinity: 1 for each sample's knn nearest others; rbf: σ = mean distance to the knn-th nearest "
            "point (self included)",
            ">=1",
        ),
        "sigma": opt(1.0, "read by no kernel: LAME's config key, its rbf takes σ from the knn distances", ">0"),
        "force_symmetry": opt(False, "use the symmetrised affinity (K + Kᵀ) / 2"),
        "bound_lambda": opt(1.0, "weight λ of the Laplacian term: Y <- softmax(log p + λ K Y)", ">=0"),
        "max_steps": opt(100, "maximum bound-optimisation iterations (stops early when the energy settles)", ">=1"),
        "feature_layer": opt("", "module whose input (L2-normalised) is the feature; '': the last nn.Linear"),
        "output": opt(
            "log_probs", "returned values: log_probs (log of LAME's assignment) or probs", ("log_probs", "probs")
        ),
    }

    presets = {
        fam: {"source": f"mariodoebler/test-time-adaptation:classification/cfgs/{d}/lame.yaml@8b2ed63",
              "batch_size": bs,
              "options": {"affinity": "rbf", "knn": 5, "sigma": 1.0, "force_symmetry": False},
              "note": "= fiveai/LAME configs/method/best/LAME/overall_best.yaml"}
        for fam, d, bs in (("cifar10-c", "cifar10_c", 200), ("cifar100-c", "cifar100_c", 200),
                           ("imagenet-c", "imagenet_c", 64))
    }  # fmt: skip

    def configure(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)
        if self.hp.output not in ("log_probs", "probs"):
            raise UserError(f"lame output must be 'log_probs' or 'probs', got {self.hp.output!r}.")
        linear = [n for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        self.feature_layer = self.hp.feature_layer or (linear[-1] if linear else "")
        if not self.feature_layer:
            raise UserError(
                "lame needs the classifier layer whose input are the features: the model has no "
                "nn.Linear; name it with --set method.feature_layer=<module name>."
            )
        names = dict(self.model.named_modules())
        if self.feature_layer not in names:
            hint = close_matches(self.feature_layer, [n for n in names if n])
            raise UserError(f"lame: the model has no module '{self.feature_layer}' (method.feature_layer)."
                            + (f" Did you mean: {', '.join(hint)}?" if hint else "")
                            + f" Its linear layers: {', '.join(linear) or '(none)'}.")  # fmt: skip

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        feats: dict[str, torch.Tensor] = {}
        layer = self.model.get_submodule(self.feature_layer)
        hook = layer.register_forward_hook(lambda m, inp, out: feats.__setitem__("x", inp[0]))
        try:
            logits = self.model(x)
        finally:
            hook.remove()
        probas = logits.float().softmax(1)
        y = probas
        if x.size(0) > 1:
            unary = -torch.log(probas + 1e-10)
            kernel = affinity(F.normalize(feats["x"].float().flatten(1), p=2, dim=-1), self.hp.affinity, self.hp.knn)
            if self.hp.force_symmetry:
                kernel = 1 / 2 * (kernel + kernel.t())
            y = laplacian_optimization(unary, kernel, self.hp.bound_lambda, self.hp.max_steps)
        return y.log() if self.hp.output == "log_probs" else y

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self.infer(x)
