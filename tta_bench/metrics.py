"""Metrics accumulated on the device without host synchronisation: error, ECE, mIoU, group accuracy, forgetting.

A meter is created per segment (`METERS[task](num_domains, device)`), updated every batch with
`update(logits, y, domain_ids)` (pure tensor ops, no `.item()`), and read once at the segment's end.
Errors are in percent. New tasks register a meter class in `METERS`.

Divergence: a prediction whose logits hold NaN or +inf, or no finite value at all (every class -inf), is
*non-finite*. It is counted as an error (never as the argmax of NaN, class 0), enters the ECE as a confident
error (confidence 1: a diverged model never looks well calibrated), and is counted per batch
(`batch_nonfinite()`), so a diverged run reads as one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def nonfinite(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Bool mask of predictions (reducing class dim `dim`) with a NaN or +inf logit, or with no finite logit.

    -inf alone is allowed: masked classes (scored over a class subset) are -inf by design.
    """
    return logits.isnan().any(dim) | logits.isposinf().any(dim) | logits.isneginf().all(dim)


def scores(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(probs, confidence, correct, non-finite) of (N,C[,H,W]) logits; a non-finite prediction: wrong, confidence 1."""
    logits = logits.detach().float()
    bad = nonfinite(logits)
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    conf = conf.masked_fill(bad, 1.0)
    correct = (pred == y) & ~bad
    return probs, conf, correct, bad


def ece_from_bins(conf_sum: torch.Tensor, acc_sum: torch.Tensor, count: torch.Tensor) -> float:
    """Expected calibration error (%) from per-bin sums: sum_b |acc_b - conf_b| * n_b / n."""
    n = count.sum().clamp_min(1)
    return float(((acc_sum - conf_sum).abs().sum() / n) * 100)


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> float:
    """ECE (%) of (N,C) probabilities against labels (N,), equal-width confidence bins (Guo et al. 2017)."""
    m = ClassificationMeter(1, probs.device, n_bins)
    m.update(probs.log(), y, torch.zeros_like(y))
    return m.summary()["ece"]


class ClassificationMeter:
    """Top-1 error and 15-bin ECE, overall, per batch and per domain id."""

    def __init__(self, num_domains: int, device: torch.device | str, n_bins: int = 15) -> None:
        self.n_bins = n_bins
        z = lambda *s: torch.zeros(*s, device=device, dtype=torch.float64)  # noqa: E731
        self.conf_sum, self.acc_sum, self.bin_count = z(n_bins), z(n_bins), z(n_bins)
        self.dom_correct, self.dom_count = z(num_domains), z(num_domains)
        self.batch_correct: list[torch.Tensor] = []
        self.batch_bad: list[torch.Tensor] = []
        self.batch_count: list[int] = []
        # label-free statistics (model selection, tta_bench/selection.py): summed prediction entropy (nats) and
        # summed class probabilities (the marginal prediction); a non-finite prediction counts as uniform
        self.ent_sum = z(())
        self.prob_sum: torch.Tensor | None = None

    def update(self, logits: torch.Tensor, y: torch.Tensor, domain_ids: torch.Tensor) -> None:
        probs, conf, correct, bad = scores(logits, y)
        self._label_free(probs, bad)
        self.batch_bad.append(bad.sum())
        correct = correct.double()
        bins = (conf * self.n_bins).long().clamp_(0, self.n_bins - 1)
        self.conf_sum.index_add_(0, bins, conf.double())
        self.acc_sum.index_add_(0, bins, correct)
        self.bin_count.index_add_(0, bins, torch.ones_like(correct))
        self.dom_correct.index_add_(0, domain_ids, correct)
        self.dom_count.index_add_(0, domain_ids, torch.ones_like(correct))
        self.batch_correct.append(correct.sum())
        self.batch_count.append(int(y.numel()))

    def batch_errors(self) -> list[float]:
        """Error (%) of every batch so far (one host sync)."""
        if not self.batch_correct:
            return []
        c = torch.stack(self.batch_correct).cpu().tolist()
        return [100.0 * (1 - ci / n) for ci, n in zip(c, self.batch_count)]

    def batch_nonfinite(self) -> list[int]:
        """Non-finite predictions of every batch so far (one host sync)."""
        return [int(v) for v in torch.stack(self.batch_bad).cpu().tolist()] if self.batch_bad else []

    def running_error(self) -> float:
        return 100.0 * (1 - float(self.dom_correct.sum()) / max(1, sum(self.batch_count)))

    def domain_results(self) -> dict[int, dict[str, Any]]:
        """{domain_id: {"error": %, "n": samples}} for the domains seen."""
        cnt, cor = self.dom_count.cpu().tolist(), self.dom_correct.cpu().tolist()
        return {d: {"error": 100.0 * (1 - c / n), "n": int(n)} for d, (c, n) in enumerate(zip(cor, cnt)) if n > 0}

    def _label_free(self, probs: torch.Tensor, bad: torch.Tensor) -> None:
        if probs.dim() != 2 or probs.shape[0] == 0:
            return
        p = probs.double().masked_fill(bad[:, None], 1.0 / probs.shape[1])
        self.ent_sum += -(p * p.clamp_min(1e-300).log()).sum()
        self.prob_sum = p.sum(0) if self.prob_sum is None else self.prob_sum + p.sum(0)

    def label_free(self) -> dict[str, float | None]:
        """`mean_entropy`: mean prediction entropy (nats); `marginal_entropy`: entropy (nats) of the mean prediction
        (the label-free statistics of model selection; None before any prediction)."""
        n = sum(self.batch_count)
        if self.prob_sum is None or n == 0:
            return {"mean_entropy": None, "marginal_entropy": None}
        m = self.prob_sum / n
        marginal = float(-(m * m.clamp_min(1e-300).log()).sum())
        return {"mean_entropy": float(self.ent_sum) / n, "marginal_entropy": marginal}

    def summary(self) -> dict[str, Any]:
        n = sum(self.batch_count)
        return {
            "error": self.running_error(),
            "ece": ece_from_bins(self.conf_sum, self.acc_sum, self.bin_count),
            "n": n,
            **self.label_free(),
        }


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC (%) of positive-class `scores` for binary `labels` (1 = positive), ties counted half
    (Mann-Whitney U / (n_pos * n_neg)); None when one class is absent."""
    from scipy.stats import rankdata

    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg) * 100)


