"""Scoring a model on a whole split: top-1, top-5, loss and the confusion matrix.

`SplitScores` is the one set of counters. Training fills it in `CarClassifier.test_step` (``trainer.test`` on the
selected checkpoint), `carspotter evaluate` in `score_classifier`; both run the network with
`carspotter.runtime.inference_runtime`'s precision and memory layout, so the two differ only in how batches reach
the model and agree to the last digit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from tqdm import tqdm

from carspotter.inference.base import Classifier


@dataclass
class EvalResult:
    top1: float
    top5: float
    n: int
    loss: float
    class_names: list[str]
    confusion: np.ndarray = field(repr=False)  # rows: true class, columns: predicted class
    logits: np.ndarray | None = field(default=None, repr=False)  # N×classes scores, when `score_classifier` kept them
    labels: np.ndarray | None = field(default=None, repr=False)
    trust: dict[str, float | None] | None = None  # `carspotter.evaluation.calibration.trust_scores`

    @property
    def per_class_accuracy(self) -> np.ndarray:
        totals = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, np.diag(self.confusion) / np.maximum(totals, 1), np.nan)

    @property
    def per_class_precision(self) -> np.ndarray:
        """Of the photos predicted as each class, the share that were (nan for a class never predicted)."""
        predicted = self.confusion.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(predicted > 0, np.diag(self.confusion) / np.maximum(predicted, 1), np.nan)

    @property
    def balanced_top1(self) -> float:
        """Mean per-class accuracy (recall) over the classes with photos: every class counts the same."""
        recall = self.per_class_accuracy
        return float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan")

    def to_json(self) -> dict[str, float | int | None]:
        return {"top1": self.top1, "top5": self.top5, "n": self.n, "balanced_top1": self.balanced_top1,
                **(self.trust or {})}


class SplitScores(nn.Module):
    """Top-1, top-5, the confusion matrix and the summed cross-entropy over a split, in torchmetrics (as validation).

    One process scores the whole split (after a DDP run, rank 0 alone): the states never sync across processes.
    float64 states: the fractions come out as hits / n exactly (0.2, not float32's 0.20000000298). The loss is plain
    cross-entropy (not the training criterion, which may smooth labels). A module, so it moves with its owner.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        local = {"num_classes": num_classes, "sync_on_compute": False}
        self.top1 = MulticlassAccuracy(average="micro", **local).set_dtype(torch.float64)
        self.top5 = MulticlassAccuracy(top_k=min(5, num_classes), average="micro", **local).set_dtype(torch.float64)
        self.confusion = MulticlassConfusionMatrix(**local)  # rows: true class
        self.loss_sum = SumMetric(sync_on_compute=False).set_dtype(torch.float64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        with torch.autocast(logits.device.type, enabled=False):  # counted in fp32 whatever ran the network
            logits = logits.float()
            self.loss_sum.update(nn.functional.cross_entropy(logits, target, reduction="sum"))
            for metric in (self.top1, self.top5, self.confusion):
                metric.update(logits, target)

    def reset(self) -> None:
        for metric in (self.top1, self.top5, self.confusion, self.loss_sum):
            metric.reset()

    def result(self, class_names: list[str]) -> EvalResult:
        matrix = self.confusion.compute().cpu().numpy().astype(np.int64)
        n = int(matrix.sum())  # every image lands in one cell
        if n == 0:
            return EvalResult(float("nan"), float("nan"), 0, float("nan"), class_names, matrix)
        top1, top5, loss = (float(m.compute()) for m in (self.top1, self.top5, self.loss_sum))
        return EvalResult(top1, top5, n, loss / n, class_names, matrix)


def score_classifier(
    classifier: Classifier, loader: Iterable, progress: bool = True, tta_flip: bool = False
) -> EvalResult:
    """Run ``classifier`` over ``loader``'s (images, labels) batches once and count with `SplitScores`: a checkpoint
    on its `Runtime`'s device and precision (as `predict` runs it), an export in its own runtime. The result keeps
    every photo's scores and label (for calibration and `trust_scores`).

    ``tta_flip``: each image's class probabilities are the mean of the image's and its mirror image's
    (`carspotter.inference.base.flip_averaged`, as `predict --tta-flip`).
    """
    scores = SplitScores(len(classifier.class_names))
    kept: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for x, y in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        logits = classifier.scores(x.numpy(), tta_flip=tta_flip)
        scores.update(torch.from_numpy(logits), y)
        kept.append(np.asarray(logits, dtype=np.float32))
        labels.append(y.numpy())
    result = scores.result(classifier.class_names)
    if kept:
        result.logits, result.labels = np.concatenate(kept), np.concatenate(labels)
    return result
