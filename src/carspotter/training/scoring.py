"""Scoring a model on a whole split: top-1, top-5, loss and the confusion matrix.

`SplitScores` is the one set of counters. Training fills it in `CarClassifier.test_step` (``trainer.test`` on the
selected checkpoint), `carspotter evaluate` in `evaluate_model`; both run the network on ``scoring_setup(device)``'s
precision and memory layout, so the two differ only in how batches reach the model and agree to the last digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from torchmetrics.aggregation import SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from tqdm import tqdm


@dataclass
class EvalResult:
    top1: float
    top5: float
    n: int
    loss: float
    class_names: list[str]
    confusion: np.ndarray = field(repr=False)  # rows: true class, columns: predicted class

    @property
    def per_class_accuracy(self) -> np.ndarray:
        totals = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, np.diag(self.confusion) / np.maximum(totals, 1), np.nan)

    def to_json(self) -> dict[str, float | int]:
        return {"top1": self.top1, "top5": self.top5, "n": self.n}


@dataclass(frozen=True)
class ScoringSetup:
    precision: str  # Lightning's name: "bf16-mixed" (autocast) or "32-true"
    channels_last: bool


def scoring_setup(device: torch.device | str) -> ScoringSetup:
    """How a split is scored on ``device``: bf16 autocast and channels_last on a GPU (as training runs there by
    default), fp32 in the default layout on a CPU. The end of training uses it too, whatever the run trained with."""
    cuda = torch.device(device).type == "cuda"
    return ScoringSetup("bf16-mixed" if cuda else "32-true", channels_last=cuda)


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


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    loader,
    class_names: list[str],
    device: str = "cpu",
    progress: bool = True,
    tta_flip: bool = False,
) -> EvalResult:
    """Run ``model`` over ``loader`` once and score it with `SplitScores`, set up as `scoring_setup` says.

    ``tta_flip``: each image's class probabilities are the mean of the image's and its mirror image's.
    """
    setup = scoring_setup(device)
    model = model.to(device).eval()
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    scores = SplitScores(len(class_names)).to(device)
    autocast = setup.precision == "bf16-mixed"
    for x, y in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        x, y = x.to(device), y.to(device)
        if setup.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x).float()
            if tta_flip:  # log of the mean probability: the loss and the ranking of the averaged prediction
                mirrored = model(x.flip(3)).float()
                logits = torch.logsumexp(torch.stack([logits.log_softmax(1), mirrored.log_softmax(1)]), 0) - math.log(2)
        scores.update(logits, y)
    return scores.result(class_names)