class BinaryClassificationMeter(ClassificationMeter):
    """ClassificationMeter plus `balanced_error` (%, mean per-class error over the classes present) and
    `auc` (%, ROC AUC of the class-1 softmax score; binary tasks only, else None), for imbalanced tasks.

    Per batch it only accumulates on the device (per-class counts; scores kept as tensors); ranks for the
    AUC are computed once, when a summary is read.
    """

    def __init__(self, num_domains: int, device: torch.device | str, n_bins: int = 15) -> None:
        super().__init__(num_domains, device, n_bins)
        self.num_domains, self.device = num_domains, device
        self.cls_correct: torch.Tensor | None = None  # (domains, classes), allocated at the first update
        self.cls_count: torch.Tensor | None = None
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.domains: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, y: torch.Tensor, domain_ids: torch.Tensor) -> None:
        super().update(logits, y, domain_ids)
        c = logits.shape[1]
        if self.cls_count is None:
            self.cls_correct = torch.zeros(self.num_domains, c, device=self.device, dtype=torch.float64)
            self.cls_count = torch.zeros_like(self.cls_correct)
        probs, _, correct, bad = scores(logits, y)
        idx = domain_ids * c + y
        self.cls_correct.view(-1).index_add_(0, idx, correct.double())
        self.cls_count.view(-1).index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
        if c == 2:  # a non-finite prediction ranks as uninformative (score 0.5)
            self.scores.append(probs[:, 1].masked_fill(bad, 0.5))
            self.labels.append(y.detach())
            self.domains.append(domain_ids.detach())

    @staticmethod
    def _balanced(correct: torch.Tensor, count: torch.Tensor) -> float | None:
        seen = count > 0
        return float(100 * (1 - (correct[seen] / count[seen]).mean())) if seen.any() else None

    def _auc(self, domain: int | None) -> float | None:
        if not self.scores:
            return None
        s, y, d = (torch.cat(t).cpu().numpy() for t in (self.scores, self.labels, self.domains))
        keep = np.ones(len(s), bool) if domain is None else d == domain
        return roc_auc(s[keep], y[keep])

    def domain_results(self) -> dict[int, dict[str, Any]]:
        out = super().domain_results()
        if self.cls_count is None:
            return out
        correct, count = self.cls_correct.cpu(), self.cls_count.cpu()
        for d, res in out.items():
            res.update(balanced_error=self._balanced(correct[d], count[d]), auc=self._auc(d))
        return out

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        if self.cls_count is None:
            return {**out, "balanced_error": None, "auc": None}
        bal = self._balanced(self.cls_correct.sum(0).cpu(), self.cls_count.sum(0).cpu())
        return {**out, "balanced_error": bal, "auc": self._auc(None)}


