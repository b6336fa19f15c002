"""`carspotter evaluate`: a checkpoint's accuracy on a prepared split, with per-class accuracy and a confusion matrix.

The scoring itself lives in `carspotter.training.scoring` (training tests its selected checkpoint with it).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from carspotter.training.scoring import EvalResult, evaluate_checkpoint, evaluate_model

__all__ = ["EvalResult", "evaluate_checkpoint", "evaluate_model", "plot_confusion", "write_report"]


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
