"""`carspotter evaluate`: a model's accuracy on a prepared split, with per-class accuracy and a confusion matrix.

A dataset whose classes are a subset of the model's (by name) is scored against the model's classes.

The model is any file `carspotter.inference.load_classifier` runs: a checkpoint, or its ONNX (fp32, int8) or
ExecuTorch export, so an export's accuracy is measured as its checkpoint's is. The counting lives in
`carspotter.evaluation.scoring` (`SplitScores`): training's ``trainer.test`` counts with it too, so a run's test
figures and `evaluate` on its ``best.ckpt`` agree to the last digit.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from carspotter.data.dataset import eval_loader
from carspotter.data.prepared import PreparedDataset, load_prepared
from carspotter.errors import UserError
from carspotter.evaluation.calibration import trust_scores
from carspotter.evaluation.plots import confused_pairs, plot_confusion, plot_trust
from carspotter.evaluation.scoring import EvalResult, score_classifier
from carspotter.inference import Classifier, load_classifier
from carspotter.preprocessing import softmax

log = logging.getLogger(__name__)

__all__ = [
    "EvalResult",
    "as_model_classes",
    "check_classes",
    "evaluate_classifier",
    "score_classifier",
    "evaluate_on_dataset",
    "new_report_dir",
    "write_report",
]


def evaluate_classifier(
    classifier: Classifier,
    dataset: PreparedDataset,
    split: str = "test",
    batch_size: int = 64,
    workers: int = 2,
    progress: bool = True,
    tta_flip: bool = False,
) -> EvalResult:
    """Score ``classifier`` on a prepared split, fed by the evaluation loader with its own preprocessing: a checkpoint
    on the device it was loaded for (`load_classifier`), an export in its own runtime, on the CPU."""
    if classifier.takes_pixels:
        raise UserError(
            f"{classifier.label}: this export resizes photos itself (--embed-preprocessing), so it cannot be fed "
            "evaluate's preprocessed batches; evaluate its checkpoint or its fp32 export, or give it to "
            "`bench-infer --data`, which reports its top-1"
        )
    loader = eval_loader(dataset, split, classifier.preprocessing, batch_size=batch_size, workers=workers)
    result = score_classifier(classifier, loader, progress=progress, tta_flip=tta_flip)
    if result.logits is not None:
        result.trust = trust_scores(result.logits, result.labels, classifier.classes, classifier.calibration)
    return result


def check_classes(model_classes: list[str], data_classes: list[str], data: str | Path) -> str:
    """``"same"`` when ``data`` has the model's classes in its order, ``"subset"`` when its class names are all among
    the model's (an enrolled or bigger model scored on the classes it was trained on: matched by name); any other
    dataset is refused, since its accuracy would compare unrelated class ids."""
    if model_classes == data_classes:
        return "same"
    known = set(model_classes)
    if len(set(data_classes)) == len(data_classes) and known.issuperset(data_classes):
        return "subset"
    unknown = [name for name in data_classes if name not in known]
    if unknown:
        detail = (f"{len(unknown)} of its {len(data_classes)} classes are not among the model's {len(model_classes)} "
                  f"(e.g. {unknown[0]!r})")
    else:
        detail = f"a class name stands twice in {data}"
    raise UserError(
        f"{data} is not the dataset this model was trained on: {detail} "
        "(--allow-class-mismatch compares class ids anyway)"
    )


def as_model_classes(dataset: PreparedDataset, model_classes: list[str]) -> PreparedDataset:
    """``dataset`` relabelled with the model's class ids (matched by name), so that a prediction of a class the
    dataset does not have counts as wrong and the report lists every class of the model."""
    index = {name: i for i, name in enumerate(model_classes)}
    ids = {old: index[name] for old, name in enumerate(dataset.classes)}

    def relabel(frame):  # noqa: ANN001, ANN202 - a pandas DataFrame
        return frame.assign(class_id=frame["class_id"].map(ids))

    return replace(dataset, classes=list(model_classes), train=relabel(dataset.train), test=relabel(dataset.test))


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
    the model's classes, in the same order, or a subset of them (matched by name, said in the log)."""
    classifier = load_classifier(ckpt)
    dataset = load_prepared(data)
    if not allow_class_mismatch and check_classes(classifier.class_names, dataset.classes, data) == "subset":
        log.warning("%s: %d of the model's %d classes, matched by name; predictions of the model's other classes "
                    "count as wrong", data, dataset.num_classes, len(classifier.class_names))
        dataset = as_model_classes(dataset, classifier.class_names)
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
    if result.logits is not None and result.trust is not None:
        paths["trust_png"] = out / "calibration.png"
    paths["metrics"].write_text(json.dumps(result.to_json(), indent=2))
    if "trust_png" in paths:
        t = result.trust
        probs = softmax(result.logits / t["temperature"])
        title = f"ECE {t['ece']:.3f} (uncalibrated {t['ece_uncalibrated']:.3f}), n={result.n}"
        plot_trust(probs, softmax(result.logits), result.labels, t["min_confidence"], title, paths["trust_png"])
    recall, precision = result.per_class_accuracy, result.per_class_precision
    totals = result.confusion.sum(axis=1)
    with open(paths["per_class"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class_id", "class_name", "n", "correct", "recall", "precision"])  # recall: the class's accuracy
        for i, name in enumerate(result.class_names):
            share = ["" if np.isnan(v) else f"{v:.4f}" for v in (recall[i], precision[i])]
            w.writerow([i, name, int(totals[i]), int(result.confusion[i, i]), *share])
    np.savetxt(paths["confusion_csv"], result.confusion, fmt="%d", delimiter=",")
    title = f"Confusion matrix (row-normalised): top-1 {result.top1:.2%}, n={result.n}"
    plot_confusion(result.confusion, result.class_names, title, paths["confusion_png"])
    pairs = confused_pairs(result.confusion, result.class_names, limit=50)
    with open(paths["confused_pairs"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["true_id", "true_name", "predicted_id", "predicted_name", "count", "share"])
        w.writeheader()
        w.writerows({**p, "share": f"{p['share']:.4f}"} for p in pairs)
    return paths