def miou_from_confusion(conf: torch.Tensor, missed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class IoU (C,) and mean IoU from a (C,C) confusion matrix (rows: ground truth, cols: prediction).

    IoU_c = TP_c / (TP_c + FP_c + FN_c); `missed` (C,): pixels of ground-truth class c with a non-finite
    prediction (false negatives of c that are no other class's false positive). A class absent from both the
    ground truth and the predictions (union 0) has IoU NaN and is excluded from the mean (as in mmseg's
    nanmean); the mean of no class is NaN.
    """
    conf = conf.double()
    tp = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - tp + (0 if missed is None else missed.double())
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    return iou, iou.nanmean()


class SegmentationMeter:
    """mIoU, pixel accuracy and per-pixel ECE from confusion matrices accumulated on the device.

    `update(logits (N,C,H,W), y (N,H,W) long with `ignore_index`, domain_ids (N,))`: the valid pixels
    (label != ignore, label < C) are counted with one bincount of `domain * C*C + C*y + pred`, so each
    domain (and each batch) has its own (C,C) confusion matrix, without a host sync. C is taken from the
    logits at the first update. "error" is 100 - mIoU (%), so mean errors and leaderboards work unchanged;
    per-class IoUs are reported as `iou_<class name>` (%).
    """

    def __init__(
        self,
        num_domains: int,
        device: torch.device | str,
        num_classes: int | None = None,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        n_bins: int = 15,
    ) -> None:
        self.num_domains, self.device, self.ignore_index, self.n_bins = num_domains, device, ignore_index, n_bins
        self.class_names = class_names
        self.num_classes = num_classes
        self.conf: torch.Tensor | None = None  # (D,C,C) int64
        self.missed: torch.Tensor | None = None  # (D,C) int64: valid pixels with a non-finite prediction
        z = lambda: torch.zeros(n_bins, device=device, dtype=torch.float64)  # noqa: E731
        self.conf_sum, self.acc_sum, self.bin_count = z(), z(), z()
        self.dom_images = torch.zeros(num_domains, device=device, dtype=torch.float64)
        self.batch_conf: list[torch.Tensor] = []
        self.batch_missed: list[torch.Tensor] = []
        self.batch_count: list[int] = []  # images per batch

    @classmethod
    def for_spec(cls, spec: Any, num_domains: int, device: torch.device | str) -> SegmentationMeter:
        return cls(num_domains, device, spec.num_classes, spec.ignore_index, spec.class_names)

    def update(self, logits: torch.Tensor, y: torch.Tensor, domain_ids: torch.Tensor) -> None:
        n, c = logits.shape[:2]
        if self.conf is None:
            self.num_classes = self.num_classes or c
            self.conf = torch.zeros(self.num_domains, c, c, dtype=torch.long, device=logits.device)
            self.missed = torch.zeros(self.num_domains, c, dtype=torch.long, device=logits.device)
        probs, conf, _, bad = scores(logits, y)
        pred = probs.argmax(1)
        valid = (y != self.ignore_index) & (y >= 0) & (y < c)
        dom = domain_ids.view(n, *([1] * (y.dim() - 1))).expand_as(y)
        idx = (dom * (c * c) + y * c + pred)[valid & ~bad]
        counts = torch.bincount(idx, minlength=self.num_domains * c * c).view(self.num_domains, c, c)
        miss = torch.bincount((dom * c + y)[valid & bad], minlength=self.num_domains * c).view(self.num_domains, c)
        self.conf += counts
        self.missed += miss
        self.batch_conf.append(counts.sum(0))
        self.batch_missed.append(miss.sum(0))
        self.batch_count.append(int(n))
        self.dom_images.index_add_(0, domain_ids, torch.ones(n, device=domain_ids.device, dtype=torch.float64))
        conf_v, correct = conf[valid].double(), ((pred == y) & ~bad)[valid].double()
        bins = (conf_v * self.n_bins).long().clamp_(0, self.n_bins - 1)
        self.conf_sum.index_add_(0, bins, conf_v)
        self.acc_sum.index_add_(0, bins, correct)
        self.bin_count.index_add_(0, bins, torch.ones_like(correct))

    def _names(self) -> list[str]:
        c = self.conf.shape[-1] if self.conf is not None else (self.num_classes or 0)
        names = self.class_names if self.class_names and len(self.class_names) == c else [str(i) for i in range(c)]
        return [str(n).replace(" ", "_") for n in names]

    def _results(self, conf: torch.Tensor, missed: torch.Tensor) -> dict[str, Any]:
        iou, miou = miou_from_confusion(conf.cpu(), missed.cpu())
        total = float(conf.sum()) + float(missed.sum())
        out = {
            "error": 100.0 - 100.0 * float(miou),
            "miou": 100.0 * float(miou),
            "pixel_acc": 100.0 * float(conf.diagonal().sum()) / total if total else float("nan"),
            "n_pixels": int(total),
        }
        out.update({f"iou_{k}": 100.0 * float(v) for k, v in zip(self._names(), iou.tolist())})
        return out

    def batch_errors(self) -> list[float]:
        """100 - mIoU (%) of every batch so far (one host sync)."""
        if not self.batch_conf:
            return []
        confs = torch.stack(self.batch_conf).cpu().double()
        missed = torch.stack(self.batch_missed).cpu()
        return [100.0 - 100.0 * float(miou_from_confusion(cm, m)[1]) for cm, m in zip(confs, missed)]

    def batch_nonfinite(self) -> list[int]:
        """Valid pixels with a non-finite prediction, per batch so far (one host sync)."""
        return [int(m) for m in torch.stack(self.batch_missed).sum(1).cpu().tolist()] if self.batch_missed else []

    def running_error(self) -> float:
        if self.conf is None:
            return float("nan")
        return self._results(self.conf.sum(0), self.missed.sum(0))["error"]

    def confusion(self, domain: int | None = None) -> torch.Tensor:
        """(C,C) confusion matrix (rows: ground truth) of one domain id, or of all when None."""
        assert self.conf is not None, "no batch seen yet"
        return self.conf.sum(0) if domain is None else self.conf[domain]

    def domain_results(self) -> dict[int, dict[str, Any]]:
        """{domain_id: {"error", "miou", "pixel_acc", "iou_<class>", "n" images}} for the domains seen."""
        if self.conf is None:
            return {}
        images = self.dom_images.cpu().tolist()
        return {
            d: {**self._results(self.conf[d], self.missed[d]), "n": int(images[d])}
            for d in range(self.num_domains)
            if images[d]
        }

    def summary(self) -> dict[str, Any]:
        res = self._results(self.conf.sum(0), self.missed.sum(0)) if self.conf is not None else {"error": float("nan")}
        return {**res, "ece": ece_from_bins(self.conf_sum, self.acc_sum, self.bin_count), "n": sum(self.batch_count)}


class GroupMeter(ClassificationMeter):
    """ClassificationMeter plus group accuracies, for streams whose samples carry a group (class x attribute).

    Group convention (`GROUP_INFO`): a stream that records groups declares their names in
    `spec.info["groups"]` (C*A names for C classes and A attribute values) and hands labels that *are* the
    group ids, `y = label + C * attribute` (`encode_groups`); the class label is `y % C`. Every other part of
    the harness only sees the meter, so no batch field is needed. Accuracies in percent:
    `worst_group_acc` = min over the groups present of their accuracy (Sagawa et al. 2020, as TTAB reports),
    `avg_group_acc` = the unweighted mean of those accuracies; per domain also `group_acc_<name>`.
    """

    def __init__(self, num_domains: int, device: torch.device | str, num_classes: int, group_names: list[str],
                 n_bins: int = 15) -> None:  # fmt: skip
        super().__init__(num_domains, device, n_bins)
        self.num_classes, self.group_names = num_classes, [str(g).replace(" ", "_") for g in group_names]
        z = lambda: torch.zeros(num_domains, len(group_names), device=device, dtype=torch.float64)  # noqa: E731
        self.grp_correct, self.grp_count = z(), z()

    @classmethod
    def for_spec(cls, spec: Any, num_domains: int, device: torch.device | str) -> GroupMeter:
        return cls(num_domains, device, spec.num_classes, spec.info[GROUP_INFO])

    def update(self, logits: torch.Tensor, y: torch.Tensor, domain_ids: torch.Tensor) -> None:
        labels = y % self.num_classes
        super().update(logits, labels, domain_ids)
        _, _, correct, _ = scores(logits, labels)
        idx = domain_ids * len(self.group_names) + y
        self.grp_correct.view(-1).index_add_(0, idx, correct.double())
        self.grp_count.view(-1).index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))

    def _groups(self, correct: torch.Tensor, count: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
        """(worst and average group accuracy, {group_acc_<name>: accuracy}) from per-group counts."""
        seen = count > 0
        acc = torch.where(seen, correct / count.clamp_min(1), torch.full_like(count, float("nan"))) * 100
        head = {
            "worst_group_acc": float(acc[seen].min()) if seen.any() else None,
            "avg_group_acc": float(acc[seen].mean()) if seen.any() else None,
        }
        return head, {f"group_acc_{n}": (float(a) if s else None) for n, a, s in zip(self.group_names, acc, seen)}

    def group_accuracies(self, domain: int | None = None) -> dict[str, float | None]:
        """{group name: accuracy %} over the stream (or one domain id); None for a group not seen."""
        correct, count = self.grp_correct.cpu(), self.grp_count.cpu()
        c, n = (correct.sum(0), count.sum(0)) if domain is None else (correct[domain], count[domain])
        return {k[len("group_acc_") :]: v for k, v in self._groups(c, n)[1].items()}

    def domain_results(self) -> dict[int, dict[str, Any]]:
        out = super().domain_results()
        correct, count = self.grp_correct.cpu(), self.grp_count.cpu()
        for d, res in out.items():
            head, per = self._groups(correct[d], count[d])
            res.update(**head, **per)
        return out

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), **self._groups(self.grp_correct.sum(0).cpu(), self.grp_count.sum(0).cpu())[0]}


GROUP_INFO = "groups"  # spec.info key: the group names, in group-id order (GroupMeter)


def encode_groups(labels: Any, attributes: Any, num_classes: int) -> Any:
    """Group ids `label + num_classes * attribute` of tensors or arrays (the labels a grouped stream hands;
    `% num_classes` decodes)."""
    return labels + num_classes * attributes


OUTLIER_LABEL = -1  # the label of an outlier image mixed into an open-world stream (tta_bench.outliers)


def fpr_at_tpr(scores: np.ndarray, is_outlier: np.ndarray, tpr: float = 0.95) -> float | None:
    """FPR (%) at `tpr` of outlier scores (higher = more likely an outlier), in-distribution samples positive (the
    usual OOD convention): the fraction of outliers scored at most the threshold that accepts `tpr` of the
    in-distribution samples (the ceil(tpr * n_id)-th lowest in-distribution score, ties accepted); None when one kind
    is absent."""
    ind, out = scores[~is_outlier], scores[is_outlier]
    if len(ind) == 0 or len(out) == 0:
        return None
    k = int(np.ceil(tpr * len(ind) - 1e-9))
    t = np.sort(ind)[max(k, 1) - 1]
    return float((out <= t).mean() * 100)


class OpenWorldMeter:
    """The stream's meter with outliers (label OUTLIER_LABEL) decoded out, as `GroupMeter` decodes group labels.

    `update(logits, y, domain_ids, ood_score=None)`: samples with `y == OUTLIER_LABEL` never reach the wrapped meter
    (they count neither as errors nor as correct: every error, ECE, per-batch and per-domain figure is over the
    in-distribution samples, `n` counts those); every sample's outlier score (higher = more likely an outlier;
    default 1 - max softmax) is kept on the device, and `ood_auroc` (ROC AUC %, outliers positive; = AUROC of the
    negated score with in-distribution positive, as STAMP reports it) and `ood_fpr95` (`fpr_at_tpr`) are computed
    when a summary is read. Per domain also `n_outliers`. Selecting the samples costs one host sync per batch.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ood_scores: list[torch.Tensor] = []
        self.outlier: list[torch.Tensor] = []
        self.domains: list[torch.Tensor] = []

    def __getattr__(self, name: str) -> Any:  # batch_count, batch_nonfinite, running_error, ... of the inner meter
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def update(self, logits: torch.Tensor, y: torch.Tensor, domain_ids: torch.Tensor, ood_score=None) -> None:
        out = y == OUTLIER_LABEL
        keep = ~out
        self.inner.update(logits[keep], y[keep], domain_ids[keep])
        if ood_score is None:
            ood_score = 1.0 - scores(logits, torch.zeros_like(y))[1]
        self.ood_scores.append(ood_score.detach().double().reshape(-1))
        self.outlier.append(out.detach())
        self.domains.append(domain_ids.detach())

    def batch_errors(self) -> list[float]:
        """In-distribution error (%) of every batch; 0.0 for a batch of outliers only (weight n = 0 everywhere)."""
        if not self.inner.batch_correct:
            return []
        c = torch.stack(self.inner.batch_correct).cpu().tolist()
        return [100.0 * (1 - ci / n) if n else 0.0 for ci, n in zip(c, self.inner.batch_count)]

    def _detection(self, domain: int | None) -> dict[str, Any]:
        if not self.ood_scores:
            return {"ood_auroc": None, "ood_fpr95": None, "n_outliers": 0}
        s, o, d = (torch.cat(t).cpu().numpy() for t in (self.ood_scores, self.outlier, self.domains))
        keep = np.ones(len(s), bool) if domain is None else d == domain
        s, o = s[keep], o[keep]
        return {"ood_auroc": roc_auc(s, o.astype(int)), "ood_fpr95": fpr_at_tpr(s, o), "n_outliers": int(o.sum())}

    def domain_results(self) -> dict[int, dict[str, Any]]:
        out = self.inner.domain_results()
        for d, res in out.items():
            res.update(self._detection(d))
        return out

    def summary(self) -> dict[str, Any]:
        det = self._detection(None)
        det.pop("n_outliers")
        return {**self.inner.summary(), **det}


METERS: dict[str, type] = {
    "classification": ClassificationMeter,
    "binary": BinaryClassificationMeter,
    "segmentation": SegmentationMeter,
}


def make_meter(spec: Any, num_domains: int, device: torch.device | str):
    """The meter of `spec.task`, told the stream's classes/ignore index when it accepts them (`for_spec`)."""
    cls = METERS[spec.task]
    if cls is ClassificationMeter and GROUP_INFO in getattr(spec, "info", {}):
        cls = GroupMeter  # a stream with group labels (class x attribute)
    return cls.for_spec(spec, num_domains, device) if hasattr(cls, "for_spec") else cls(num_domains, device)


def forgetting(clean_error_before: float | None, clean_error_after: float | None) -> float | None:
    """Forgetting (percentage points): clean error after the stream minus clean error before it."""
    if clean_error_before is None or clean_error_after is None:
        return None
    return clean_error_after - clean_error_before
