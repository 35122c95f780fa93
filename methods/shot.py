"""`shot`: source hypothesis transfer, online (Liang et al., ICML 2020), as TTAB runs it.

Matches LINs-lab/ttab@19cb3ce `ttab/model_adaptation/shot.py` in its online mode (`offline_pre_adapt` false), the
same objective as matsuolab/T3A@ff8cde5 `domainbed/adapt_algorithms.py` `SHOT` (the online port TTAB cites);
tim-learn/SHOT is the offline original. Per test batch, `steps` times:

- one forward of the model: BatchNorm layers in train mode (normalise with the batch statistics and update their
  running statistics, as TTAB's `model.train()`); logits y;
- loss = cls_par · CE(y_i, argmax y_i) over the samples whose max softmax probability exceeds `threshold`
  (self-supervised pseudo-labels) + ent_par · (mean entropy of softmax(y) + Σ_c p̄_c log(p̄_c + 1e-5)), with
  p̄ the batch mean of softmax(y) (information maximisation: confident and diverse predictions);
- one optimizer step on every parameter of the feature extractor; the classifier (the model's last `nn.Linear`,
  TTAB's children named fc/classifier/head, SHOT's netC) is frozen (the source hypothesis);
- the returned logits are those of the last step's forward (before its update), TTAB's `yhat`.

Defaults are TTAB's (`ttab/configs/algorithms.py` "shot": SGD, threshold_shot 0.9, ent_par 1.0, cls_par 0.3;
`parameters.py`: lr 1e-3, n_train_steps 1; `define_optimizer`: momentum 0.9, Nesterov, no weight decay). TTAB
ships no per-benchmark configuration of SHOT (its experiment scripts grid-search lr), so there are no presets.

Deviations: SHOT's clustering pseudo-labels (k-means-style centroids over the whole target set) belong to its
offline mode, which needs the entire test set before predicting; the online mode ported here has only the
confidence-threshold pseudo-labels, as in TTAB and T3A. Layers other than BatchNorm stay in eval mode (dropout
off; TTAB's whole-model `train()` also activates dropout, which its CIFAR ResNets do not have). With no sample
above the threshold TTAB's cross-entropy is NaN on an empty batch but contributes no gradient; here the term is
left out, so the update is the same and the loss finite.
Classification only (TTAB's SHOT is): a model with dense outputs is refused with a UserError.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tta_bench.kernel import UserError
from tta_bench.methods import register
from tta_bench.methods._contrast import classifier_head
from tta_bench.methods.base import BN_TYPES, Adapter, entropy, make_optimizer, opt, optimizer_options, train_only


def shot_loss(logits: torch.Tensor, threshold: float, cls_par: float, ent_par: float) -> torch.Tensor:
    """TTAB's online SHOT objective on logits (N,C): pseudo-label CE over confident samples + IM (ent + div)."""
    probs = logits.softmax(1)
    conf, pseudo = probs.max(1)
    reliable = conf > threshold
    loss = ent_par * (entropy(logits).mean(0) + (probs.mean(0) * torch.log(probs.mean(0) + 1e-5)).sum())
    if reliable.any():
        loss = loss + cls_par * F.cross_entropy(logits[reliable], pseudo[reliable])
    return loss


@register("shot")
class SHOT(Adapter):
    """Information maximisation + confident pseudo-labels; the feature extractor adapts, the classifier is frozen."""

    options = {
        **optimizer_options("sgd", lr=1e-3, also=("adam",), nesterov=True),
        "steps": opt(1, "optimizer steps per test batch (the returned logits are the last step's forward)"),
        "threshold": opt(0.9, "pseudo-labels only for samples whose max softmax probability exceeds this", "[0,1]"),
        "cls_par": opt(0.3, "weight of the pseudo-label cross-entropy", ">=0"),
        "ent_par": opt(1.0, "weight of the information-maximisation term (entropy + diversity)", ">=0"),
    }

    def configure(self) -> None:
        try:
            head = classifier_head(self.model)
        except TypeError:
            raise UserError(
                f"method 'shot' freezes the classifier (the model's last nn.Linear) and adapts the features before "
                f"it, but {type(self.model).__name__} has no nn.Linear. Use a model whose logits come from a final "
                "linear layer, or a method that needs no classifier split (e.g. 'tent')."
            ) from None
        self.model.eval()
        for m in self.model.modules():
            if isinstance(m, BN_TYPES):
                m.train()  # batch statistics, running statistics updated (TTAB's model.train())
        frozen = {id(p) for p in head.parameters()}
        params = train_only(self.model, [p for p in self.model.parameters() if id(p) not in frozen])
        self.optimizer = make_optimizer(params, self.hp)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.hp.steps):
            outputs = self.model(x)
            if outputs.dim() != 2:
                raise UserError(
                    f"method 'shot' adapts classifiers (logits (N, C)); this model returns {tuple(outputs.shape)}. "
                    "Use a classification model, or a method that supports segmentation (e.g. 'tent')."
                )
            loss = shot_loss(outputs.float(), self.hp.threshold, self.hp.cls_par, self.hp.ent_par)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return outputs
