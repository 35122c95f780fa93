"""Metrics accumulated on the device without host synchronisation: error, ECE, mIoU, forgetting.

A meter is created per segment (`METERS[task](num_domains, device)`), updated every batch with
`update(logits, y, domain_ids)` (pure tensor ops, no `.item()`), and read once at the segment's end.
Errors are in percent. New tasks register a meter class in `METERS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


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
        self.batch_count: list[int] = []

    def update(self, logits: torch.Tensor, y: torch.Tensor, domain_ids: torch.Tensor) -> None:
        probs = logits.detach().float().softmax(1)
        conf, pred = probs.max(1)
        correct = (pred == y).double()
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

    def running_error(self) -> float:
        return 100.0 * (1 - float(self.dom_correct.sum()) / max(1, sum(self.batch_count)))

    def domain_results(self) -> dict[int, dict[str, Any]]:
        """{domain_id: {"error": %, "n": samples}} for the domains seen."""
        cnt, cor = self.dom_count.cpu().tolist(), self.dom_correct.cpu().tolist()
        return {d: {"error": 100.0 * (1 - c / n), "n": int(n)} for d, (c, n) in enumerate(zip(cor, cnt)) if n > 0}

    def summary(self) -> dict[str, Any]:
        n = sum(self.batch_count)
        return {
            "error": self.running_error(),
            "ece": ece_from_bins(self.conf_sum, self.acc_sum, self.bin_count),
            "n": n,
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
        probs = logits.detach().float().softmax(1)
        idx = domain_ids * c + y
        self.cls_correct.view(-1).index_add_(0, idx, (probs.argmax(1) == y).double())
        self.cls_count.view(-1).index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
        if c == 2:
            self.scores.append(probs[:, 1])
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


METERS: dict[str, type] = {"classification": ClassificationMeter, "binary": BinaryClassificationMeter}


def forgetting(clean_error_before: float | None, clean_error_after: float | None) -> float | None:
    """Forgetting (percentage points): clean error after the stream minus clean error before it."""
    if clean_error_before is None or clean_error_after is None:
        return None
    return clean_error_after - clean_error_before
