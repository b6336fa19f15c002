"""Scoring a model on a prepared split: top-1, top-5, loss and the confusion matrix.

Training calls it once at the end of a run (the selected checkpoint on the test split); `carspotter evaluate` calls
the same function, so the two always agree.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from tqdm import tqdm

from carspotter.checkpoint import load_checkpoint
from carspotter.data.dataset import eval_loader
from carspotter.data.prepared import load_prepared

log = logging.getLogger(__name__)


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


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    loader,
    class_names: list[str],
    device: str = "cpu",
    progress: bool = True,
    tta_flip: bool = False,
) -> EvalResult:
    """Run ``model`` over ``loader`` once, scored by torchmetrics (as validation is); the loss is plain cross-entropy.

    ``tta_flip``: each image's class probabilities are the mean of the image's and its mirror image's.
    """
    model = model.to(device).eval()
    cuda = torch.device(device).type == "cuda"
    if cuda:  # as in training on a GPU: channels_last and bf16 autocast
        model = model.to(memory_format=torch.channels_last)
    n_classes = len(class_names)
    # One process scores the whole split (after a DDP run, rank 0 alone): no syncing with other processes. float64
    # states: the fractions come out as hits / n exactly (0.2, not float32's 0.20000000298).
    local = {"num_classes": n_classes, "sync_on_compute": False}
    top1 = MulticlassAccuracy(average="micro", **local).set_dtype(torch.float64).to(device)
    top5 = MulticlassAccuracy(top_k=min(5, n_classes), average="micro", **local).set_dtype(torch.float64).to(device)
    confusion = MulticlassConfusionMatrix(**local).to(device)  # rows: true class
    loss_sum = 0.0
    for x, y in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        x, y = x.to(device), y.to(device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = model(x).float()
            if tta_flip:  # log of the mean probability: the loss and the ranking of the averaged prediction
                mirrored = model(x.flip(3)).float()
                logits = torch.logsumexp(torch.stack([logits.log_softmax(1), mirrored.log_softmax(1)]), 0) - math.log(2)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        for metric in (top1, top5, confusion):
            metric.update(logits, y)
    matrix = confusion.compute().cpu().numpy().astype(np.int64)
    n = int(matrix.sum())  # every image lands in one cell
    if n == 0:
        return EvalResult(float("nan"), float("nan"), 0, float("nan"), class_names, matrix)
    return EvalResult(float(top1.compute()), float(top5.compute()), n, loss_sum / n, class_names, matrix)


def evaluate_checkpoint(
    ckpt_path: str | Path,
    data: str | Path,
    split: str = "test",
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
    progress: bool = True,
    tta_flip: bool = False,
) -> EvalResult:
    """Evaluate a checkpoint on a prepared split, rebuilding the model and preprocessing from the checkpoint."""
    model, info = load_checkpoint(ckpt_path)
    dataset = load_prepared(data)
    if dataset.classes != info.class_names:
        log.warning("the dataset's class names differ from the checkpoint's; class ids are compared as they are")
    loader = eval_loader(dataset, split, info.preprocessing, batch_size=batch_size, workers=workers)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return evaluate_model(model, loader, info.class_names, device=device, progress=progress, tta_flip=tta_flip)
