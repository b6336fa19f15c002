"""``data.class_balance``: training on unbalanced classes, as real streets are (a few models everywhere, most rare).

- ``sampler``: each epoch draws as many photos as the training split has, with replacement, every photo weighted by
  1 / its class's count, so each class is drawn equally often (torch's `WeightedRandomSampler`; `EpochOrder` makes
  the draw, from (seed, epoch) alone, for both pipelines, so a resumed run draws what an uninterrupted one drew).
- ``loss``: cross-entropy with class weights proportional to 1 / frequency, normalised to mean 1.
- ``none``: neither (the default).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

IMBALANCED = 3.0  # largest / smallest class count from which `stats` suggests data.class_balance


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Photos per class id, 0 for a class without any."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def imbalance(counts: Sequence[int] | np.ndarray) -> float:
    """Largest over smallest count of the classes that have photos (1.0 when balanced)."""
    present = np.asarray(counts)[np.asarray(counts) > 0]
    return float(present.max() / present.min()) if len(present) else 1.0


def sample_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> torch.Tensor:
    """One weight per photo, 1 / its class's count: drawn by these weights, every class is equally likely."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = class_counts(labels, num_classes)
    return torch.from_numpy(1.0 / counts[labels]).to(torch.double)


def loss_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> torch.Tensor:
    """Cross-entropy class weights ∝ 1 / frequency over the classes with photos, normalised to mean 1; a class
    without training photos (it can only be a label-smoothing target) keeps weight 1."""
    counts = class_counts(labels, num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = 1.0 / counts[present]
    weights[present] /= weights[present].mean()
    return torch.from_numpy(weights).to(torch.float32)


def describe(mode: str, labels: Sequence[int] | np.ndarray, num_classes: int) -> str:
    """One line for the run's log: what the setting does to this training split."""
    counts = class_counts(labels, num_classes)
    present = counts[counts > 0]
    shape = f"training classes hold {present.min()} to {present.max()} photos (imbalance {imbalance(counts):.1f}x)"
    does = {
        "none": "no balancing",
        "sampler": "each epoch draws every class equally often (with replacement)",
        "loss": "cross-entropy weighted by 1 / class frequency (mean 1)",
    }[mode]
    return f"data.class_balance {mode}: {does}; {shape}"
