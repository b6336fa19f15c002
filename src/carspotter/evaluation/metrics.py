"""Accuracy of a trained model on a prepared split: top-1/top-5, per-class accuracy and a confusion matrix."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from carspotter.data.dataset import eval_loader
from carspotter.data.prepared import load_prepared
from carspotter.training.checkpoint import load_checkpoint

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
    model: nn.Module, loader, class_names: list[str], device: str = "cpu", progress: bool = True
) -> EvalResult:
    """Run ``model`` over ``loader`` once and count hits; the loss is plain cross-entropy."""
    model = model.to(device).eval()
    cuda = torch.device(device).type == "cuda"
    if cuda:  # as in training on a GPU: channels_last and bf16 autocast
        model = model.to(memory_format=torch.channels_last)
    k = min(5, len(class_names))
    n = hit1 = hit5 = 0
    loss_sum = 0.0
    confusion = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    for x, y in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        x, y = x.to(device), y.to(device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = model(x).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        topk = logits.topk(k, dim=1).indices
        hit1 += int((topk[:, 0] == y).sum())
        hit5 += int((topk == y[:, None]).any(dim=1).sum())
        n += len(y)
        np.add.at(confusion, (y.cpu().numpy(), topk[:, 0].cpu().numpy()), 1)
    if n == 0:
        return EvalResult(float("nan"), float("nan"), 0, float("nan"), class_names, confusion)
    return EvalResult(hit1 / n, hit5 / n, n, loss_sum / n, class_names, confusion)


def evaluate_checkpoint(
    ckpt_path: str | Path,
    data: str | Path,
    split: str = "test",
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate a checkpoint on a prepared split, rebuilding the model and preprocessing from the checkpoint."""
    model, info = load_checkpoint(ckpt_path)
    dataset = load_prepared(data)
    if dataset.classes != info.class_names:
        log.warning("the dataset's class names differ from the checkpoint's; class ids are compared as they are")
    loader = eval_loader(dataset, split, info.preprocessing, batch_size=batch_size, workers=workers)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return evaluate_model(model, loader, info.class_names, device=device, progress=progress)


def write_report(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    """Per-class accuracy CSV, confusion matrix (CSV + PNG) and metrics JSON into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out / "metrics.json",
        "per_class": out / "per_class_accuracy.csv",
        "confusion_csv": out / "confusion_matrix.csv",
        "confusion_png": out / "confusion_matrix.png",
    }
    paths["metrics"].write_text(json.dumps(result.to_json(), indent=2))
    acc = result.per_class_accuracy
    totals = result.confusion.sum(axis=1)
    with open(paths["per_class"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class_id", "class_name", "n", "correct", "accuracy"])
        for i, name in enumerate(result.class_names):
            w.writerow(
                [i, name, int(totals[i]), int(result.confusion[i, i]), "" if np.isnan(acc[i]) else f"{acc[i]:.4f}"]
            )
    np.savetxt(paths["confusion_csv"], result.confusion, fmt="%d", delimiter=",")
    plot_confusion(result, paths["confusion_png"])
    return paths


def plot_confusion(result: EvalResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.class_names)
    totals = result.confusion.sum(axis=1, keepdims=True)
    norm = result.confusion / np.maximum(totals, 1)
    size = min(4 + n * 0.08, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (row-normalised) — top-1 {result.top1:.2%}, n={result.n}")
    if n <= 40:
        ax.set_xticks(range(n), result.class_names, rotation=90, fontsize=6)
        ax.set_yticks(range(n), result.class_names, fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
