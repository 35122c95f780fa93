"""Losses shared by ROID, CMF, RMT and SANTA (mariodoebler/test-time-adaptation `classification/utils/losses.py`).

Every function returns one value per sample, shape (N,); callers reduce. Logits are (N, C).
"""

from __future__ import annotations

import torch


def symmetric_cross_entropy(x: torch.Tensor, x_ema: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """-(1-α) Σ softmax(x_ema) log softmax(x) - α Σ softmax(x) log softmax(x_ema) (SymmetricCrossEntropy)."""
    ce = (x_ema.softmax(1) * x.log_softmax(1)).sum(1)
    return -(1 - alpha) * ce - alpha * (x.softmax(1) * x_ema.log_softmax(1)).sum(1)


def aug_cross_entropy(x: torch.Tensor, x_aug: torch.Tensor, x_ema: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """-(1-α) Σ softmax(x) log softmax(x_ema) - α Σ softmax(x_aug) log softmax(x_ema) (AugCrossEntropy, SANTA)."""
    return -(1 - alpha) * (x.softmax(1) * x_ema.log_softmax(1)).sum(1) - alpha * (
        x_aug.softmax(1) * x_ema.log_softmax(1)
    ).sum(1)


def soft_likelihood_ratio(logits: torch.Tensor, clip: float = 0.99, eps: float = 1e-5) -> torch.Tensor:
    """-Σ p log(p / (1 - p) + eps), p = softmax(logits) clipped to [0, clip] (SoftLikelihoodRatio, ROID)."""
    probs = torch.clamp(logits.softmax(1), min=0.0, max=clip)
    return -(probs * torch.log((probs / (torch.ones_like(probs) - probs)) + eps)).sum(1)
