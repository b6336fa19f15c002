"""`carspotter evaluate`: a checkpoint's accuracy on a prepared split, with per-class accuracy and a confusion matrix.

The counting lives in `carspotter.training.scoring` (`SplitScores`): training's ``trainer.test`` counts with it too,
so a run's test figures and `evaluate` on its ``best.ckpt`` agree to the last digit.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import torch

from carspotter.checkpoint import load_checkpoint, read_checkpoint_info
from carspotter.data.dataset import eval_loader
from carspotter.data.prepared import load_prepared
from carspotter.errors import UserError
from carspotter.plots import confused_pairs, plot_confusion
from carspotter.training.scoring import EvalResult, evaluate_model

log = logging.getLogger(__name__)

__all__ = [
    "EvalResult",
    "check_classes",
    "evaluate_checkpoint",
    "evaluate_model",
    "evaluate_on_dataset",
    "new_report_dir",
    "write_report",
]


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


def check_classes(model_classes: list[str], data_classes: list[str], data: str | Path) -> None:
    """Refuse a dataset whose classes are not the checkpoint's: its accuracy would compare unrelated class ids."""
    if model_classes == data_classes:
        return
    for i, (ours, theirs) in enumerate(zip(model_classes, data_classes, strict=False)):
        if ours != theirs:
            detail = f"class {i} is {theirs!r} in {data} but {ours!r} in the checkpoint"
            break
    else:
        detail = f"{data} has {len(data_classes)} classes, the checkpoint {len(model_classes)}"
    raise UserError(
        f"{data} is not the dataset this checkpoint was trained on: {detail} "
        "(--allow-class-mismatch compares class ids anyway)"
    )


def evaluate_on_dataset(
    ckpt: str | Path,
    data: str | Path,
    split: str = "test",
    *,
    allow_class_mismatch: bool = False,
    batch_size: int = 64,
    progress: bool = True,
    tta_flip: bool = False,
) -> EvalResult:
    """`evaluate_checkpoint` after checking that ``data`` has the checkpoint's classes, in the same order."""
    model_classes = read_checkpoint_info(ckpt).class_names
    if not allow_class_mismatch:
        check_classes(model_classes, load_prepared(data).classes, data)
    return evaluate_checkpoint(ckpt, data, split, batch_size=batch_size, progress=progress, tta_flip=tta_flip)


def new_report_dir(ckpt: str | Path, data: str | Path, split: str, out: str | Path | None = None) -> Path:
    """A report folder that does not exist yet: ``out``, or ``eval-<ckpt>-<dataset>-<split>`` beside the checkpoint;
    an existing one gets a numeric suffix (``-2``, ``-3``, ...) instead of being overwritten."""
    default = f"eval-{Path(ckpt).stem}-{Path(data).resolve().name}-{split}"
    base = Path(out) if out is not None else Path(ckpt).parent / default
    for i in range(1, 10_000):
        candidate = base if i == 1 else base.with_name(f"{base.name}-{i}")
        if not candidate.exists():
            return candidate
    raise UserError(f"{base}: could not find a free report folder name")


def write_report(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    """Per-class accuracy CSV, confusion matrix (CSV + PNG), the most confused pairs (CSV) and metrics JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out / "metrics.json",
        "per_class": out / "per_class_accuracy.csv",
        "confusion_csv": out / "confusion_matrix.csv",
        "confusion_png": out / "confusion_matrix.png",
        "confused_pairs": out / "confused_pairs.csv",
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
    title = f"Confusion matrix (row-normalised): top-1 {result.top1:.2%}, n={result.n}"
    plot_confusion(result.confusion, result.class_names, title, paths["confusion_png"])
    pairs = confused_pairs(result.confusion, result.class_names, limit=50)
    with open(paths["confused_pairs"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["true_id", "true_name", "predicted_id", "predicted_name", "count", "share"])
        w.writeheader()
        w.writerows({**p, "share": f"{p['share']:.4f}"} for p in pairs)
    return paths
