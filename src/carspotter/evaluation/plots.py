"""The pictures of a run: its training curves (``results.png``) and the confusion matrix of an evaluation.

Both read plain data (``metrics.csv`` rows, a confusion matrix), so `train`, `evaluate` and `report` draw the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carspotter.errors import UserError
from carspotter.formats.run_dir import read_epoch_metrics


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str | Path, dpi: int = 100) -> Path:
    """Lay out, write (making the folder) and close ``fig``; returns the path."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out


def metric_series(rows: list[dict[str, str]], key: str) -> list[float]:
    """One column of ``metrics.csv`` rows as floats; an empty cell (no validation that epoch) is NaN."""
    return [float(r[key]) if r.get(key) else float("nan") for r in rows]


def plot_training_curves(metrics_csv: str | Path, out: str | Path) -> Path:
    """``results.png``: loss, top-1 and learning rate by epoch (train and validation), from a run's ``metrics.csv``.

    Every epoch is a marker, so a run of one epoch still shows its point.
    """
    rows = read_epoch_metrics(Path(metrics_csv))
    if not rows:
        raise UserError(f"{metrics_csv}: no epochs recorded yet; nothing to plot")
    plt = pyplot()
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric, title in ((axes[0], "loss", "loss"), (axes[1], "top1", "top-1")):
        for split, style in (("train", "--"), ("val", "-")):
            ax.plot(epochs, metric_series(rows, f"{split}_{metric}"), style, marker="o", markersize=3, label=split)
        ax.set_title(title)
        ax.legend(fontsize="small")
    axes[2].plot(epochs, metric_series(rows, "lr"), marker="o", markersize=3, color="tab:green")
    axes[2].set_title("learning rate")
    axes[2].set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{Path(metrics_csv).parent.name}: {len(rows)} epoch(s)")
    return save_figure(fig, out)


def confused_pairs(confusion: np.ndarray, class_names: list[str], limit: int = 20) -> list[dict[str, object]]:
    """The most frequent mistakes, most first: true class, predicted class, count, share of the true class."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    totals = confusion.sum(axis=1)
    order = np.argsort(off, axis=None, kind="stable")[::-1]
    pairs = []
    for flat in order[:limit]:
        true, pred = divmod(int(flat), confusion.shape[1])
        if off[true, pred] == 0:
            break
        pairs.append(
            {
                "true_id": true,
                "true_name": class_names[true],
                "predicted_id": pred,
                "predicted_name": class_names[pred],
                "count": int(off[true, pred]),
                "share": float(off[true, pred] / max(totals[true], 1)),
            }
        )
    return pairs


def plot_confusion(confusion: np.ndarray, class_names: list[str], title: str, path: str | Path) -> Path:
    """Row-normalised confusion matrix, sized so that every class gets a readable row: about 0.13 inch per class
    (a 196-class matrix is about 2,600 px wide), labels at every class up to 250 classes."""
    plt = pyplot()
    n = len(class_names)
    norm = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    side = max(6.0, 2.5 + 0.13 * n)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, wrap=True, fontsize=12)
    if n <= 250:
        fontsize = 8 if n <= 40 else 6
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), class_names, fontsize=fontsize)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="share of the true class")
    return save_figure(fig, path)


def plot_trust(
    probs: np.ndarray, raw_probs: np.ndarray, labels: np.ndarray, min_confidence: float | None, title: str,
    path: str | Path, bins: int = 15,
) -> Path:
    """Two panels: the reliability diagram (accuracy per bin of top probability, with and without the temperature;
    the diagonal is a perfectly calibrated model) and coverage against the accuracy of the photos answered (the
    "not sure" threshold marked)."""
    from carspotter.evaluation.calibration import coverage_curve

    plt = pyplot()
    fig, (rel, cov) = plt.subplots(1, 2, figsize=(11, 4.6))
    edges = np.linspace(0, 1, bins + 1)
    for p, label, style in ((raw_probs, "uncalibrated", "o--"), (probs, "calibrated", "o-")):
        conf, hit = p.max(axis=1), p.argmax(axis=1) == labels
        which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
        filled = [b for b in range(bins) if (which == b).any()]
        rel.plot([conf[which == b].mean() for b in filled], [hit[which == b].mean() for b in filled], style,
                 label=label, markersize=4)  # fmt: skip
    rel.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="perfect")
    rel.set(xlim=(0, 1), ylim=(0, 1), xlabel="top probability (bin mean)", ylabel="accuracy in the bin",
            title="Reliability")  # fmt: skip
    rel.legend(loc="upper left")
    thresholds, coverage, accuracy = coverage_curve(probs, labels)
    cov.plot(coverage, accuracy)
    if min_confidence is not None:
        answered = thresholds >= min_confidence
        if answered.any():
            k = np.flatnonzero(answered)[-1]
            cov.plot([coverage[k]], [accuracy[k]], "o", color="C3",
                     label=f"threshold {min_confidence:.2f}: {coverage[k]:.0%} answered, {accuracy[k]:.0%} right")
            cov.legend(loc="lower left")  # fmt: skip
    cov.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="share of photos answered (most confident first)",
            ylabel="accuracy of the answered photos", title="Coverage and accuracy")  # fmt: skip
    fig.suptitle(title)
    return save_figure(fig, path)
