"""`carspotter evaluate`: a model's accuracy on a prepared split, with per-class accuracy and a confusion matrix.

The model is any file `carspotter.inference.load_classifier` runs: a checkpoint, or its ONNX (fp32, int8) or
ExecuTorch export, so an export's accuracy is measured as its checkpoint's is. The counting lives in
`carspotter.training.scoring` (`SplitScores`): training's ``trainer.test`` counts with it too, so a run's test
figures and `evaluate` on its ``best.ckpt`` agree to the last digit.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from carspotter.data.dataset import eval_loader
from carspotter.data.prepared import PreparedDataset, load_prepared
from carspotter.errors import UserError
from carspotter.inference import Classifier, load_classifier
from carspotter.inference.torch_backend import TorchClassifier
from carspotter.plots import confused_pairs, plot_confusion
from carspotter.training.scoring import EvalResult, evaluate_model

__all__ = [
    "EvalResult",
    "check_classes",
    "evaluate_classifier",
    "evaluate_model",
    "evaluate_on_dataset",
    "new_report_dir",
    "write_report",
]


class _RuntimeModule(nn.Module):
    """An exported model's runtime (ONNX Runtime, ExecuTorch) as a CPU module: float32 batches in, logits out."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.classifier.logits(x.numpy()))


def evaluate_classifier(
    classifier: Classifier,
    dataset: PreparedDataset,
    split: str = "test",
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
    progress: bool = True,
    tta_flip: bool = False,
) -> EvalResult:
    """Score ``classifier`` on a prepared split, fed by the evaluation loader with its own preprocessing. A checkpoint
    runs on ``device`` (default: the GPU if there is one); an export in its own runtime, on the CPU."""
    if classifier.takes_pixels:
        raise UserError(
            f"{classifier.label}: this export resizes photos itself (--embed-preprocessing), so it cannot be fed "
            "evaluate's preprocessed batches; evaluate its checkpoint or its fp32 export, or give it to "
            "`bench-infer --data`, which reports its top-1"
        )
    loader = eval_loader(dataset, split, classifier.preprocessing, batch_size=batch_size, workers=workers)
    if isinstance(classifier, TorchClassifier):
        model: nn.Module = classifier.model
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    else:
        model, device = _RuntimeModule(classifier), "cpu"
    return evaluate_model(model, loader, classifier.class_names, device=device, progress=progress, tta_flip=tta_flip)


def check_classes(model_classes: list[str], data_classes: list[str], data: str | Path) -> None:
    """Refuse a dataset whose classes are not the model's: its accuracy would compare unrelated class ids."""
    if model_classes == data_classes:
        return
    for i, (ours, theirs) in enumerate(zip(model_classes, data_classes, strict=False)):
        if ours != theirs:
            detail = f"class {i} is {theirs!r} in {data} but {ours!r} in the model"
            break
    else:
        detail = f"{data} has {len(data_classes)} classes, the model {len(model_classes)}"
    raise UserError(
        f"{data} is not the dataset this model was trained on: {detail} "
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
    """`evaluate_classifier` on a model file (``ckpt``: a checkpoint or an export) after checking that ``data`` has
    the model's classes, in the same order."""
    classifier = load_classifier(ckpt)
    dataset = load_prepared(data)
    if not allow_class_mismatch:
        check_classes(classifier.class_names, dataset.classes, data)
    return evaluate_classifier(classifier, dataset, split, batch_size=batch_size, progress=progress, tta_flip=tta_flip)


def new_report_dir(ckpt: str | Path, data: str | Path, split: str, out: str | Path | None = None) -> Path:
    """A report folder that does not exist yet: ``out``, or ``eval-<ckpt>-<dataset>-<split>`` beside the model file;
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
